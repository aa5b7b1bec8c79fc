"""Voice activity detection: Silero VAD, offline over a recording and streaming."""
