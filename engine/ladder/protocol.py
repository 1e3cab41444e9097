"""The study's frozen protocol (method.md section 6): OUT/protocol.json holds every setting of a study
and, once tuning is done, every tuned value, written before any measured run. A study asked of an OUT
whose protocol says otherwise is refused, each difference named: a new protocol means a new study
directory. The measured seeds may grow (old seeds first, in order): tuned values never depend on them.

    {"settings": {...every setting asked, the corpus' content key...},
     "status": "tuning" | "frozen",
     "tuned": {"scratch_lr_mult": {depth: m}, "inherit_lr_mult": {recipe: {depth: m}}, "edges": [...]},
     "commits": {"tuned": sha, "measured": [sha, ...]}}

The code commit is recorded, not compared: a run's numbers are pinned by its own settings (checked
run by run), and a commit that only edits documents must not orphan a half-measured study.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from engine.ladder.recipes import recipe
from engine.train.checkpoint import write_json_atomic

PROTOCOL_FILE = "protocol.json"


def protocol_settings(sc, corpus: dict) -> dict:
    """Every setting of study `sc` (an engine/ladder/study.StudyConfig) that changes its numbers,
    with each recipe written out in full and the corpus by its content."""
    settings = {k: v for k, v in asdict(sc).items() if k not in ("out", "jobs")}
    settings["recipes"] = {n: {"arm": recipe(n).arm, **recipe(n).settings} for n in sc.recipes}
    settings["corpus"] = corpus
    return json.loads(json.dumps(settings))  # the JSON form: what is compared is what is on disk


def differences(have: dict, want: dict) -> list[str]:
    """The settings that differ, each named with both values; seeds may only grow."""
    diffs = []
    for k in sorted(set(have) | set(want)):
        a, b = have.get(k), want.get(k)
        if k == "seeds" and isinstance(a, list) and isinstance(b, list) and b[: len(a)] == a:
            continue
        if a != b:
            diffs.append(f"{k}: {json.dumps(a)} on disk, {json.dumps(b)} asked")
    return diffs


def open_protocol(out: Path, settings: dict, commit: str) -> dict:
    """The protocol of `out`: read and checked against `settings` (refused, by name, when they differ),
    or started (status "tuning") when there is none. Grown seeds are written back."""
    path = out / PROTOCOL_FILE
    if not path.exists():
        protocol = {"settings": settings, "status": "tuning", "tuned": None,
                    "commits": {"started": commit, "tuned": None, "measured": []}}
        write_json_atomic(path, protocol)
        return protocol
    protocol = json.loads(path.read_text())
    diffs = differences(protocol["settings"], settings)
    if diffs:
        raise ValueError(f"{path} was frozen for another study ({'; '.join(diffs)}); a new protocol needs a new "
                         f"study directory (--out), and nothing in {out} was changed")
    if protocol["settings"]["seeds"] != settings["seeds"]:
        protocol["settings"]["seeds"] = settings["seeds"]
        write_json_atomic(path, protocol)
    return protocol


def freeze(out: Path, protocol: dict, tuned: dict, commit: str) -> dict:
    """Write the tuned values and mark the protocol frozen, before any measured run."""
    protocol = {**protocol, "status": "frozen", "tuned": json.loads(json.dumps(tuned)),
                "commits": {**protocol["commits"], "tuned": commit}}
    write_json_atomic(out / PROTOCOL_FILE, protocol)
    return protocol


def note_measured(out: Path, protocol: dict, commit: str) -> dict:
    """Record the commit a measuring pass ran with (every pass, so a study spanning sessions says so)."""
    measured = protocol["commits"]["measured"]
    if commit not in measured:
        protocol = {**protocol, "commits": {**protocol["commits"], "measured": measured + [commit]}}
        write_json_atomic(out / PROTOCOL_FILE, protocol)
    return protocol
