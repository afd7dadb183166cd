"""How Reclaim writes its numbers for people, everywhere: an estimate with its interval as
``x (95% CI lo to hi)``, a rate as ``54.4%``, a p-value as ``0.025`` or ``< 0.001``, and a
missing figure as "not known" (never ``nan``)."""

from __future__ import annotations

import math
from typing import Any

NOT_KNOWN = "not known"


def known(value: Any) -> bool:
    """Whether ``value`` is a figure (not None, not NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def percent(rate: float) -> str:
    """``54.4%``; "not known" for a missing rate."""
    return f"{rate:.1%}" if known(rate) else NOT_KNOWN


def p_value(p: float) -> str:
    """``0.025``, ``< 0.001``; "not known" for a missing one."""
    if not known(p):
        return NOT_KNOWN
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def ci(value: str, lo: str, hi: str) -> str:
    """Already formatted parts as ``value (95% CI lo to hi)``."""
    return f"{value} (95% CI {lo} to {hi})"


def interval(value: float, lo: float, hi: float, pts: bool = False) -> str:
    """A rate and its interval: percentages (``54.4% (95% CI 52.7% to 56.1%)``), or with
    ``pts`` signed percentage-point differences (``+1.7 pts (95% CI -1.0 to +4.3)``)."""
    if pts:
        return ci(f"{value * 100:+.1f} pts", f"{lo * 100:+.1f}", f"{hi * 100:+.1f}")
    return ci(f"{value:.1%}", f"{lo:.1%}", f"{hi:.1%}")


def duration(seconds: float) -> str:
    """A span as people say it, to two units: ``45 s``, ``12 min 5 s``, ``3 h 20 min``,
    ``183 days 23 h``; "not known" for a missing one."""
    if not known(seconds):
        return NOT_KNOWN
    s = int(round(max(float(seconds), 0.0)))
    units = (("day", 86_400), ("h", 3_600), ("min", 60), ("s", 1))
    parts: list[str] = []
    for name, size in units:
        n, s = divmod(s, size)
        if n or (parts and len(parts) < 2):
            parts.append(f"{n} {name}{'s' if name == 'day' and n != 1 else ''}")
        if len(parts) == 2:
            break
    text = " ".join(p for p in parts if not p.startswith("0 ")) or "0 s"
    return text
