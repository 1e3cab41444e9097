"""CORE: the DCLM in-context-learning score nanochat reports for base models.

Li et al. 2024, "DataComp-LM" (arXiv:2406.11794), define CORE as the mean over 22 tasks of the
accuracy centred by each task's random baseline, (acc - b) / (1 - b). nanochat evaluates it on
the DCLM eval bundle, which this module reads as is (nothing is downloaded here):

    <bundle>/core.yaml            icl_tasks: [{label, dataset_uri, num_fewshot: [k],
                                               icl_task_type, continuation_delimiter?}, ...]
    <bundle>/eval_data/<dataset_uri>    one JSON object per line
    <bundle>/eval_meta_data.csv   columns "Eval Task" (= label) and "Random baseline" (percent)

Three task types, each decided by the model's per-token losses (Brown et al. 2020 style ICL):

* multiple_choice (item: query, choices, gold): one prompt per choice, same context, different
  continuations; the choice with the lowest mean loss over its continuation tokens wins.
* schema (item: context_options, continuation, gold): one prompt per context option, same
  continuation; the lowest mean loss over the continuation tokens wins.
* language_modeling (item: context, continuation): correct iff the greedy (argmax) prediction
  matches every continuation token.

Prompt rendering follows nanochat: few-shot examples (num_fewshot of them, drawn with
random.Random(seed + i) from the task's other items, i the item's position) are rendered as
"<context><delim><answer>\n\n" before the item. Every prompt starts with BOS. The continuation
span is the tokens after the longest common prefix (multiple choice) / inside the longest common
suffix (schema) of the candidate token sequences; for language modelling it is what the prompt
with the continuation adds to the (right-stripped) prompt without it. Prompts longer than the
model's context (`model.config.seq_len`) lose tokens on the left. As in nanochat each task's
items are first shuffled with random.Random(1337), then cut to `max_per_task`.

Items are strided across ranks (rank r takes items r, r + W, ...) and the correct counts are
all-reduced (SUM) when torch.distributed is initialised with more than one process.
"""
from __future__ import annotations

import ast
import csv
import json
import math
import random
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
SHUFFLE_SEED = 1337  # nanochat shuffles each task's items with this seed before max_per_task

# ---------------------------------------------------------------------------------------------
# Bundle loading


def _yaml_scalar(text: str) -> Any:
    text = text.strip()
    if text == "":
        return None
    if text.startswith('"'):
        return ast.literal_eval(text)  # YAML double-quoted escapes used by the bundle: \n \t \" \\
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_yaml_scalar(x) for x in inner.split(",")] if inner else []
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return text == "true"
    return text


def _strip_comment(line: str) -> str:
    """Drop a trailing ' # comment' outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _parse_core_yaml(text: str) -> dict:
    """A fallback for when PyYAML is not installed: enough YAML for core.yaml, i.e. a top-level
    `icl_tasks:` list of flat mappings whose values are scalars, quoted strings, flow lists
    ([0]) or block lists ('- 0' lines)."""
    tasks: list[dict] = []
    out: dict = {}
    in_tasks = False
    current: dict | None = None
    pending_key: str | None = None  # a key whose value is a block list on the next lines
    item_indent = None
    for raw in text.splitlines():
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.strip() == "---":
            continue
        indent = len(line) - len(line.lstrip())
        body = line.strip()
        if indent == 0 and not body.startswith("-"):
            key, _, val = body.partition(":")
            in_tasks = key.strip() == "icl_tasks"
            if not in_tasks:
                out[key.strip()] = _yaml_scalar(val)
            continue
        if not in_tasks:
            continue
        if body.startswith("-") and (item_indent is None or indent <= item_indent):
            item_indent = indent
            current = {}
            tasks.append(current)
            pending_key = None
            body = body[1:].strip()
            if not body:
                continue
        elif body.startswith("-") and pending_key is not None and current is not None:
            current[pending_key].append(_yaml_scalar(body[1:]))
            continue
        if current is None:
            raise ValueError(f"core.yaml: cannot parse line {raw!r}")
        key, sep, val = body.partition(":")
        if not sep:
            raise ValueError(f"core.yaml: cannot parse line {raw!r}")
        if val.strip() == "":
            current[key.strip()] = []
            pending_key = key.strip()
        else:
            current[key.strip()] = _yaml_scalar(val)
            pending_key = None
    out["icl_tasks"] = tasks
    return out


def _load_yaml(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        import yaml  # PyYAML, when available
    except ImportError:
        return _parse_core_yaml(text)
    return yaml.safe_load(text)


def load_bundle(bundle_dir) -> tuple[list[dict], dict[str, float]]:
    """Read core.yaml and eval_meta_data.csv. Returns (tasks, random baselines as fractions).

    Each task: label, task_type, dataset_path, num_fewshot, continuation_delimiter.
    Baselines: the CSV's "Random baseline" column, read as percent (the DCLM bundle's unit) when
    any value exceeds 1, else as fractions. Missing files raise FileNotFoundError naming them."""
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise FileNotFoundError(f"CORE eval bundle directory not found: {bundle}")
    cfg_path, meta_path = bundle / "core.yaml", bundle / "eval_meta_data.csv"
    for p in (cfg_path, meta_path):
        if not p.is_file():
            raise FileNotFoundError(f"CORE eval bundle file not found: {p}")
    cfg = _load_yaml(cfg_path)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("icl_tasks"), list) or not cfg["icl_tasks"]:
        raise ValueError(f"{cfg_path}: expected a non-empty 'icl_tasks' list")
    tasks = []
    for t in cfg["icl_tasks"]:
        for key in ("label", "dataset_uri", "icl_task_type"):
            if key not in t:
                raise ValueError(f"{cfg_path}: task {t.get('label', t)!r} has no {key!r}")
        if t["icl_task_type"] not in TASK_TYPES:
            raise ValueError(f"{cfg_path}: task {t['label']!r} has icl_task_type {t['icl_task_type']!r}; expected one "
                             f"of {TASK_TYPES}")
        k = t.get("num_fewshot", [0])
        k = k[0] if isinstance(k, (list, tuple)) else k
        data_path = bundle / "eval_data" / t["dataset_uri"]
        if not data_path.is_file():
            raise FileNotFoundError(f"CORE eval bundle file not found: {data_path} (task {t['label']!r})")
        delim = t.get("continuation_delimiter", " ")
        tasks.append(
            {
                "label": str(t["label"]),
                "task_type": t["icl_task_type"],
                "dataset_path": data_path,
                "num_fewshot": int(k),
                "continuation_delimiter": " " if delim is None else str(delim),
            }
        )
    raw: dict[str, float] = {}
    with open(meta_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = {c.strip(): c for c in (reader.fieldnames or [])}
        if "Eval Task" not in cols or "Random baseline" not in cols:
            raise ValueError(f"{meta_path}: expected columns 'Eval Task' and 'Random baseline', got "
                             f"{reader.fieldnames}")
        for row in reader:
            name = (row[cols["Eval Task"]] or "").strip()
            if name:
                raw[name] = float(row[cols["Random baseline"]])
    scale = 0.01 if any(v > 1.0 for v in raw.values()) else 1.0
    baselines = {k: v * scale for k, v in raw.items()}
    for t in tasks:
        if t["label"] not in baselines:
            raise ValueError(f"{meta_path}: no random baseline for task {t['label']!r}")
        if not 0.0 <= baselines[t["label"]] < 1.0:
            raise ValueError(f"{meta_path}: random baseline of {t['label']!r} must lie in [0, 1) after scaling, got "
                             f"{baselines[t['label']]}")
    return tasks, baselines


def load_task_data(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------
# Prompts


def render_prompts(item: dict, task_type: str, delimiter: str, fewshot: Sequence[dict] = ()) -> list[str]:
    """The candidate prompts of one item, rendered as nanochat renders them.

    multiple_choice: one prompt per choice; schema: one per context option; language_modeling:
    [prompt without the continuation (right-stripped), prompt with it]."""
    if task_type == "multiple_choice":
        prefix = "".join(f"{ex['query']}{delimiter}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot)
        return [f"{prefix}{item['query']}{delimiter}{c}" for c in item["choices"]]
    if task_type == "schema":
        prefix = "".join(f"{ex['context_options'][ex['gold']]}{delimiter}{ex['continuation']}\n\n" for ex in fewshot)
        return [f"{prefix}{ctx}{delimiter}{item['continuation']}" for ctx in item["context_options"]]
    if task_type == "language_modeling":
        prefix = "".join(f"{ex['context'].strip()}{delimiter}{ex['continuation']}\n\n" for ex in fewshot)
        without = f"{prefix}{item['context'].strip()}{delimiter}"
        return [without.strip(), without + item["continuation"]]
    raise ValueError(f"unsupported task type {task_type!r}")


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def _common_suffix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(1, n + 1):
        if any(s[-i] != seqs[0][-i] for s in seqs):
            return i - 1
    return n


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, prepend_bos=True))


def token_spans(tokenizer, prompts: Sequence[str], task_type: str) -> tuple[list[list[int]], list[int], list[int]]:
    """Token sequences (BOS first) and the [start, end) span of the scored tokens of each."""
    tokens = [_encode(tokenizer, p) for p in prompts]
    if task_type == "multiple_choice":
        s = _common_prefix(tokens)
        return tokens, [s] * len(tokens), [len(t) for t in tokens]
    if task_type == "schema":
        k = _common_suffix(tokens)
        return tokens, [len(t) - k for t in tokens], [len(t) for t in tokens]
    if task_type == "language_modeling":
        without, with_ = tokens
        if not (len(without) < len(with_) and with_[: len(without)] == without):
            raise ValueError(
                "language_modeling: the tokens of the prompt without the continuation are not a prefix of "
                "the prompt with it (tokenizer merges across the boundary)"
            )
        return [with_], [len(without)], [len(with_)]
    raise ValueError(f"unsupported task type {task_type!r}")


def _truncate(tokens, starts, ends, max_len: int | None):
    """Keep the last max_len tokens of each sequence; shift the spans. At least one token of
    context must remain before a span (position start-1 predicts token start)."""
    if max_len is None:
        return tokens, starts, ends
    out_t, out_s, out_e = [], [], []
    for t, s, e in zip(tokens, starts, ends):
        crop = max(0, len(t) - max_len)
        out_t.append(t[crop:])
        out_s.append(max(1, s - crop))
        out_e.append(e - crop)
    return out_t, out_s, out_e


def _max_len(model) -> int | None:
    cfg = getattr(model, "config", None)
    for obj, name in ((cfg, "seq_len"), (model, "max_seq_len")):
        v = getattr(obj, name, None) if obj is not None else None
        if isinstance(v, int) and v > 0:
            return v
    return None


@torch.no_grad()
def _losses_and_argmax(model, tokens: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position next-token loss [B, T] (position i scores token i+1; last column NaN) and
    argmax predictions [B, T]. Right-padded with pad_id, which causal attention never sees from
    the scored positions."""
    T = max(len(t) for t in tokens)
    idx = torch.full((len(tokens), T), pad_id, dtype=torch.long)
    for i, t in enumerate(tokens):
        idx[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    idx = idx.to(device)
    logits = model(idx).float()
    B, _, V = logits.shape
    targets = torch.roll(idx, shifts=-1, dims=1)
    losses = F.cross_entropy(logits.reshape(B * T, V), targets.reshape(-1), reduction="none").view(B, T)
    losses[:, -1] = float("nan")
    return losses.cpu(), logits.argmax(dim=-1).cpu()


def fewshot_indices(n_items: int, idx: int, k: int, seed: int) -> list[int]:
    """The few-shot example indices of item `idx`: k distinct others, drawn with Random(seed + idx)."""
    if k <= 0:
        return []
    others = [i for i in range(n_items) if i != idx]
    if k > len(others):
        raise ValueError(f"num_fewshot={k} but the task has only {len(others)} other items")
    return random.Random(seed + idx).sample(others, k)


def evaluate_item(model, tokenizer, data: Sequence[dict], idx: int, task: dict, *, device, seed: int = 1234) -> bool:
    """Whether the model answers item `idx` of a task correctly (see the module docstring)."""
    item = data[idx]
    ttype, k = task["task_type"], task["num_fewshot"]
    k = min(k, len(data) - 1)  # a task cut short by max_per_task may have fewer other items
    fewshot = [data[i] for i in fewshot_indices(len(data), idx, k, seed)]
    prompts = render_prompts(item, ttype, task["continuation_delimiter"], fewshot)
    tokens, starts, ends = token_spans(tokenizer, prompts, ttype)
    tokens, starts, ends = _truncate(tokens, starts, ends, _max_len(model))
    losses, preds = _losses_and_argmax(model, tokens, tokenizer.bos_id, device)
    if ttype == "language_modeling":
        s, e = starts[0], ends[0]
        target = torch.tensor(tokens[0][s:e], dtype=torch.long)
        return bool(torch.equal(preds[0, s - 1 : e - 1], target))
    scores = []
    for i, (s, e) in enumerate(zip(starts, ends)):
        span = losses[i, s - 1 : e - 1]
        m = span.mean().item() if span.numel() else math.inf
        scores.append(m if math.isfinite(m) else math.inf)
    pred = min(range(len(scores)), key=lambda i: scores[i])  # ties: the first
    return pred == int(item["gold"])


def evaluate_core(
    model,
    tokenizer,
    bundle_dir,
    *,
    device,
    max_per_task: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 1234,
    tasks: Sequence[str] | None = None,
) -> dict:
    """CORE of `model` on the eval bundle at `bundle_dir` (see the module docstring).

    model(idx LongTensor[B, T]) -> logits [B, T, V]; tokenizer.encode(text, prepend_bos=True),
    tokenizer.bos_id. max_per_task: items per task after the fixed shuffle (None: all).
    rank/world_size: this process takes items rank, rank + world_size, ...; counts are summed
    over processes when torch.distributed is initialised (world_size > 1). `tasks`: optional
    subset of labels. Returns {core, tasks: {label: {accuracy, centered, n, correct,
    random_baseline, task_type, num_fewshot}}}; without torch.distributed and world_size > 1 the
    numbers cover this rank's share only.
    """
    if not (0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if max_per_task is not None and max_per_task < 1:
        max_per_task = None  # nanochat's -1 = all
    all_tasks, baselines = load_bundle(bundle_dir)
    if tasks is not None:
        unknown = set(tasks) - {t["label"] for t in all_tasks}
        if unknown:
            raise ValueError(f"unknown CORE tasks {sorted(unknown)}")
        all_tasks = [t for t in all_tasks if t["label"] in set(tasks)]
    dist = torch.distributed
    reduce = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    results = {}
    try:
        for task in all_tasks:
            data = load_task_data(task["dataset_path"])
            random.Random(SHUFFLE_SEED).shuffle(data)
            if max_per_task is not None:
                data = data[:max_per_task]
            correct = 0
            n = 0
            for idx in range(rank, len(data), world_size):
                correct += int(evaluate_item(model, tokenizer, data, idx, task, device=device, seed=seed))
                n += 1
            if reduce:
                counts = torch.tensor([correct, n], dtype=torch.float64, device=device)
                dist.all_reduce(counts, op=dist.ReduceOp.SUM)
                correct, n = int(counts[0].item()), int(counts[1].item())
            acc = correct / n if n else float("nan")
            b = baselines[task["label"]]
            results[task["label"]] = {
                "accuracy": acc,
                "centered": (acc - b) / (1.0 - b),
                "n": n,
                "correct": correct,
                "random_baseline": b,
                "task_type": task["task_type"],
                "num_fewshot": task["num_fewshot"],
            }
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    centered = [r["centered"] for r in results.values() if math.isfinite(r["centered"])]
    core = sum(centered) / len(centered) if centered else float("nan")
    return {"core": core, "tasks": results}
