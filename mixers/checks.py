"""Checks of the numbers that come from outside: mixer parameters, ticket and feedback fields, states.

One place says what counts as an integer (an ``int``, not a ``bool``: JSON's ``true`` arrives as
one) or a finite number, and how a refusal reads: ``<what> must be <kind and range>, got <value>``,
e.g. ``aioli: `lp_steps` must be an integer >= 1, got 0``. Callers name the thing (``what``) and
the exception the refusal is (``error``: ValueError, or the refusal type of the request).
"""

from __future__ import annotations

import math
from typing import Any


def is_int(v: Any) -> bool:
    """Whether ``v`` is an integer (``bool`` is not)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """Whether ``v`` is an integer or a finite float (``bool`` is not)."""
    return is_int(v) or (isinstance(v, float) and math.isfinite(v))


def int_range(lo: int | None = None, hi: int | None = None) -> str:
    """``an integer``, ``an integer >= lo`` or ``an integer in [lo, hi]``."""
    if lo is None:
        return "an integer" if hi is None else f"an integer <= {hi}"
    return f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"


def number_range(lo: float | None = None, below: float | None = None) -> str:
    """``a finite number``, ``a finite number >= lo`` or ``a finite number in [lo, below)``."""
    if lo is None:
        return "a finite number" if below is None else f"a finite number < {below}"
    return f"a finite number >= {lo}" if below is None else f"a finite number in [{lo}, {below})"


def check_int(
    v: Any, what: str, lo: int | None = None, hi: int | None = None, *, error: type[Exception] = ValueError
) -> int:
    """``v`` if it is an integer in ``[lo, hi]`` (an open side: None); else ``error`` naming ``what``."""
    if not is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise error(f"{what} must be {int_range(lo, hi)}, got {v!r}")
    return v


def check_number(
    v: Any, what: str, lo: float | None = None, below: float | None = None, *, error: type[Exception] = ValueError
) -> float:
    """``float(v)`` if it is a finite number in ``[lo, below)`` (an open side: None); else ``error`` naming ``what``."""
    if not is_number(v) or (lo is not None and v < lo) or (below is not None and v >= below):
        raise error(f"{what} must be {number_range(lo, below)}, got {v!r}")
    return float(v)
