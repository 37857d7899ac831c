"""Checks of user-given values, one error shape everywhere: ``invalid NAME VALUE; must be ...``.

Every option zoft accepts (TrainConfig fields, optimizer and estimator hyperparameters, PEFT
options, learned-optimizer settings) is checked with these, so a bad value fails at once with
one line that names it, instead of a traceback several calls later.
"""

from __future__ import annotations

import math
from typing import Any, Iterable


def invalid(name: str, value: Any, must: str) -> ValueError:
    """The ValueError of a bad option value: names it and what it must be."""
    return ValueError(f"invalid {name} {value!r}; must be {must}")


def is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is an int in Python, never a count here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in ``[low, high]``, else a ValueError naming it."""
    ok = is_int(value) and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bound = " and ".join(b for b in (f">= {low}" if low is not None else "",
                                          f"<= {high}" if high is not None else "") if b)
        raise invalid(name, value, f"an integer {bound}".rstrip())
    return value


def check_range(name: str, value: Any, low: float, high: float | None = None,
                low_open: bool = False) -> float:
    """``value`` if it is a finite number >= ``low`` (> with ``low_open``) and < ``high``."""
    ok = is_number(value) and math.isfinite(value)
    if ok:
        ok = value > low if low_open else value >= low
        ok = ok and (high is None or value < high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and < {high}" if high is not None else "")
        raise invalid(name, value, f"a finite number {bound}")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"invalid {name} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def check_bool(name: str, value: Any, optional: bool = False) -> Any:
    if not (isinstance(value, bool) or (optional and value is None)):
        raise invalid(name, value, "true or false" + (" (or unset)" if optional else ""))
    return value


def as_float(name: str, value: Any) -> Any:
    """A number written as text (YAML 1.1 reads ``1e-3`` as a string) as a float; other values
    unchanged, for the range check to judge."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise invalid(name, value, "a number") from None
    return value
