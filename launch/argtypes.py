"""argparse value types shared by the command lines: each refuses a bad value with a message that
names it and says what was expected. Nothing of ours is imported here (launch/gpu_check.py uses
them before it checks its dependencies)."""
from __future__ import annotations

import argparse


def _int_at_least(lo: int, what: str):
    """argparse type: an integer >= lo, with one message naming the value for every failure."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = lo - 1
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    return parse


positive_int = _int_at_least(1, "a positive integer")
nonneg_int = _int_at_least(0, "an integer >= 0")


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s!r}")
    return v


def token_count(s: str) -> int:
    """Accepts 2000000, 2e6, 2M, 500k."""
    t = s.strip().lower()
    mult = {"k": 10**3, "m": 10**6, "b": 10**9}.get(t[-1:], 1)
    try:
        v = float(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token count like 2000000, 2e6 or 2M, got {s!r}")
    if v < 1 or v != int(v):
        raise argparse.ArgumentTypeError(f"expected a positive whole token count, got {s!r}")
    return int(v)


def fractions(s: str) -> list[float]:
    """argparse type: comma list of increasing budget fractions in (0, 1]."""
    try:
        vals = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or any(not 0 < v <= 1 for v in vals) or sorted(set(vals)) != vals:
        raise argparse.ArgumentTypeError(f"expected increasing fractions in (0, 1] like 0.25,0.5,1, got {s!r}")
    return vals


def seed_list(s: str) -> list[int]:
    """argparse type: comma list of integer seeds."""
    try:
        seeds = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected a comma list of integer seeds like 0,1, got {s!r}")
    return seeds
