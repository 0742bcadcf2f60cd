"""Mixed-R1 reward service: rule rewards plus BMAS scored on the policy's own embedding table."""

__version__ = "0.1.0"
