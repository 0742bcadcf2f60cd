"""Offline scoring and the data engine: score, filter and report rollout files."""
