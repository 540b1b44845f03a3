"""Sequence packing (`collate(..., pack=True)`, `train --pack`): the same per-sample losses and gradients
as the padded batch, on fewer padded positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillkit.losses import LinearHead, LossSpec, TopKTeacher
from distillkit.training.batches import IGNORE, Sequences, collate, pack_bins, padded_slots
from distillkit.training.student import StudentLoss


def test_pack_bins_first_fit_decreasing_known_answer():
    assert pack_bins([5, 3, 4, 2, 6], 6) == [[4], [0], [2, 3], [1]]
    assert pack_bins([2, 2, 2, 2], 4) == [[0, 1], [2, 3]]
    assert pack_bins([7, 1], 4) == [[0], [1]]  # too long for the capacity: a bin of its own
    bins = pack_bins(list(np.random.default_rng(0).integers(2, 50, 40)), 50)
    assert sorted(i for b in bins for i in b) == list(range(40))


def _seqs(lengths, starts=None, vocab=50, seed=0) -> Sequences:
    rng = np.random.default_rng(seed)
    ids = [rng.integers(4, vocab, n).astype(np.int64) for n in lengths]
    start = np.asarray(starts if starts is not None else [1] * len(lengths), dtype=np.int64)
    return Sequences([f"s{i}" for i in range(len(lengths))], ["d"] * len(lengths), ids, start,
                     np.array([n - s for n, s in zip(lengths, start)], dtype=np.int64))


class _FakeStore:
    """A TopKStore stand-in: sample i's rows are deterministic functions of (i, position)."""

    k = 3

    def __init__(self, seqs):
        self.seqs = seqs

    def rows(self, i):
        n = len(self.seqs.ids[i]) - 1
        ids = (np.arange(n)[:, None] * 7 + np.arange(self.k)[None, :] + i) % 50
        lp = -np.log(self.k) - 0.01 * (np.arange(n)[:, None] + np.arange(self.k)[None, :] + i)
        return ids.astype(np.int64), lp.astype(np.float32)


def _segments(seqs: Sequences, batch) -> list[tuple[int, int, int]]:
    """(batch row, offset, sample) of every sample in a collated batch, found by its tokens."""
    pos = batch.position_ids
    if pos is None:
        pos = torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids)
    out = []
    for r in range(batch.input_ids.shape[0]):
        p = pos[r].numpy()
        starts = list(np.flatnonzero(p == 0)) + [len(p)]
        for o, e in zip(starts, starts[1:]):
            n = int(batch.attention_mask[r, o:e].sum())
            if n == 0:
                continue  # the padding segment
            (i,) = [i for i in range(len(seqs)) if len(seqs.ids[i]) == n
                    and np.array_equal(seqs.ids[i], batch.input_ids[r, o : o + n].numpy())]
            out.append((r, int(o), i))
    return out


def test_packed_batch_lays_each_sample_with_its_own_positions_labels_and_teacher_rows():
    seqs = _seqs([9, 4, 5, 3, 6], starts=[1, 2, 1, 1, 3])
    store = _FakeStore(seqs)
    plain = collate(seqs, range(5), 0, "cpu", store)
    packed = collate(seqs, range(5), 0, "cpu", store, pack=True)
    assert plain.position_ids is None and packed.position_ids is not None
    assert tuple(packed.input_ids.shape) == (3, 9)  # bins [9], [5, 4], [6, 3]: no padding left
    assert packed.num_targets == plain.num_targets == int(sum(seqs.num_targets))
    assert int(packed.attention_mask.sum()) == int(plain.attention_mask.sum()) == 27
    assert padded_slots(seqs, range(5)) == 45 and padded_slots(seqs, range(5), pack=True) == 27
    where = _segments(seqs, packed)
    assert sorted(i for _, _, i in where) == list(range(5))
    for r, o, i in where:
        n, a = len(seqs.ids[i]), int(seqs.target_start[i])
        assert np.array_equal(packed.position_ids[r, o : o + n].numpy(), np.arange(n))
        lab = packed.labels[r, o : o + n].numpy()
        assert (lab[: a - 1] == IGNORE).all() and lab[-1] == IGNORE  # the last token predicts nothing
        assert np.array_equal(lab[a - 1 : n - 1], seqs.ids[i][a:])
        ids_i, lp_i = store.rows(i)
        assert np.array_equal(packed.topk_ids[r, o : o + n - 1].numpy(), ids_i)
        assert np.allclose(packed.topk_logprobs[r, o : o + n - 1].numpy(), lp_i)


def _tiny_student(attn: str, vocab: int = 50, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg)


def _token_logprobs(model, seqs: Sequences, batch) -> dict[tuple[int, int], float]:
    """{(sample, position in the sample): log p(its label)} of a collated batch."""
    hidden = model.get_decoder()(**batch.model_inputs()).last_hidden_state
    lp = torch.log_softmax(model.lm_head(hidden).double(), -1)
    out = {}
    for r, o, i in _segments(seqs, batch):
        for t in range(len(seqs.ids[i])):
            y = int(batch.labels[r, o + t])
            if y != IGNORE:
                out[(i, t)] = float(lp[r, o + t, y])
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_per_sample_token_losses_equal_the_padded_ones(attn):
    """Every target token's log-prob, sample by sample: packed, padded, and each sample alone."""
    seqs = _seqs([12, 5, 7, 3, 9, 4], starts=[1, 1, 2, 1, 1, 3], seed=1)
    model = _tiny_student(attn).eval()
    with torch.no_grad():
        plain = _token_logprobs(model, seqs, collate(seqs, range(6), 0, "cpu"))
        packed_batch = collate(seqs, range(6), 0, "cpu", pack=True)
        assert packed_batch.input_ids.shape[0] < 6
        packed = _token_logprobs(model, seqs, packed_batch)
        alone = {}
        for i in range(6):
            alone |= _token_logprobs(model, seqs, collate(seqs, [i], 0, "cpu"))
    assert plain.keys() == packed.keys() == alone.keys() and len(plain) == int(seqs.num_targets.sum())
    keys = sorted(plain)
    assert np.allclose([packed[k] for k in keys], [plain[k] for k in keys], atol=1e-6)
    assert np.allclose([packed[k] for k in keys], [alone[k] for k in keys], atol=1e-6)


@pytest.mark.parametrize("teacher_kind", ["online", "offline"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_step_gives_the_padded_loss_and_gradients(attn, teacher_kind):
    seqs = _seqs([14, 6, 9, 3, 11, 5, 8, 4], starts=[1, 2, 1, 1, 4, 1, 1, 2], seed=2)
    student = _tiny_student(attn)
    spec = LossSpec("fkl", {}, "pocl", "chunked", vocab_size=50, chunk_size=16)
    module = StudentLoss(student, spec)
    teacher_model = _tiny_student(attn) if teacher_kind == "online" else None
    if teacher_model is not None:
        with torch.no_grad():
            for p in teacher_model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    store = _FakeStore(seqs) if teacher_kind == "offline" else None

    def step(pack: bool):
        student.zero_grad(set_to_none=True)
        batch = collate(seqs, range(len(seqs)), 0, "cpu", store, pack=pack)
        if teacher_model is None:
            teacher = TopKTeacher(batch.topk_ids, batch.topk_logprobs)
        else:
            with torch.no_grad():
                h = teacher_model.get_decoder()(**batch.model_inputs()).last_hidden_state
            teacher = LinearHead(h, teacher_model.lm_head.weight, None)
        loss, kd, ce = module(batch, teacher, temperature=1.5, kd_weight=0.6)
        loss.backward()
        return [float(loss.detach()), float(kd), float(ce)], {n: p.grad.clone() for n, p in student.named_parameters()}, batch

    vals_a, grads_a, plain = step(False)
    vals_b, grads_b, packed = step(True)
    assert packed.input_ids.numel() < plain.input_ids.numel()
    assert np.allclose(vals_a, vals_b, rtol=1e-5, atol=1e-6)
    for n in grads_a:
        assert torch.allclose(grads_a[n], grads_b[n], rtol=1e-4, atol=1e-6), n


def test_packed_heldout_measurement_matches_padded():
    from distillkit.training.ddk import measure_heldout
    from distillkit.training.distributed import DistInfo

    seqs = _seqs([14, 6, 9, 3, 11, 5, 8, 4], seed=3)
    student = _tiny_student("sdpa")
    module = StudentLoss(student, LossSpec("fkl", {}, "pocl", "chunked", vocab_size=50, chunk_size=16))
    dist = DistInfo()  # one process on cpu
    kw = dict(batch_size=4, pad_id=0, device="cpu", dist=dist)
    plain = measure_heldout(module, seqs, [[0, 1, 2, 3], [4, 5, 6, 7]], ["a", "b"], **kw)
    packed = measure_heldout(module, seqs, [[0, 1, 2, 3], [4, 5, 6, 7]], ["a", "b"], pack=True, **kw)
    assert np.array_equal(plain.tokens, packed.tokens)
    assert np.allclose(plain.student_ppl, packed.student_ppl, rtol=1e-6)


# --- `train --pack` end to end on a tiny score + plan of uneven lengths -------------------------------------

@pytest.fixture(scope="module")
def uneven(tmp_path_factory, tiny_teacher_dir, tiny_student_dir):
    """Score + plan over texts of 2-40 words (max_length 64), so that micro-batches really pack."""
    from tests.conftest import make_texts, write_jsonl

    from distillkit.pipelines.plan import PlanConfig
    from distillkit.pipelines.plan import run as run_plan
    from distillkit.pipelines.score import ScoreConfig
    from distillkit.pipelines.score import run as run_score

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pack")
    rows = [{"text": t, "domain": d} for d, seed in (("alpha", 30), ("beta", 31))
            for t in make_texts(24, seed=seed, min_words=2, max_words=40)]
    data = write_jsonl(root / "data.jsonl", rows)
    run_score(ScoreConfig(data=str(data), teacher=str(tiny_teacher_dir), student=str(tiny_student_dir),
                          out=str(root / "score"), dtype="float32", max_length=64, top_k=8))
    run_plan(PlanConfig(scores=str(root / "score"), out=str(root / "plan"), stage_unit="steps", stage_length=3))
    torch.set_num_threads(n)
    return {"root": root, "plan": root / "plan", "scores": root / "score", "teacher": tiny_teacher_dir,
            "student": tiny_student_dir}


def _train_cfg(p, out, **kw):
    from distillkit.pipelines.train import TrainConfig

    base = dict(plan=str(p["plan"]), teacher=str(p["teacher"]), student=str(p["student"]), out=str(out), batch_size=4,
                seq_len=64, lr=3e-3, save_every=0, log_every=100, steps=4, precision="fp32", mixture="static")
    return TrainConfig(**{**base, **kw})


# on-policy: every step generates (λ = 1) from a prefix of up to 40 tokens (shorter documents: shorter
# prefixes, so the batches have uneven lengths); 2 steps, so the second step's samples come from
# weights that differ between the two runs only in float order (a flipped sample would need a draw within ~1e-7
# of a boundary)
ON_POLICY = dict(teacher_mode="online", on_policy=1.0, prefix_tokens=40, gen_max_new_tokens=12, steps=2)


@pytest.mark.parametrize("mode", ["online", "offline", "on-policy"])
def test_packed_training_follows_the_padded_run(uneven, tmp_path, one_thread, mode, monkeypatch):
    """Same draws, same losses step by step, same held-out figures and (to float order) the same weights, on
    micro-batches that really pack (fewer padded positions than padding); on-policy batches (the student's
    answers, of uneven lengths) pack the same way."""
    from safetensors.torch import load_file

    from distillkit.artifacts import read_artifact
    from distillkit.pipelines.train import run

    from distillkit.training import onpolicy

    kw = ON_POLICY if mode == "on-policy" else {"teacher_mode": mode}
    shapes, real = [], onpolicy.student_batch

    def spy(model, seqs, rows, *a, **k):  # (answers, rows of the batch) of every on-policy batch
        b = real(model, seqs, rows, *a, **k)
        shapes.append((len(rows), b.input_ids.shape[0]))
        return b

    monkeypatch.setattr(onpolicy, "student_batch", spy)
    run(_train_cfg(uneven, tmp_path / "plain", **kw))
    assert all(n == r for n, r in shapes)
    shapes.clear()
    run(_train_cfg(uneven, tmp_path / "packed", pack=True, **kw))
    assert (mode != "on-policy") == (shapes == []) and all(r <= n for n, r in shapes)
    assert mode != "on-policy" or any(r < n for n, r in shapes), shapes  # the answers really packed
    a, b = (read_artifact(tmp_path / n, "train") for n in ("plain", "packed"))
    ma, mb = a.table("metrics.arrow"), b.table("metrics.arrow")
    for key in ("loss", "kd_loss", "ce_loss", "tokens"):
        np.testing.assert_allclose(ma.column(key).to_numpy(), mb.column(key).to_numpy(), rtol=2e-5, err_msg=key)
    assert a.table("batches.arrow").equals(b.table("batches.arrow"))
    ha, hb = a.table("heldout.arrow").to_pylist(), b.table("heldout.arrow").to_pylist()
    for ra, rb in zip(ha, hb):
        assert ra["student_ppl_before"] == pytest.approx(rb["student_ppl_before"], rel=1e-6)
        assert ra["student_ppl_after"] == pytest.approx(rb["student_ppl_after"], rel=1e-4)
        assert ra["kl_after"] == pytest.approx(rb["kl_after"], rel=1e-3)
    wa, wb = load_file(a.path / "student" / "model.safetensors"), load_file(b.path / "student" / "model.safetensors")
    for n in wa:
        torch.testing.assert_close(wa[n], wb[n], rtol=1e-4, atol=1e-5)
    assert b.manifest["config"]["pack"] is True and "pack" not in a.manifest["config"]  # off: not in the identity


def test_pack_refused_with_a_transformers_that_cannot_mask_packed_rows(pipeline, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from distillkit.cli.main import app
    from distillkit.training import batches

    monkeypatch.setattr(batches, "packing_supported", lambda: False)
    p = pipeline
    res = CliRunner().invoke(app, ["train", "--plan", str(p["plan"]), "--teacher", str(p["teacher"]), "--student",
                                   str(p["student"]), "--out", str(tmp_path / "t"), "--steps", "1", "--pack"])
    assert res.exit_code == 2, res.output
    assert "--pack needs transformers >= 4.54" in res.output and "drop --pack" in res.output
    assert not (tmp_path / "t").exists()
