"""A Stripe Connect marketplace simulator with known ground truth.

``generate`` draws a marketplace, ``rollout`` runs a policy over it, ``compare`` tabulates
policies side by side with common random numbers, and ``Oracle`` is the upper bound that reads
the hidden state. See docs/simulator.md.
"""

from reclaim.simulator.config import SimulatorConfig
from reclaim.simulator.environment import Rollout, platform_export, rollout
from reclaim.simulator.evaluation import compare, reference_policies, summarize
from reclaim.simulator.marketplace import Marketplace, fresh_payments, generate
from reclaim.simulator.oracle import Oracle

__all__ = [
    "Marketplace",
    "Oracle",
    "Rollout",
    "SimulatorConfig",
    "compare",
    "fresh_payments",
    "generate",
    "platform_export",
    "reference_policies",
    "rollout",
    "summarize",
]
