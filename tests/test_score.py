"""`distillkit score` end to end on tiny in-process models."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from distillkit.artifacts import read_artifact
from distillkit.errors import OutputExists
from distillkit.pipelines.score import ScoreConfig, merge, run
from distillkit.schemas import DOMAIN_COLUMNS, SAMPLE_COLUMNS
from tests.conftest import make_texts, write_jsonl


def _cfg(data, teacher, student, out, **kw) -> ScoreConfig:
    return ScoreConfig(data=str(data), teacher=str(teacher), student=str(student), out=str(out), dtype="float32", **kw)


def _plain_nll(model_dir, texts, tok_dir=None, start_of=None):
    """Independent per-sample mean NLL: one unbatched fp32 forward per text, F.cross_entropy over targets."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir or model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for i, t in enumerate(texts):
        ids = torch.tensor([tok(t)["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        nll = F.cross_entropy(logits, ids[0, 1:], reduction="none")
        s = start_of[i] if start_of else 1
        out.append(nll[s - 1 :].mean().item())
    return np.array(out)


def test_score_end_to_end_matches_plain_cross_entropy(tmp_path, text_jsonl, tiny_teacher_dir, tiny_student_dir):
    out = tmp_path / "score"
    run(_cfg(text_jsonl, tiny_teacher_dir, tiny_student_dir, out))
    art = read_artifact(out, "score")
    samples = art.table("samples.arrow", SAMPLE_COLUMNS)
    domains = art.table("domains.arrow", DOMAIN_COLUMNS)
    assert samples.num_rows == 60
    assert sorted(set(samples.column("domain").to_pylist())) == ["alpha", "beta", "gamma"]

    from distillkit.data import DataSpec, load_data

    ds = load_data(DataSpec(str(text_jsonl)))
    text_of = dict(zip(ds.table.column("sample_id").to_pylist(), ds.table.column("text").to_pylist()))
    texts = [text_of[s] for s in samples.column("sample_id").to_pylist()]
    np.testing.assert_allclose(samples.column("teacher_nll").to_numpy(), _plain_nll(tiny_teacher_dir, texts), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(samples.column("student_nll").to_numpy(), _plain_nll(tiny_student_dir, texts), rtol=1e-4, atol=1e-4)
    # text data: difficulty is the student's CE
    np.testing.assert_array_equal(samples.column("difficulty").to_numpy(), samples.column("student_nll").to_numpy())

    # per-domain perplexity = exp(token-weighted mean NLL over the held-out rows), computed here independently
    s = samples.to_pandas()
    for row in domains.to_pylist():
        v = s[(s.domain == row["domain"]) & (s.split == "validation")]
        assert row["num_samples"] == len(v) == 2  # ceil(10% of 20)
        t = math.exp((v.teacher_nll * v.num_tokens).sum() / v.num_tokens.sum())
        st = math.exp((v.student_nll * v.num_tokens).sum() / v.num_tokens.sum())
        assert row["teacher_ppl"] == pytest.approx(t, rel=1e-5)
        assert row["student_ppl"] == pytest.approx(st, rel=1e-5)
        assert row["ppl_ratio"] == pytest.approx(st / t, rel=1e-5)
    m = art.manifest
    assert m["figures"]["teacher_tokens_per_s"] > 0 and m["format"] == "text"
    assert m["config"]["data_fingerprint"] == ds.fingerprint


def test_exact_file_set_and_idempotent_rerun(tmp_path, text_jsonl, tiny_teacher_dir, tiny_student_dir):
    out = tmp_path / "score"
    cfg = _cfg(text_jsonl, tiny_teacher_dir, tiny_student_dir, out, top_k=3)
    run(cfg)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["domains.arrow", "manifest.json", "samples.arrow", "topk/part-00000.arrow"]
    before = (out / "manifest.json").read_bytes()
    run(cfg)  # same config: nothing to do
    assert (out / "manifest.json").read_bytes() == before
    with pytest.raises(OutputExists, match="--overwrite"):
        run(_cfg(text_jsonl, tiny_teacher_dir, tiny_student_dir, out, max_length=16))
    assert (out / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("fmt", ["uint8", "float16"])
def test_topk_logprobs_match_plain_forward(tmp_path, text_jsonl, tiny_teacher_dir, tiny_student_dir, fmt):
    """uint16 ids round-trip exactly; decoded log-probs are within the format's bound of a plain fp32 forward."""
    import torch
    from transformers import AutoModelForCausalLM

    from distillkit.topk import ROWS_PER_BATCH, decode_rows

    out = tmp_path / "score"
    run(_cfg(text_jsonl, tiny_teacher_dir, tiny_student_dir, out, top_k=5, chunk_size=25, topk_format=fmt))
    art = read_artifact(out, "score")
    assert art.manifest["schema_version"] == 2
    assert art.manifest["topk"] == {"k": 5, "format": fmt, "ids": "uint16", "rows_per_batch": ROWS_PER_BATCH, "tail": "topk_logtail"}
    parts = art.files("topk/")
    assert len(parts) == 3
    t = art.table(parts[1])
    assert t.schema.field("topk_ids").type == pa.list_(pa.list_(pa.uint16(), 5))
    assert t.schema.field("token_ids").type == pa.list_(pa.uint16())
    value_col = {"uint8": ("topk_codes", pa.uint8()), "float16": ("topk_logprobs", pa.float16())}[fmt]
    assert t.schema.field(value_col[0]).type == pa.list_(pa.list_(value_col[1], 5))
    assert t.column(0).num_chunks == -(-t.num_rows // ROWS_PER_BATCH)  # record batches of ROWS_PER_BATCH samples
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir, dtype=torch.float32).eval()
    batch = t.to_batches()[1]
    for j in range(3):
        ids = torch.tensor([batch.column("token_ids")[j].as_py()])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        vals, idx = lp.topk(5, -1)
        got_ids, got_lp = decode_rows(batch, j)
        np.testing.assert_array_equal(got_ids, idx.numpy())  # exact
        want = vals.numpy()
        bound = 2e-3 * (1 + np.abs(want))
        if fmt == "uint8":
            scale = np.array(batch.column("topk_scale")[j].as_py(), dtype=np.float32)
            np.testing.assert_allclose(scale, want[:, 0] - want[:, -1], rtol=1e-3)
            bound = bound + scale[:, None] / 255
        assert (np.abs(got_lp - want) <= bound).all(), np.abs(got_lp - want).max()
        # the decoded top-k carries the exact tail mass: Σ p = 1 − tail of the fp32 forward
        np.testing.assert_allclose(np.exp(got_lp.astype(np.float64)).sum(-1), np.exp(want.astype(np.float64)).sum(-1), rtol=2e-3)


def test_topk_table_widens_ids_past_uint16_and_reads_schema1_parts():
    from distillkit.engines.base import SequenceScores
    from distillkit.topk import decode_rows, topk_table

    rng = np.random.default_rng(0)
    lp = np.sort(np.log(rng.dirichlet(np.ones(8), size=6)).astype(np.float32), axis=1)[:, ::-1][:, :4].copy()
    for vocab, typ in ((65536, pa.uint16()), (70000, pa.int32())):
        ids = rng.choice(vocab, size=(6, 4), replace=False).astype(np.int32)
        ids[0, 0] = vocab - 1
        t = topk_table(["a"], [list(range(7))], [SequenceScores(np.zeros(6, np.float32), ids, lp)], "uint8", vocab)
        assert t.schema.field("topk_ids").type.value_type.value_type == typ
        got_ids, got_lp = decode_rows(t.to_batches()[0], 0)
        np.testing.assert_array_equal(got_ids, ids)
    # a schema-1 part (int32 ids, float16 log-probs, no tail column) decodes to its values unchanged
    old = pa.table({"sample_id": ["a"], "token_ids": pa.array([list(range(7))], pa.list_(pa.int32())),
                    "topk_ids": pa.array([ids.tolist()], pa.list_(pa.list_(pa.int32(), 4))),
                    "topk_logprobs": pa.array([lp.astype(np.float16).tolist()], pa.list_(pa.list_(pa.float16(), 4)))})
    got_ids, got_lp = decode_rows(old.to_batches()[0], 0)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_lp, lp.astype(np.float16).astype(np.float32))


def test_shards_merge_equals_single_run(tmp_path, text_jsonl, tiny_teacher_dir, tiny_student_dir):
    full = tmp_path / "full"
    run(_cfg(text_jsonl, tiny_teacher_dir, tiny_student_dir, full, top_k=2))
    parts = []
    for i in range(2):
        p = tmp_path / f"shard{i}"
        run(_cfg(text_jsonl, tiny_teacher_dir, tiny_student_dir, p, top_k=2, shard=f"{i}/2"))
        parts.append(str(p))
    merged = tmp_path / "merged"
    merge(parts, str(merged))
    a, b = read_artifact(full, "score"), read_artifact(merged, "score")
    sa, sb = a.table("samples.arrow"), b.table("samples.arrow")
    assert sa.column("sample_id").to_pylist() == sb.column("sample_id").to_pylist()
    for col in ("teacher_nll", "student_nll", "difficulty", "num_tokens"):
        np.testing.assert_allclose(sa.column(col).to_numpy(), sb.column(col).to_numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.table("domains.arrow").column("ppl_ratio").to_numpy(),
                               b.table("domains.arrow").column("ppl_ratio").to_numpy(), rtol=1e-5)
    topk_rows = sum(b.table(f).num_rows for f in b.files("topk/"))
    assert topk_rows == 60
    assert [i["kind"] for i in b.manifest["inputs"]] == ["score", "score"]
    with pytest.raises(Exception, match="every shard"):
        merge(parts[:1], str(tmp_path / "bad"))


def test_instruction_data_gets_rouge_and_rrf(tmp_path, tiny_teacher_dir, tiny_student_dir):
    rows = [{"prompt": p, "response": r, "domain": "qa" if i % 2 else "chat"}
            for i, (p, r) in enumerate(zip(make_texts(16, seed=5, max_words=12), make_texts(16, seed=6, max_words=10)))]
    data = write_jsonl(tmp_path / "inst.jsonl", rows)
    out = tmp_path / "score"
    run(_cfg(data, tiny_teacher_dir, tiny_student_dir, out, gen_max_new_tokens=8))
    art = read_artifact(out, "score")
    s = art.table("samples.arrow")
    assert "rouge_l" in s.column_names
    rouge = s.column("rouge_l").to_numpy()
    assert ((rouge >= 0) & (rouge <= 1)).all()
    from distillkit.difficulty import rrf_difficulty

    expect = rrf_difficulty(rouge, s.column("student_ce").to_numpy(), s.column("sample_id").to_pylist())
    np.testing.assert_allclose(s.column("difficulty").to_numpy(), expect)
    assert art.manifest["format"] == "instruction"
