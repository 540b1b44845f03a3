"""Sequence-level KD: `score --responses teacher` (distillkit.seqkd) — the teacher's greedy answers replace the
training responses, are scored, stored, merged across shards, and read back by `train`."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest
import torch

from distillkit.artifacts import read_artifact
from distillkit.pipelines.score import ScoreConfig, merge, run
from distillkit.seqkd import RESPONSES_FILE, scored_dataset
from tests.conftest import make_texts, write_jsonl

MAX_NEW = 8
MAX_LEN = 64


@pytest.fixture
def qa_jsonl(tmp_path):
    """24 prompt/response records over 2 domains (2 of them held out)."""
    rows = [{"prompt": p, "response": r, "domain": "qa" if i % 2 else "chat", "id": f"s{i:02d}"}
            for i, (p, r) in enumerate(zip(make_texts(24, seed=7, min_words=3, max_words=12),
                                           make_texts(24, seed=8, min_words=3, max_words=10)))]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


def _cfg(data, teacher, student, out, **kw) -> ScoreConfig:
    base = dict(data=str(data), teacher=str(teacher), student=str(student), out=str(out), engine="hf", dtype="float32",
                max_length=MAX_LEN, chunk_size=5, responses="teacher", response_max_new_tokens=MAX_NEW, rouge="off")
    return ScoreConfig(**{**base, **kw})


def _greedy(model_dir, tok, prompt: str) -> str:
    """The reference: transformers `generate` on the prompt alone (its last MAX_LEN // 2 tokens, as scoring keeps
    it), greedy, cut at EOS."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tok(prompt)["input_ids"][-(MAX_LEN // 2):]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True)


def test_teacher_answers_replace_the_training_responses_only(tmp_path, qa_jsonl, tiny_teacher_dir, tiny_student_dir, one_thread):
    from transformers import AutoTokenizer

    from distillkit.data import load_data
    from distillkit.data_options import DataOptions

    out = tmp_path / "score"
    run(_cfg(qa_jsonl, tiny_teacher_dir, tiny_student_dir, out))
    art = read_artifact(out, "score")
    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    orig = load_data(DataOptions.from_config(art.config).spec(str(qa_jsonl))).table
    train_ids = orig.filter(pc.not_equal(orig.column("split"), "validation")).column("sample_id").to_pylist()
    val_ids = set(orig.column("sample_id").to_pylist()) - set(train_ids)
    assert val_ids and train_ids

    answers = art.table(RESPONSES_FILE)
    assert answers.column("sample_id").to_pylist() == train_ids  # every training prompt answered, no held-out one
    by_id = dict(zip(answers.column("sample_id").to_pylist(), answers.column("response").to_pylist()))
    prompts = dict(zip(orig.column("sample_id").to_pylist(), orig.column("prompt").to_pylist()))
    for sid in train_ids[:6]:  # batched, left-padded generation = `generate` on each prompt alone
        assert by_id[sid] == _greedy(tiny_teacher_dir, tok, prompts[sid])
    assert max(answers.column("response_tokens").to_pylist()) <= MAX_NEW
    assert not art.files("responses-parts/")  # the parts are joined, then dropped

    # What was scored: teacher answers on training rows (+ EOS), the data's own answers on held-out rows.
    ds = scored_dataset(art)
    resp = dict(zip(ds.table.column("sample_id").to_pylist(), ds.table.column("response").to_pylist()))
    old = dict(zip(orig.column("sample_id").to_pylist(), orig.column("response").to_pylist()))
    assert all(resp[s] == by_id[s] for s in train_ids) and all(resp[s] == old[s] for s in val_ids)
    assert any(by_id[s] != old[s] for s in train_ids)
    s = art.table("samples.arrow")
    n_tok = dict(zip(s.column("sample_id").to_pylist(), s.column("num_tokens").to_pylist()))
    for sid, text in resp.items():
        if sid in n_tok:
            prompt_len = min(len(tok(prompts[sid])["input_ids"]), MAX_LEN // 2)
            expect = min(len(tok(text, add_special_tokens=False)["input_ids"]) + 1, MAX_LEN - prompt_len)
            assert n_tok[sid] == expect, sid
    assert art.manifest["figures"]["responses"] == len(train_ids)


def test_resume_keeps_the_answers_already_generated(tmp_path, qa_jsonl, tiny_teacher_dir, tiny_student_dir, monkeypatch,
                                                    one_thread):
    import distillkit.engines as engines
    from distillkit import scoring

    real_score = scoring.score_chunks

    def crash(*a, **k):
        raise KeyboardInterrupt  # the run dies after generating, before scoring

    monkeypatch.setattr(scoring, "score_chunks", crash)
    out = tmp_path / "score"
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(qa_jsonl, tiny_teacher_dir, tiny_student_dir, out))
    from distillkit.data import load_data
    from distillkit.data_options import DataOptions

    t = load_data(DataOptions().spec(str(qa_jsonl))).table
    n_train = t.num_rows - pc.sum(pc.equal(t.column("split"), "validation")).as_py()
    parts = sorted((tmp_path / "score.partial" / "responses-parts").glob("part-*.arrow"))
    assert len(parts) == -(-n_train // 5) > 1  # every chunk of 5 training prompts

    made = []
    real_make = engines.make_engine

    def counting(*a, **k):
        made.append(a[1])
        return real_make(*a, **k)

    monkeypatch.setattr(scoring, "score_chunks", real_score)
    monkeypatch.setattr(engines, "make_engine", counting)
    run(_cfg(qa_jsonl, tiny_teacher_dir, tiny_student_dir, out), resume=True)
    assert len(made) == 2  # the two scoring engines: no teacher was loaded to answer again
    art = read_artifact(out, "score")
    assert art.manifest["figures"]["response_chunks_resumed"] == len(parts)
    assert art.table(RESPONSES_FILE).num_rows == n_train


def test_shards_merge_their_answers(tmp_path, qa_jsonl, tiny_teacher_dir, tiny_student_dir, one_thread):
    full = tmp_path / "full"
    run(_cfg(qa_jsonl, tiny_teacher_dir, tiny_student_dir, full))
    parts = []
    for i in range(2):
        p = tmp_path / f"shard{i}"
        run(_cfg(qa_jsonl, tiny_teacher_dir, tiny_student_dir, p, shard=f"{i}/2"))
        parts.append(str(p))
    merge(parts, str(tmp_path / "merged"))
    a, b = (read_artifact(tmp_path / n, "score") for n in ("full", "merged"))
    ta, tb = a.table(RESPONSES_FILE), b.table(RESPONSES_FILE)
    assert sorted(ta.column("sample_id").to_pylist()) == sorted(tb.column("sample_id").to_pylist())
    assert dict(zip(ta.column("sample_id").to_pylist(), ta.column("response").to_pylist())) == \
        dict(zip(tb.column("sample_id").to_pylist(), tb.column("response").to_pylist()))


def test_train_reads_the_teacher_answers(tmp_path, qa_jsonl, tiny_teacher_dir, tiny_student_dir, one_thread, monkeypatch):
    """The rows `train` tokenizes are the scored ones: the teacher's answers."""
    from distillkit.pipelines.plan import PlanConfig
    from distillkit.pipelines.plan import run as run_plan
    from distillkit.pipelines.train import TrainConfig
    from distillkit.pipelines.train import run as run_train
    from distillkit.training import batches

    run(_cfg(qa_jsonl, tiny_teacher_dir, tiny_student_dir, tmp_path / "score"))
    run_plan(PlanConfig(scores=str(tmp_path / "score"), out=str(tmp_path / "plan"), stage_unit="steps", stage_length=1))
    seen = {}
    real = batches.tokenize_rows

    def spy(rows, *a, **k):
        seen.update(zip(rows.column("sample_id").to_pylist(), rows.column("response").to_pylist()))
        return real(rows, *a, **k)

    monkeypatch.setattr(batches, "tokenize_rows", spy)
    run_train(TrainConfig(plan=str(tmp_path / "plan"), teacher=str(tiny_teacher_dir), student=str(tiny_student_dir),
                          out=str(tmp_path / "train"), steps=2, batch_size=2, seq_len=MAX_LEN, save_every=0, precision="fp32"))
    answers = read_artifact(tmp_path / "score", "score").table(RESPONSES_FILE)
    by_id = dict(zip(answers.column("sample_id").to_pylist(), answers.column("response").to_pylist()))
    trained = {s: r for s, r in seen.items() if s in by_id}
    assert trained and all(r == by_id[s] for s, r in trained.items())


def test_teacher_responses_on_plain_text_exit_2(tmp_path, tiny_teacher_dir, tiny_student_dir):
    from typer.testing import CliRunner

    from distillkit.cli.main import app

    data = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in make_texts(6)])
    res = CliRunner().invoke(app, ["score", "--data", str(data), "--teacher", str(tiny_teacher_dir), "--student",
                                   str(tiny_student_dir), "--out", str(tmp_path / "s"), "--responses", "teacher"])
    assert res.exit_code == 2, res.output
    assert "plain text" in res.output and "drop --responses" in res.output
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()
