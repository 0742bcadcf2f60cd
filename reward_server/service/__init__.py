"""The HTTP layer: FastAPI app, schemas, errors, settings."""
