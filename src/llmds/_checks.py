"""The one set of argument checks (standard library only).

Every public entry point validates through these, so a bad argument always
raises :class:`~llmds.errors.ValidationError` with the same wording:
``"<name> must be an int >= 1, got 0"``.  numpy scalars are accepted where
Python numbers are (``np.int64(3)`` is an int, ``np.float32(0.5)`` a real);
``bool`` is never a number.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Iterable

from llmds.errors import ValidationError

__all__ = ["check_int", "check_float", "check_bool", "check_choice", "check_token_ids", "is_int"]


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for bool (and numpy bool) and everything else."""
    return type(value) is int or (isinstance(value, Integral) and not isinstance(value, bool))


def _bounds(low, high) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int in ``[low, high]`` (either bound optional)."""
    if type(value) is int:  # the common case, without the ABC check (hot paths call this)
        v = value
    elif is_int(value):
        v = int(value)
    else:
        raise ValidationError(f"{name} must be an int{_bounds(low, high)}, got {value!r}")
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValidationError(f"{name} must be an int{_bounds(low, high)}, got {v}")
    return v


def check_float(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, finite: bool = True) -> float:
    """``value`` as a Python float in the interval given (open ends on request).

    Finite unless ``finite=False`` (then ``inf`` and ``-inf`` pass; NaN never does).
    """
    lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
    hi = "" if high is None else f"{high}" + (")" if high_open else "]")
    where = f" in {lo or '(-inf'}, {hi or 'inf)'}" if (low is not None or high is not None) else ""
    what = "a finite number" if finite else "a number (not NaN)"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValidationError(f"{name} must be {what}{where}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) and (finite or v != v):
        raise ValidationError(f"{name} must be {what}{where}, got {v}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValidationError(f"{name} must be {what}{where}, got {v}")
    if high is not None and (v >= high if high_open else v > high):
        raise ValidationError(f"{name} must be {what}{where}, got {v}")
    return v


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{name} must be a bool, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    if value not in choices:
        raise ValidationError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_token_ids(name: str, ids: Any, vocab_size: int | None = None) -> list[int]:
    """A list of non-negative ints (``< vocab_size`` when given) from any iterable of ints."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise ValidationError(f"{name} must be a sequence of ints, got {type(ids).__name__}")
    if hasattr(ids, "tolist"):  # numpy array or tensor: one conversion
        ids = ids.tolist()
    out = list(ids)
    for t in out:
        if not is_int(t):
            raise ValidationError(f"{name} must be a sequence of ints, got an element {t!r}")
    out = [int(t) for t in out]
    if out and min(out) < 0:
        raise ValidationError(f"{name} must be non-negative token ids, got {min(out)}")
    if vocab_size is not None and out and max(out) >= vocab_size:
        raise ValidationError(f"{name} must be < the vocabulary size {vocab_size}, got {max(out)}")
    return out


def unpaired_surrogate(text: str) -> str | None:
    """Why ``text`` is not valid Unicode, or None: an unpaired UTF-16 surrogate, which JSON (and
    Python) can carry and no tokenizer or UTF-8 encoder takes."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"holds an unpaired UTF-16 surrogate (U+{ord(text[exc.start]):04X} at index {exc.start}); "
                "send valid Unicode")
    return None
