"""How Reclaim writes an estimate with its interval, everywhere: ``x (95% CI lo to hi)``."""

from __future__ import annotations


def ci(value: str, lo: str, hi: str) -> str:
    """Already formatted parts as ``value (95% CI lo to hi)``."""
    return f"{value} (95% CI {lo} to {hi})"


def interval(value: float, lo: float, hi: float, pts: bool = False) -> str:
    """A rate and its interval: percentages (``54.4% (95% CI 52.7% to 56.1%)``), or with
    ``pts`` signed percentage-point differences (``+1.7 pts (95% CI -1.0 to +4.3)``)."""
    if pts:
        return ci(f"{value * 100:+.1f} pts", f"{lo * 100:+.1f}", f"{hi * 100:+.1f}")
    return ci(f"{value:.1%}", f"{lo:.1%}", f"{hi:.1%}")
