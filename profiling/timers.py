"""Nested stage timers: host clock (time.perf_counter) and CUDA events.

Definitions (used by every file the profiler writes and by the report):

- *inclusive* time of a stage: from entering it to leaving it, children included.
- *exclusive* time of a stage: its inclusive time minus the inclusive time of its direct
  children. Exclusive times of all stages never overlap, so their sum is the time spent inside
  *any* stage; the rest of the window's wall time is *untracked* ("other" in reports). Hence
  `sum(exclusive) + untracked == wall` and the fractions `exclusive / wall` plus
  `untracked / wall` sum to 1 exactly.
- Times accumulate per stage *name*: a stage entered several times per window adds up, and
  `calls` counts the entries. A name nested inside itself counts its inner time twice in
  *inclusive* (never in exclusive); avoid it.
- A stage belongs to the window in which it *closes*. Call `step_end` outside every stage,
  otherwise a stage spanning the window edge lands whole in the next window.

On CUDA the clock is a pair of `torch.cuda.Event(enable_timing=True)` recorded on the current
stream at entry and exit: it measures the device time between the two points of the stream,
which is what the GPU spends on the stage's kernels (host-only work shows as the idle gap the
GPU sees). Events are only read after the window's single `torch.cuda.synchronize`, never per
step. Work issued to other streams (e.g. a communication stream) is not covered by them.
"""
from __future__ import annotations

import time
from typing import Any

import torch

_perf = time.perf_counter


def _add(acc: dict[str, list], name: str, incl: float, excl: float) -> None:
    a = acc.get(name)
    if a is None:
        acc[name] = [incl, excl, 1]
    else:
        a[0] += incl
        a[1] += excl
        a[2] += 1


def _as_dict(acc: dict[str, list]) -> dict[str, dict[str, Any]]:
    return {k: {"inclusive_s": v[0], "exclusive_s": v[1], "calls": v[2]} for k, v in acc.items()}


class HostTimer:
    """Nested stages on the host clock. `push`/`pop` cost about a microsecond each."""

    __slots__ = ("_stack", "_acc")

    def __init__(self) -> None:
        self._stack: list[list] = []  # [name, t0, children_inclusive]
        self._acc: dict[str, list] = {}

    @property
    def depth(self) -> int:
        return len(self._stack)

    def push(self, name: str) -> None:
        self._stack.append([name, 0.0, 0.0])
        self._stack[-1][1] = _perf()  # read the clock last so the bookkeeping is outside

    def pop(self) -> None:
        t1 = _perf()
        name, t0, child = self._stack.pop()
        incl = t1 - t0
        if self._stack:
            self._stack[-1][2] += incl
        _add(self._acc, name, incl, incl - child)

    def drain(self) -> dict[str, dict[str, Any]]:
        """Stages closed since the last drain: {name: {inclusive_s, exclusive_s, calls}}."""
        out = _as_dict(self._acc)
        self._acc = {}
        return out


class CudaEventTimer:
    """Nested stages timed by CUDA event pairs, resolved only in `drain()` (after a sync).

    Events are pooled and reused, so a steady-state step allocates none.
    """

    def __init__(self, device) -> None:
        self._device = device
        self._free: list = []
        self._records: list[list] = []  # [name, parent_idx, ev_start, ev_end, children_inclusive]
        self._stack: list[int] = []

    @property
    def depth(self) -> int:
        return len(self._stack)

    def _event(self):
        if self._free:
            return self._free.pop()
        return torch.cuda.Event(enable_timing=True)

    def push(self, name: str) -> None:
        ev = self._event()
        ev.record()
        parent = self._stack[-1] if self._stack else -1
        self._records.append([name, parent, ev, None, 0.0])
        self._stack.append(len(self._records) - 1)

    def pop(self) -> None:
        ev = self._event()
        ev.record()
        self._records[self._stack.pop()][3] = ev

    def drain(self) -> dict[str, dict[str, Any]]:
        """Resolve the closed stages. The caller must have synchronised the device."""
        recs = self._records
        acc: dict[str, list] = {}
        # children always come after their parent in `recs`: walk backwards so every child's
        # inclusive time is known before its parent is resolved.
        for rec in reversed(recs):
            name, parent, e0, e1, child = rec
            if e1 is None:
                continue
            incl = e0.elapsed_time(e1) / 1000.0
            if parent >= 0:
                recs[parent][4] += incl
            # `_add` in forward order keeps the dict's insertion order close to the call order
            rec.append((incl, incl - child))
        for rec in recs:
            if rec[3] is not None:
                incl, excl = rec[5]
                _add(acc, rec[0], incl, excl)
                self._free.append(rec[2])
                self._free.append(rec[3])
        # stages still open carry over (with what their closed children already contributed)
        keep = [i for i, rec in enumerate(recs) if rec[3] is None]
        remap = {old: new for new, old in enumerate(keep)}
        self._records = [[recs[i][0], remap.get(recs[i][1], -1), recs[i][2], None, recs[i][4]] for i in keep]
        self._stack = [remap[i] for i in self._stack]
        return _as_dict(acc)
