"""reclaim.serving."""
