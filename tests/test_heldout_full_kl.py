"""scripts/heldout_full_kl.py on tiny models: known answers on the held-out split of a real score artifact.

The teacher measured against itself has KL exactly 0 and the NLL the score stage recorded for it; a different
student has KL > 0 equal to a direct full-vocabulary computation on the same tokens.
"""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

from distillkit.data_options import DataOptions
from distillkit.pipelines.score import ScoreConfig
from distillkit.pipelines.score import run as run_score
from tests.conftest import make_texts, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _run(args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["heldout_full_kl.py", *args])
    runpy.run_path(str(ROOT / "scripts" / "heldout_full_kl.py"), run_name="__main__")


def test_teacher_against_itself_and_a_student_by_hand(tmp_path, tiny_teacher_dir, tiny_student_dir, monkeypatch):
    rows = [{"prompt": p, "response": r, "domain": "qa"}
            for p, r in zip(make_texts(24, seed=41, min_words=4, max_words=8), make_texts(24, seed=42, min_words=4, max_words=9))]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    scores = tmp_path / "score"
    run_score(ScoreConfig(data=str(data), teacher=str(tiny_teacher_dir), student=str(tiny_student_dir), out=str(scores),
                          dtype="float32", max_length=40, rouge="off", data_opts=DataOptions(val_size=5)))
    out = tmp_path / "kl.json"
    _run(["--scores", str(scores), "--teacher", str(tiny_teacher_dir), "--model", f"self={tiny_teacher_dir}",
          "--model", f"student={tiny_student_dir}", "--out", str(out)], monkeypatch)
    got = json.loads(out.read_text())
    assert got["target_tokens"] == sum(got["per_doc"]["targets"]) > 0
    assert got["mean"]["self"]["kl"] == pytest.approx(0.0, abs=1e-6)

    import pyarrow.compute as pc

    from distillkit.artifacts import read_artifact

    samples = read_artifact(scores, "score").table("samples.arrow")
    val = samples.filter(pc.equal(samples.column("split"), "validation")).to_pylist()
    want = sum(r["teacher_nll"] * r["num_tokens"] for r in val) / sum(r["num_tokens"] for r in val)
    assert got["mean"]["self"]["nll"] == pytest.approx(want, rel=1e-5)  # the score stage's own teacher NLL
    assert got["target_tokens"] == sum(r["num_tokens"] for r in val) and got["documents"] == len(val) >= 2

    # the student: KL of one document by hand, over the whole vocabulary
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.data import load_data
    from distillkit.training.batches import tokenize_rows

    sc = read_artifact(scores, "score").config
    ds = load_data(DataOptions.from_config(sc).spec(str(data)))
    held = ds.table.filter(pc.equal(ds.table.column("split"), "validation"))
    seqs = tokenize_rows(held, ds.format, AutoTokenizer.from_pretrained(str(tiny_teacher_dir)), 40, 40)
    t = AutoModelForCausalLM.from_pretrained(str(tiny_teacher_dir)).eval()
    s = AutoModelForCausalLM.from_pretrained(str(tiny_student_dir)).eval()
    ids, start = torch.as_tensor(seqs.ids[0])[None], int(seqs.target_start[0])
    with torch.no_grad():
        lt = torch.log_softmax(t(ids).logits[0, start - 1 : -1], -1)
        ls = torch.log_softmax(s(ids).logits[0, start - 1 : -1], -1)
    kl = float((lt.exp() * (lt - ls)).sum())
    assert got["per_doc"]["sample_id"][0] == seqs.sample_id[0]
    assert got["per_doc"]["student"]["kl"][0] == pytest.approx(kl, rel=1e-5) and kl > 0
    assert got["mean"]["student"]["kl"] > 0 and math.isfinite(got["mean"]["student"]["nll"])
