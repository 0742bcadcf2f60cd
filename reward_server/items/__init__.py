"""Items to score: request models, validation and settings, shared by the HTTP service and the
offline commands. Free of HTTP (no FastAPI, no Starlette), so the data engine never imports the
web layer; ``tests/test_layering.py`` enforces it."""
