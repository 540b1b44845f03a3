"""The sampled teacher store (`score --teacher-store sampled`): draws, format, the unbiased losses, and the stages.

Draws and estimator on random logits; chunked vs plain parity through `objective`; score -> plan -> train end to
end on the tiny in-process models; the refusals through the CLI; the manifest's bytes per token.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from distillkit.artifacts import read_artifact
from distillkit.cli.main import app
from distillkit.losses import LinearHead, LossSpec, TopKTeacher, heldout_sums, kd_loss, objective
from distillkit.losses.sparse import SAMPLED_KINDS, sampled_kd_loss, sampled_rows
from distillkit.pipelines.plan import PlanConfig
from distillkit.pipelines.plan import run as run_plan
from distillkit.pipelines.score import ScoreConfig, merge
from distillkit.pipelines.score import run as run_score
from distillkit.pipelines.train import TrainConfig
from distillkit.pipelines.train import run as run_train
from distillkit.sampled_store import SampleSpec, decode_batch, draw, run_lengths, sampled_table, uniforms
from tests.conftest import three_domain_data
from tests.test_losses import _grads, _heads, _logits

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread for this module


def _draws(teacher_logits: torch.Tensor, n: int, seed: int, scheme: str, key: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    """n draws per row of [P, V] teacher logits (as score makes them) and the teacher's log p of each."""
    lp = torch.log_softmax(teacher_logits.double(), -1).float()
    ids = draw(lp, uniforms(seed, key, lp.shape[0], n, scheme))
    return ids, lp.gather(1, ids)


# ------------------------------------------------------------------------------------------- draws


def test_draws_are_seeded_ascending_and_follow_the_teacher():
    u = uniforms(3, "doc-1", 5, 12, "stratified")
    np.testing.assert_array_equal(u, uniforms(3, "doc-1", 5, 12, "stratified"))  # same seed and sample: same uniforms
    assert not np.array_equal(u, uniforms(4, "doc-1", 5, 12, "stratified"))
    assert not np.array_equal(u, uniforms(3, "doc-2", 5, 12, "stratified"))
    assert ((u >= np.arange(12) / 12) & (u < (np.arange(12) + 1) / 12)).all()  # one uniform per 1/n slice
    assert (np.diff(uniforms(3, "doc-1", 5, 12, "iid"), axis=1) >= 0).all()
    # the first rows of a longer stream are the stream of a shorter sample: positions do not shift the draws
    np.testing.assert_array_equal(uniforms(3, "doc-1", 9, 12, "iid")[:5], uniforms(3, "doc-1", 5, 12, "iid"))

    logits = _logits(4, 30, seed=1, scale=2.0)
    logits[:, 7] = -torch.inf  # a token the teacher forbids is never drawn
    p = torch.softmax(logits.double(), -1)
    for scheme in ("stratified", "iid"):
        freq = torch.zeros_like(p)
        seeds = 300
        for seed in range(seeds):
            ids, _ = _draws(logits, 12, seed, scheme)
            assert (ids.diff(dim=1) >= 0).all() and not (ids == 7).any()
            freq.scatter_add_(1, ids, torch.ones(ids.shape, dtype=freq.dtype))
            if scheme == "stratified":  # each token's count is within 2 of n·p
                counts = torch.zeros_like(p).scatter_add_(1, ids, torch.ones(ids.shape, dtype=p.dtype))
                assert ((counts - 12 * p).abs() < 2).all()
        freq /= seeds * 12
        se = (p * (1 - p) / (seeds * 12)).sqrt()
        assert ((freq - p).abs() <= 5 * se + 1e-3).all(), scheme


def test_sampled_table_round_trips_and_widens_ids():
    rng = np.random.default_rng(0)
    for vocab, typ in ((300, pa.uint16()), (70000, pa.int32())):
        draws, seqs = [], []
        for length in (5, 9, 2):
            ids = np.sort(rng.integers(0, vocab, size=(length - 1, 6)), axis=1)
            ids[:, 1] = ids[:, 0]  # repeats: stored once with their count
            draws.append((ids, -(ids % 97).astype(np.float32) / 13))  # log p is a function of the id
            seqs.append(list(rng.integers(0, vocab, size=length)))
        draws[0][0][0, -1] = vocab - 1
        table = sampled_table(["a", "b", "c"], seqs, draws, SampleSpec(6, "iid", 7), vocab)
        entry = table.schema.field("sampled").type.value_type.value_type
        assert [entry.field(i).type for i in range(3)] == [typ, pa.uint8(), pa.float16()]
        assert table.schema.field("token_ids").type == pa.list_(typ)
        meta = table.schema.metadata
        assert meta[b"distillkit.sampled_count"] == b"6" and meta[b"distillkit.sampled_seed"] == b"7"
        assert int(meta[b"distillkit.sampled_max_id"]) == vocab - 1
        distinct, first, counts = run_lengths(draws[0][0])
        row0 = table.column("sampled").to_pylist()[0][0]  # readable without distillkit: distinct ids, counts, log p
        assert [e["id"] for e in row0] == draws[0][0][0][first[0]].tolist() and sum(e["count"] for e in row0) == 6
        off, ids, lp = decode_batch(table.to_batches()[0])
        for j, (want_ids, want_lp) in enumerate(draws):
            np.testing.assert_array_equal(ids[off[j] : off[j + 1]], want_ids)
            np.testing.assert_array_equal(lp[off[j] : off[j + 1]], want_lp.astype(np.float16).astype(np.float32))
        off1, ids1, _ = decode_batch(table.to_batches()[0].slice(1, 2))  # a slice decodes its own rows
        np.testing.assert_array_equal(ids1[off1[0] : off1[1]], draws[1][0])
        assert table.to_pandas().shape == (3, 3)


# ------------------------------------------------------------------------------------------- the estimator


@pytest.mark.parametrize("scheme", ["stratified", "iid"])
@pytest.mark.parametrize("kind", SAMPLED_KINDS)
def test_estimate_is_unbiased_against_the_exact_divergence(kind, scheme):
    """The mean over many seeds of the sampled loss and of its gradient is the full-vocabulary value."""
    P, V, n, seeds = 6, 40, 12, 600
    zt, zs = _logits(P, V, seed=11, scale=2.5), _logits(P, V, seed=12, scale=1.5).requires_grad_()
    params = {"alpha": 0.1} if kind == "skl" else {}
    exact = kd_loss(zs, zt, None, kind, **params)
    (g_exact,) = _grads(exact, [zs])
    values, grads = [], torch.zeros_like(zs)
    for seed in range(seeds):
        ids, lps = _draws(zt, n, seed, scheme)
        est = sampled_kd_loss(zs, ids, lps, None, kind, **params)
        values.append(est.item())
        grads += _grads(est, [zs])[0] / seeds
    values = np.array(values)
    se = values.std(ddof=1) / np.sqrt(seeds)
    assert abs(values.mean() - exact.item()) < 4 * se + 1e-5, (values.mean(), exact.item(), se)
    assert (values < exact.item()).any() and (values > exact.item()).any()  # a noisy estimate around it, not a bound
    # the gradient's noise per entry is at most ~sqrt(p/n)/P; averaged over the seeds it is far below the tolerance
    torch.testing.assert_close(grads, g_exact, atol=4 / (P * np.sqrt(n * seeds)), rtol=0)


def test_sampled_fkl_with_every_draw_equal_to_its_token_is_cross_entropy_minus_entropy():
    """A teacher sure of one token: every draw is that token, and the estimate is exact."""
    zt = torch.full((3, 5), -1e4)
    zt[torch.arange(3), torch.tensor([1, 4, 0])] = 0.0
    zs = _logits(3, 5, seed=3)
    ids, lps = _draws(zt, 12, 0, "iid")
    assert (ids == torch.tensor([1, 4, 0])[:, None]).all()
    got = sampled_kd_loss(zs, ids, lps, None, "fkl")
    assert got.item() == pytest.approx(kd_loss(zs, zt, None, "fkl").item(), rel=1e-5)


def test_loss_refuses_divergences_and_temperatures_without_an_unbiased_estimate():
    zs, zt = _logits(2, 3, 9, seed=4), _logits(2, 3, 9, seed=5)
    ids, lps = _draws(zt.reshape(-1, 9), 4, 0, "stratified")
    ids, lps = ids.reshape(2, 3, 4), lps.reshape(2, 3, 4)
    for kind, params in (("rkl", {}), ("jsd", {}), ("srkl", {}), ("tvd", {}), ("akl", {}), ("taid", {"t": 0.5})):
        with pytest.raises(ValueError, match=r"loss '\w+' has no unbiased estimate.*--loss fkl or skl.*--teacher-store topk"):
            sampled_kd_loss(zs, ids, lps, None, kind, **params)
    with pytest.raises(ValueError, match=r"T = 1 teacher.*T = 2.*--temperature 1"):
        sampled_kd_loss(zs, ids, lps, None, "fkl", temperature=2.0)
    with pytest.raises(ValueError, match=r"sample_ids must be in \[0, 9\)"):
        sampled_kd_loss(zs, ids + 9, lps, None, "fkl")


# ------------------------------------------------------------------------------------------- objective: chunked vs plain


def _sampled_step_inputs(seed: int):
    hidden, weight, bias, teacher, mask, V = _heads(seed=seed)
    labels = torch.randint(0, V, mask.shape, generator=torch.Generator().manual_seed(seed + 7))
    labels[~mask] = -100
    zt = (teacher.hidden @ teacher.weight.t() + teacher.bias)[..., :V]
    ids, lps = _draws(zt.reshape(-1, V), 12, seed, "stratified")
    shape = (*mask.shape, 12)
    return hidden, weight, bias, labels, TopKTeacher(ids.reshape(shape), lps.reshape(shape)), V


@pytest.mark.parametrize("kind", SAMPLED_KINDS)
@pytest.mark.parametrize("form,lam", [("pocl", 1.0), ("pocl", 0.3), ("additive", 0.5)])
def test_sampled_objective_chunked_matches_plain_values_and_gradients(kind, form, lam):
    hidden, weight, bias, labels, sampled, V = _sampled_step_inputs(seed=190)
    params = {"alpha": 0.1} if kind == "skl" else {}
    out = {}
    for impl in ("plain", "chunked"):
        spec = LossSpec(kind, params, form, impl, V, chunk_size=5, store="sampled")
        res = objective(spec, LinearHead(hidden, weight, bias), labels, sampled, kd_weight=lam)
        out[impl] = (res, _grads(res[0], [hidden, weight, bias]))
    assert int((labels != -100).sum()) % 5 != 0  # the last chunk is partial
    for a, b in zip(out["chunked"][0], out["plain"][0]):  # objective, kd, ce
        assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-7)
    for g, w in zip(out["chunked"][1], out["plain"][1]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(out["chunked"][1][1][V:]) == 0  # padded head rows get no gradient
    # the plain value is the formula, computed here from full logits
    logits = (hidden @ weight.t() + bias)[..., :V].reshape(-1, V)
    keep = (labels != -100).reshape(-1)
    want = sampled_rows(logits[keep], sampled.ids.reshape(-1, 12)[keep], sampled.logprobs.reshape(-1, 12)[keep], kind,
                        params).mean()
    assert out["plain"][0][1].item() == pytest.approx(want.item(), rel=1e-6)


def test_sampled_heldout_kl_is_the_fkl_estimate_and_objective_refuses_rkl():
    hidden, weight, bias, labels, sampled, V = _sampled_step_inputs(seed=195)
    spec, student = LossSpec("skl", {"alpha": 0.1}, "pocl", "chunked", V, chunk_size=3, store="sampled"), LinearHead(hidden, weight, bias)
    mask = labels != -100
    with torch.no_grad():
        _, kl = heldout_sums(spec, student, labels, sampled)
        want = sampled_kd_loss(hidden @ weight.t() + bias, sampled.ids, sampled.logprobs, mask, "fkl", vocab_size=V)
    assert kl.item() == pytest.approx(want.item() * int(mask.sum()), rel=1e-5)
    for impl in ("plain", "chunked"):
        with pytest.raises(ValueError, match="--teacher-store topk"):
            objective(LossSpec("rkl", {}, "pocl", impl, V, store="sampled"), student, labels, sampled)
        with pytest.raises(ValueError, match="--temperature 1"):
            objective(LossSpec("fkl", {}, "pocl", impl, V, store="sampled"), student, labels, sampled, temperature=1.5)


# ------------------------------------------------------------------------------------------- the stages


@pytest.fixture(scope="module")
def sampled_pipeline(tmp_path_factory, tiny_teacher_dir, tiny_student_dir):
    """Scores with a sampled teacher store (n = 12) and a 4-stage plan of 3 steps per stage (T 1 -> 2)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sampled")
    data = three_domain_data(root)
    cfg = ScoreConfig(data=str(data), teacher=str(tiny_teacher_dir), student=str(tiny_student_dir), out=str(root / "score"),
                      dtype="float32", max_length=48, chunk_size=40, teacher_store="sampled", sample_seed=5)
    run_score(cfg)
    run_plan(PlanConfig(scores=str(root / "score"), out=str(root / "plan"), stage_unit="steps", stage_length=3))
    torch.set_num_threads(n)
    return {"root": root, "data": data, "score_cfg": cfg, "plan": root / "plan", "scores": root / "score",
            "teacher": tiny_teacher_dir, "student": tiny_student_dir}


def _train_cfg(p, out, **kw) -> TrainConfig:
    base = dict(plan=str(p["plan"]), teacher=str(p["teacher"]), student=str(p["student"]), out=str(out), batch_size=4,
                seq_len=48, lr=3e-3, save_every=0, log_every=100, teacher_mode="offline", temperature=1.0)
    return TrainConfig(**{**base, **kw})


def _metrics(out) -> dict[str, np.ndarray]:
    t = read_artifact(out, "train").table("metrics.arrow")
    return {c: t.column(c).to_numpy() for c in t.column_names}


def test_score_writes_the_sampled_store_records_the_seed_and_its_bytes_per_token(sampled_pipeline):
    art = read_artifact(sampled_pipeline["scores"], "score")
    files = sorted(f["name"] for f in art.manifest["files"])
    assert files == ["domains.arrow", "sampled/part-00000.arrow", "sampled/part-00001.arrow", "sampled/part-00002.arrow",
                     "samples.arrow"]
    cfg = art.manifest["config"]
    assert (cfg["teacher_store"], cfg["sample_count"], cfg["sample_scheme"], cfg["sample_seed"]) == ("sampled", 12, "stratified", 5)
    assert art.manifest.get("topk") is None
    # bytes per token as bench/bench_topk.py counts it: part bytes / stored positions (len - 1 per sample)
    tables = [art.table(name) for name in art.files("sampled/")]
    positions = sum(len(x) - 1 for t in tables for x in t.column("token_ids").to_pylist())
    size = sum((art.path / name).stat().st_size for name in art.files("sampled/"))
    figures = art.manifest["figures"]
    assert figures["store_positions"] == positions
    assert figures["store_bytes_per_token"] == round(size / positions, 2)
    distinct = sum(len(pos) for t in tables for sample in t.column("sampled").to_pylist() for pos in sample)
    assert figures["sampled_distinct_per_token"] == round(distinct / positions, 3)
    assert 1 <= figures["sampled_distinct_per_token"] <= 12
    assert figures["store_bytes_per_token"] <= 64
    r = runner.invoke(app, ["inspect", str(sampled_pipeline["scores"])])
    assert r.exit_code == 0 and "sampled/part-00000.arrow (first of 3 parts)" in r.output, r.output
    assert "sampled/part-00001.arrow (" not in r.output  # one part shown, not every part


def test_score_draws_are_the_teachers_and_do_not_depend_on_chunks_or_shards(sampled_pipeline, tmp_path):
    """The stored draws are inverse-CDF draws of the fp32 teacher with the uniforms of (seed, sample id)."""
    from transformers import AutoModelForCausalLM

    art = read_artifact(sampled_pipeline["scores"], "score")
    t = art.table(art.files("sampled/")[1])
    model = AutoModelForCausalLM.from_pretrained(sampled_pipeline["teacher"], dtype=torch.float32).eval()
    batch = t.to_batches()[0]
    off, ids, lps = decode_batch(batch)
    for j in range(2):
        tokens = batch.column("token_ids")[j].as_py()
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([tokens])).logits[0, :-1].float(), -1)
        want = draw(lp, uniforms(5, batch.column("sample_id")[j].as_py(), len(tokens) - 1, 12, "stratified"))
        got = ids[off[j] : off[j + 1]]
        assert (got == want.numpy()).mean() > 0.99  # a boundary moved by float rounding may flip a rare draw
        np.testing.assert_allclose(lps[off[j] : off[j + 1]], lp.gather(1, torch.from_numpy(got.astype(np.int64))).numpy(),
                                   atol=2e-2, rtol=1e-3)  # float16 as stored

    # another chunking, sharded and merged: the same draws for every sample
    cfg = sampled_pipeline["score_cfg"]
    shards = []
    for i in range(2):
        out = tmp_path / f"shard{i}"
        run_score(ScoreConfig(**{**_fields(cfg), "out": str(out), "chunk_size": 17, "shard": f"{i}/2"}))
        shards.append(str(out))
    merge(shards, str(tmp_path / "merged"))
    merged = read_artifact(tmp_path / "merged", "score")
    assert merged.manifest["figures"]["store_positions"] == art.manifest["figures"]["store_positions"]

    def by_sample(a) -> dict[str, np.ndarray]:
        out = {}
        for name in a.files("sampled/"):
            for b in a.table(name).to_batches():
                o, d, _ = decode_batch(b)
                out.update({sid: d[o[j] : o[j + 1]] for j, sid in enumerate(b.column("sample_id").to_pylist())})
        return out

    one, two = by_sample(art), by_sample(merged)
    assert one.keys() == two.keys() and len(one) == 90
    same = np.mean(np.concatenate([(one[k] == two[k]).reshape(-1) for k in one]))
    assert same > 0.999, same


def _fields(cfg: ScoreConfig) -> dict:
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def test_train_from_the_sampled_store_chunked_equals_plain_and_learns(sampled_pipeline, tmp_path):
    kw = dict(steps=12, eval_heldout=True, mixture="static", loss_form="additive", kd_weight=0.5, precision="fp32")
    run_train(_train_cfg(sampled_pipeline, tmp_path / "chunked", chunk_size=7, **kw))
    run_train(_train_cfg(sampled_pipeline, tmp_path / "plain", loss_impl="plain", **kw))
    a, b = _metrics(tmp_path / "chunked"), _metrics(tmp_path / "plain")
    for key in ("loss", "kd_loss", "ce_loss"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5)
    np.testing.assert_allclose(a["loss"], a["ce_loss"] + 0.5 * a["kd_loss"], rtol=1e-6)
    assert a["loss"][-3:].mean() < 0.8 * a["loss"][:3].mean(), a["loss"]
    assert (a["temperature"] == 1.0).all()
    held = read_artifact(tmp_path / "chunked", "train").table("heldout.arrow").to_pylist()
    assert all(r["kl_after"] < r["kl_before"] for r in held), held  # the unbiased forward-KL estimate on held-out rows


def test_train_skew_kl_from_the_sampled_store(sampled_pipeline, tmp_path):
    run_train(_train_cfg(sampled_pipeline, tmp_path / "skl", steps=3, loss="skl", eval_heldout=False, mixture="static"))
    m = _metrics(tmp_path / "skl")
    assert np.isfinite(m["loss"]).all()


def _cli_train(p, out, *extra) -> list[str]:
    return ["train", "--plan", str(p["plan"]), "--teacher", str(p["teacher"]), "--student", str(p["student"]),
            "--out", str(out), "--teacher-mode", "offline", "--steps", "2", "--batch-size", "4", "--seq-len", "48", *extra]


def _one_line_error(r) -> str:
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def test_refusals_exit_2_with_one_line(sampled_pipeline, tmp_path, text_jsonl):
    p = sampled_pipeline
    for loss in ("rkl", "jsd", "tvd", "akl", "taid", "srkl"):
        line = _one_line_error(runner.invoke(app, _cli_train(p, tmp_path / loss, "--loss", loss, "--temperature", "1")))
        assert f"loss '{loss}'" in line and "--loss fkl or skl" in line and "--teacher-store topk" in line, line
    # the plan's stages raise T above 1 (steps 4..: stage 1 at T = 1.33): refused unless --temperature 1
    line = _one_line_error(runner.invoke(app, _cli_train(p, tmp_path / "t", "--steps", "6")))
    assert "T = 1 teacher" in line and "--temperature 1" in line, line
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.partial").exists()

    score = ["score", "--data", str(text_jsonl), "--teacher", str(p["teacher"]), "--student", str(p["student"]),
             "--dtype", "float32", "--teacher-store", "sampled"]
    cases = {"top_k": (["--top-k", "8"], "drop --top-k"), "count": (["--sample-count", "0"], "sample_count must be in 1..255"),
             "count256": (["--sample-count", "256"], "1..255"), "vllm": (["--engine", "vllm"], "only the hf engine")}
    for name, (extra, needle) in cases.items():
        out = tmp_path / f"score-{name}"
        line = _one_line_error(runner.invoke(app, [*score, "--out", str(out), *extra]))
        assert needle in line, (name, line)
        assert not out.exists()


def test_topk_scores_keep_their_identity_and_report_bytes_per_token(tmp_path, text_jsonl, tiny_teacher_dir, tiny_student_dir):
    """A top-k config hashes as before the sampled store existed; its manifest reports bytes/token too."""
    out = tmp_path / "score"
    run_score(ScoreConfig(data=str(text_jsonl), teacher=str(tiny_teacher_dir), student=str(tiny_student_dir), out=str(out),
                          dtype="float32", top_k=4))
    m = json.loads((out / "manifest.json").read_text())
    assert not {"teacher_store", "sample_count", "sample_scheme", "sample_seed"} & set(m["config"])
    size = sum((out / n).stat().st_size for n in read_artifact(out, "score").files("topk/"))
    assert m["figures"]["store_bytes_per_token"] == round(size / m["figures"]["store_positions"], 2)
    assert "sampled_distinct_per_token" not in m["figures"]
