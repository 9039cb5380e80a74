"""The base models this server trains (from the model registry)."""
