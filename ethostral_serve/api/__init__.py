"""The HTTP edge: FastAPI app factory, request limits and error mapping."""
