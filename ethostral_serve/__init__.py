"""ethostral-serve: diarized, emotion-annotated transcription."""
