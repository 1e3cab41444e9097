"""Stage timers (profiling/timers.py): inclusive and exclusive times on the host and from CUDA
events (the bookkeeping, with a fake event), carried over a window edge."""
from __future__ import annotations

import math
import time

import torch

from profiling.timers import CudaEventTimer, HostTimer


SLACK = 0.25  # upper-bound slack for sleeps on a shared 2-core machine (lower bounds are exact)


def test_host_timer_inclusive_exclusive_with_sleeps():
    t = HostTimer()
    t.push("outer")
    time.sleep(0.03)
    t.push("inner")
    time.sleep(0.05)
    t.pop()
    t.push("inner")
    time.sleep(0.02)
    t.pop()
    t.pop()
    d = t.drain()
    assert d["inner"]["calls"] == 2 and d["outer"]["calls"] == 1
    assert 0.07 <= d["inner"]["inclusive_s"] < 0.07 + SLACK
    assert d["inner"]["exclusive_s"] == d["inner"]["inclusive_s"]  # leaf
    assert 0.10 <= d["outer"]["inclusive_s"] < 0.10 + SLACK
    assert 0.03 <= d["outer"]["exclusive_s"] < 0.03 + SLACK
    # exclusive times never overlap: they add up to the outermost inclusive time
    assert math.isclose(d["outer"]["exclusive_s"] + d["inner"]["inclusive_s"], d["outer"]["inclusive_s"], rel_tol=1e-9)
    assert t.drain() == {}


class _FakeEvent:
    """Stands in for torch.cuda.Event: records the host clock, answers elapsed_time in ms."""

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


def test_cuda_event_timer_resolution_and_carry_over():
    t = CudaEventTimer(torch.device("cpu"))
    t._event = lambda: _FakeEvent()  # the real one needs CUDA; the bookkeeping is what we test
    t.push("step")
    t.push("forward")
    time.sleep(0.02)
    t.pop()
    t.push("long")  # still open at the window edge: must carry over
    time.sleep(0.01)
    d1 = t.drain()
    assert set(d1) == {"forward"} and 0.02 <= d1["forward"]["inclusive_s"] < 0.02 + SLACK
    t.push("inner")
    time.sleep(0.02)
    t.pop()
    t.pop()  # long
    t.pop()  # step
    d2 = t.drain()
    assert set(d2) == {"inner", "long", "step"}
    assert 0.03 <= d2["long"]["inclusive_s"] and 0.01 <= d2["long"]["exclusive_s"] < 0.01 + SLACK
    # step's exclusive excludes both children, including forward resolved in the earlier window
    assert math.isclose(d2["step"]["exclusive_s"],
                        d2["step"]["inclusive_s"] - d1["forward"]["inclusive_s"] - d2["long"]["inclusive_s"],
                        abs_tol=1e-9)
    assert t.depth == 0 and t._records == []
