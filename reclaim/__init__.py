"""Reclaim: recover failed payments on Stripe Connect marketplaces."""

__version__ = "0.1.0"
