"""The HTTP layer: FastAPI app, routes, response schemas, error rendering, auth, metrics."""
