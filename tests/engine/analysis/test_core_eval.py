"""CORE evaluator (engine/analysis/core_eval.py) against a hand computation on a tiny bundle."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from engine.analysis import core_eval
from engine.analysis.core_eval import evaluate_core, load_bundle, render_prompts
from tests.helpers.core import MC, TASKS, ByteTokenizer, write_bundle


class _Cfg:
    def __init__(self, seq_len):
        self.seq_len = seq_len


class BigramModel(torch.nn.Module):
    """Deterministic stub: logits at position t depend only on token t (a bigram table built from a
    small corpus plus seeded noise), so per-position losses do not depend on batching or padding."""

    def __init__(self, corpus: str, seq_len: int = 512, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        table = torch.randn(257, 257, generator=g) * 0.5
        ids = list(corpus.encode())
        for a, b in zip(ids, ids[1:]):
            table[a, b] += 3.0
        self.table = torch.nn.Parameter(table, requires_grad=False)
        self.config = _Cfg(seq_len)

    def forward(self, idx):
        return self.table[idx]


CORPUS = "the cat sat on the mat. a dog ran to the park. the sun is hot. ice is cold. birds can fly."


# ---- an independent hand computation -----------------------------------------------------------


def _pos_losses(model, ids):
    logits = model(torch.tensor([ids]))[0]
    return F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none"), logits.argmax(-1)


def _expected(model, tok, label, ttype, data, k, delim, seed=1234):
    data = list(data)
    random.Random(1337).shuffle(data)
    correct = 0
    for i, item in enumerate(data):
        others = [j for j in range(len(data)) if j != i]
        shots = [data[j] for j in random.Random(seed + i).sample(others, k)] if k else []
        if ttype == "multiple_choice":
            pre = "".join(s["query"] + delim + s["choices"][s["gold"]] + "\n\n" for s in shots) + item["query"] + delim
            scores = []
            for c in item["choices"]:
                ctx, full = tok.encode(pre, True), tok.encode(pre + c, True)  # bytes: prefix is exact
                loss, _ = _pos_losses(model, full)
                scores.append(loss[len(ctx) - 1 :].mean().item())
            correct += int(min(range(len(scores)), key=scores.__getitem__) == item["gold"])
        elif ttype == "schema":
            scores = []
            for ctx in item["context_options"]:
                c = tok.encode(ctx + delim, True)
                full = tok.encode(ctx + delim + item["continuation"], True)
                loss, _ = _pos_losses(model, full)
                scores.append(loss[len(c) - 1 :].mean().item())
            correct += int(min(range(len(scores)), key=scores.__getitem__) == item["gold"])
        else:
            pre = "".join(s["context"].strip() + delim + s["continuation"] + "\n\n" for s in shots)
            ctx = (pre + item["context"].strip() + delim).strip()
            full = tok.encode(pre + item["context"].strip() + delim + item["continuation"], True)
            n_ctx = len(tok.encode(ctx, True))
            _, pred = _pos_losses(model, full)
            correct += int(pred[n_ctx - 1 : len(full) - 1].tolist() == full[n_ctx:])
    return correct, len(data)


def test_core_matches_hand_computation(tmp_path):
    bundle = write_bundle(tmp_path)
    tok, model = ByteTokenizer(), BigramModel(CORPUS)
    out = evaluate_core(model, tok, bundle, device="cpu")
    centered = []
    for label, ttype, data, k, delim, b in TASKS:
        c, n = _expected(model, tok, label, ttype, data, k, delim)
        r = out["tasks"][label]
        assert (r["correct"], r["n"]) == (c, n), label
        assert r["accuracy"] == pytest.approx(c / n)
        cen = (c / n - b / 100) / (1 - b / 100)
        assert r["centered"] == pytest.approx(cen)
        centered.append(cen)
    assert out["core"] == pytest.approx(sum(centered) / 3)
    # the test is only meaningful if decisions vary: some right, some wrong overall
    accs = [out["tasks"][t[0]]["accuracy"] for t in TASKS]
    assert any(0 < a < 1 for a in accs) or len(set(accs)) > 1


def test_render_prompts_formats():
    shots = [{"query": "Q1", "choices": ["a", "b"], "gold": 1}]
    assert render_prompts({"query": "Q", "choices": ["x", "y"], "gold": 0}, "multiple_choice", ": ", shots) == [
        "Q1: b\n\nQ: x",
        "Q1: b\n\nQ: y",
    ]
    s = render_prompts(
        {"context_options": ["c1", "c2"], "continuation": "end", "gold": 0},
        "schema",
        " ",
        [{"context_options": ["p", "q"], "continuation": "r", "gold": 1}],
    )
    assert s == ["q r\n\nc1 end", "q r\n\nc2 end"]
    lm = render_prompts({"context": " ctx  ", "continuation": "cont"}, "language_modeling", " ",
                        [{"context": "a ", "continuation": "b"}])
    assert lm == ["a b\n\nctx", "a b\n\nctx cont"]


def test_fewshot_excludes_item_and_is_deterministic():
    for idx in range(10):
        picks = core_eval.fewshot_indices(10, idx, 3, 1234)
        assert idx not in picks and len(set(picks)) == 3
        assert picks == core_eval.fewshot_indices(10, idx, 3, 1234)
    with pytest.raises(ValueError):
        core_eval.fewshot_indices(3, 0, 3, 1234)


def test_rank_striding_partitions_items(tmp_path):
    bundle = write_bundle(tmp_path)
    tok, model = ByteTokenizer(), BigramModel(CORPUS)
    full = evaluate_core(model, tok, bundle, device="cpu")
    parts = [evaluate_core(model, tok, bundle, device="cpu", rank=r, world_size=2) for r in range(2)]
    for label in full["tasks"]:
        assert sum(p["tasks"][label]["n"] for p in parts) == full["tasks"][label]["n"]
        assert sum(p["tasks"][label]["correct"] for p in parts) == full["tasks"][label]["correct"]
    with pytest.raises(ValueError):
        evaluate_core(model, tok, bundle, device="cpu", rank=2, world_size=2)


def test_max_per_task_and_truncation(tmp_path):
    bundle = write_bundle(tmp_path)
    tok = ByteTokenizer()
    out = evaluate_core(BigramModel(CORPUS), tok, bundle, device="cpu", max_per_task=2)
    assert all(r["n"] == 2 for r in out["tasks"].values())
    # a context shorter than the prompts: left truncation keeps the scored spans; decisions of a
    # bigram model depend only on the span and the token before it, so the result is unchanged
    long_ = evaluate_core(BigramModel(CORPUS), tok, bundle, device="cpu")
    short = evaluate_core(BigramModel(CORPUS, seq_len=24), tok, bundle, device="cpu")
    for label in long_["tasks"]:
        assert short["tasks"][label]["correct"] == long_["tasks"][label]["correct"]


def test_real_gpt_runs(tmp_path):
    from models.config import model_config
    from models.gpt import build_model

    bundle = write_bundle(tmp_path)
    model = build_model(model_config("cpu-tiny", 1, vocab_size=257, seq_len=64), seed=0)
    model.train()
    out = evaluate_core(model, ByteTokenizer(), bundle, device="cpu", max_per_task=3)
    assert math.isfinite(out["core"]) and set(out["tasks"]) == {t[0] for t in TASKS}
    assert model.training  # mode restored


def test_missing_files_name_the_path(tmp_path):
    tok, model = ByteTokenizer(), BigramModel(CORPUS)
    with pytest.raises(FileNotFoundError, match="nope"):
        evaluate_core(model, tok, tmp_path / "nope", device="cpu")
    bundle = write_bundle(tmp_path / "b")
    (bundle / "eval_meta_data.csv").unlink()
    with pytest.raises(FileNotFoundError, match="eval_meta_data.csv"):
        load_bundle(bundle)
    bundle = write_bundle(tmp_path / "c")
    (bundle / "eval_data" / "sub" / "lm_task.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="lm_task.jsonl"):
        load_bundle(bundle)


def test_baseline_units_and_missing_baseline(tmp_path):
    tasks = [("mc_task", "multiple_choice", MC, 0, " ", 0.25)]  # a fraction, not percent
    _, baselines = load_bundle(write_bundle(tmp_path / "frac", tasks))
    assert baselines["mc_task"] == pytest.approx(0.25)
    _, baselines = load_bundle(write_bundle(tmp_path / "pct", [("mc_task", "multiple_choice", MC, 0, " ", 25.0)]))
    assert baselines["mc_task"] == pytest.approx(0.25)
    bundle = write_bundle(tmp_path / "miss", tasks)
    (bundle / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nother,25\n")
    with pytest.raises(ValueError, match="mc_task"):
        load_bundle(bundle)


def test_fallback_yaml_parser():
    text = (
        "icl_tasks:\n"
        "-\n"
        "  label: jeopardy\n"
        "  dataset_uri: world_knowledge/jeopardy_all.jsonl # c\n"
        "  num_fewshot: [10]\n"
        "  icl_task_type: language_modeling\n"
        '  continuation_delimiter: "\\nAnswer: "\n'
        "- label: copa\n"
        "  dataset_uri: 'commonsense_reasoning/copa.jsonl'\n"
        "  num_fewshot:\n"
        "  - 0\n"
        "  icl_task_type: multiple_choice\n"
    )
    cfg = core_eval._parse_core_yaml(text)
    assert cfg["icl_tasks"] == [
        {
            "label": "jeopardy",
            "dataset_uri": "world_knowledge/jeopardy_all.jsonl",
            "num_fewshot": [10],
            "icl_task_type": "language_modeling",
            "continuation_delimiter": "\nAnswer: ",
        },
        {"label": "copa", "dataset_uri": "commonsense_reasoning/copa.jsonl", "num_fewshot": [0],
         "icl_task_type": "multiple_choice"},
    ]


def _dist_worker(rank, world, bundle, port, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out = evaluate_core(BigramModel(CORPUS), ByteTokenizer(), bundle, device="cpu", rank=rank, world_size=world)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_all_reduce_over_two_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    bundle = write_bundle(tmp_path / "b")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dist_worker, args=(2, str(bundle), port, str(tmp_path)), nprocs=2, join=True)
    single = evaluate_core(BigramModel(CORPUS), ByteTokenizer(), bundle, device="cpu")
    for r in range(2):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert got["core"] == pytest.approx(single["core"])
        for label, t in single["tasks"].items():
            assert (got["tasks"][label]["correct"], got["tasks"][label]["n"]) == (t["correct"], t["n"])
