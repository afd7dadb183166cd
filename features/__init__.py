"""reclaim.features."""
