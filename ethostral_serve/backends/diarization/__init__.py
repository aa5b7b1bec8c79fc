"""Speaker diarization backends: the embedded overlap-aware diarizer, and pyannote."""
