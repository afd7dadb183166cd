"""reclaim.models."""
