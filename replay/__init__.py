"""The simulator driving the real stack: the whole loop in simulated time (``reclaim replay``).

It composes the simulator (the world's truth, the Stripe stand-in) and the serving stack (the
API, the scheduler, webhooks), and belongs to neither: serving never imports the simulator.
"""

from reclaim.replay.loop import ReplayConfig, run_replay

__all__ = ["ReplayConfig", "run_replay"]
