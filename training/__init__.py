"""reclaim.training."""
