"""reclaim.simulator."""
