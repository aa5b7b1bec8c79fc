"""The Ray Serve deployment graph (VAD → Diarizer → EthostralModel behind an ingress)."""
