"""The study's frozen protocol (method.md section 6): OUT/protocol.json holds every setting of a study
and, once tuning is done, every tuned value, written before any measured run. A study asked of an OUT
whose protocol says otherwise is refused, each difference named: a new protocol means a new study
directory. The measured seeds may grow (old seeds first, in order): tuned values never depend on them.

    {"settings": {...every setting asked, the corpus' content key...},
     "status": "tuning" | "frozen",
     "tuned": {"scratch_lr_mult": {depth: m}, "inherit_lr_mult": {recipe: {depth: m}}, "edges": [...]},
     "commits": {"tuned": sha, "measured": [sha, ...]},
     "replicates": {"file": path, "settings_sha256": ..., "changed": [setting, ...]}}   (--replicate only)

A committed protocol.json can be replicated (launch/study.py --replicate FILE): its settings become
the new study's defaults, its recipes must mean here what they meant there, and the new protocol
records which settings changed (the seeds and the corpus, typically). With --reuse-tuned its tuned
values are taken as they are (a setting of the new study: `tuned_from`) instead of tuned again.

The code commit is recorded, not compared: a run's numbers are pinned by its own settings (checked
run by run), and a commit that only edits documents must not orphan a half-measured study.
"""
from __future__ import annotations

import hashlib
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
    if settings["tuned_from"] is None:  # a study that tunes: its settings as before the option existed
        del settings["tuned_from"]
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


# ---------------------------------------------------------------- replication ----------------------

def read_source(path: str) -> dict:
    """A study's protocol.json to replicate, checked: readable, a protocol, and each of its recipes
    defined here as it was there (a recipe that changed meaning would replicate something else)."""
    try:
        source = json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"--replicate {path}: cannot read it ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--replicate {path}: not JSON ({e})") from None
    settings = source.get("settings") if isinstance(source, dict) else None
    if not isinstance(settings, dict) or "recipes" not in settings:
        raise ValueError(f"--replicate {path}: expected a study's protocol.json (with 'settings' and its recipes)")
    for name, there in source["settings"]["recipes"].items():
        try:
            here = json.loads(json.dumps({"arm": recipe(name).arm, **recipe(name).settings}))
        except ValueError as e:
            raise ValueError(f"--replicate {path}: {e}") from None
        if here != there:
            raise ValueError(f"--replicate {path}: recipe {name!r} there is {json.dumps(there)}, in this code "
                             f"{json.dumps(here)}; replicate with the code of its commit "
                             f"({source.get('commits', {}).get('tuned')})")
    return source


def tuned_from(source: dict, path: str) -> dict:
    """--reuse-tuned: the source's tuned values with where they were tuned (seed, corpus), for the new
    study's settings; refused unless the source was frozen (its tuning finished)."""
    if source.get("status") != "frozen" or not source.get("tuned"):
        raise ValueError(f"--reuse-tuned: {path} has no final tuned values (status {source.get('status')!r}); "
                         f"replicate without --reuse-tuned to tune again")
    settings = source["settings"]
    return {"file": str(path), "tune_seed": settings.get("tune_seed"),
            "corpus": (settings.get("corpus") or {}).get("cache_key"),
            "tuned": {k: source["tuned"][k] for k in ("scratch_lr_mult", "inherit_lr_mult", "edges", "tried")
                      if k in source["tuned"]}}


def changed_settings(have: dict, want: dict) -> list[str]:
    """The names of the settings that differ (one level into dicts but the recipes: train.data,
    corpus.cache_key), `tuned_from` aside: it is how the values were chosen, said on its own."""
    names = []
    for k in sorted((set(have) | set(want)) - {"tuned_from"}):
        a, b = have.get(k), want.get(k)
        if isinstance(a, dict) and isinstance(b, dict) and k != "recipes":
            names += [f"{k}.{j}" for j in sorted(set(a) | set(b)) if a.get(j) != b.get(j)]
        elif a != b:
            names.append(k)
    return names


def note_replicates(out: Path, protocol: dict, source: dict, path: str) -> dict:
    """Record, once, the protocol this study replicates and which of its settings this one changed."""
    if "replicates" in protocol:
        return protocol
    digest = hashlib.sha256(json.dumps(source["settings"], sort_keys=True).encode()).hexdigest()
    protocol = {**protocol, "replicates": {"file": str(path), "settings_sha256": digest,
                                           "changed": changed_settings(source["settings"], protocol["settings"])}}
    write_json_atomic(out / PROTOCOL_FILE, protocol)
    return protocol
