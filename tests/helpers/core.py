"""A tiny CORE bundle on disk (the DCLM layout: core.yaml, eval_data/, eval_meta_data.csv) with one
task of each type, and a byte-level tokenizer with the project's tokenizer interface."""
from __future__ import annotations

import csv
import json


BOS = 256


class ByteTokenizer:
    """Byte-level stand-in with the project's tokenizer interface."""

    bos_id = BOS

    def encode(self, text, prepend_bos=False):
        ids = list(text.encode("utf-8"))
        return [BOS] + ids if prepend_bos else ids

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


MC = [
    {"query": "The cat sat on the", "choices": ["mat", "sun", "dog"], "gold": 0},
    {"query": "Ice is", "choices": ["hot", "cold"], "gold": 1},
    {"query": "Birds can", "choices": ["fly", "swim", "read"], "gold": 0},
    {"query": "The dog ran to the", "choices": ["ice", "park"], "gold": 1},
    {"query": "The sun is", "choices": ["cold", "hot"], "gold": 0},
]


SCHEMA = [
    {"context_options": ["the cat", "a dog"], "continuation": "sat on the mat", "gold": 0},
    {"context_options": ["the sun", "ice"], "continuation": "is cold", "gold": 1},
    {"context_options": ["birds", "a mat"], "continuation": "can fly", "gold": 0},
    {"context_options": ["a dog", "the cat"], "continuation": "ran to the park", "gold": 1},
]


LM = [
    {"context": "the cat sat on ", "continuation": "the"},
    {"context": "a dog ran to the ", "continuation": "park"},
    {"context": "birds can ", "continuation": "fly"},
    {"context": "ice is  ", "continuation": "cold"},
    {"context": "the sun is", "continuation": "hot"},
    {"context": "xyz", "continuation": "qqq"},
]


TASKS = [
    # label, type, data, fewshot, delimiter, baseline (percent, as the DCLM CSV)
    ("mc_task", "multiple_choice", MC, 1, " ", 33.0),
    ("schema_task", "schema", SCHEMA, 0, " ", 50.0),
    ("lm_task", "language_modeling", LM, 2, " ", 0.0),
]


def write_bundle(root, tasks=TASKS):
    (root / "eval_data" / "sub").mkdir(parents=True)
    lines = ["icl_tasks:"]
    for label, ttype, data, k, delim, _ in tasks:
        lines += [
            f"- label: {label}",
            f"  dataset_uri: sub/{label}.jsonl",
            "  num_fewshot:",
            f"  - {k}",
            f"  icl_task_type: {ttype}",
            f"  continuation_delimiter: {json.dumps(delim)}  # a comment",
        ]
        with open(root / "eval_data" / "sub" / f"{label}.jsonl", "w") as f:
            for item in data:
                f.write(json.dumps(item) + "\n")
    (root / "core.yaml").write_text("\n".join(lines) + "\n")
    with open(root / "eval_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Eval Task", "Task Category", "Task Type", "#shots", "Random baseline"])
        for label, ttype, _, k, _, b in tasks:
            w.writerow([label, "cat", ttype, k, b])
    return root
