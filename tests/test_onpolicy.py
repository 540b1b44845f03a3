"""On-policy distillation (GKD) in `distillkit train`: tiny in-process models, real score + plan stages.

λ = 0 is the off-policy path byte for byte; the student's greedy answers equal `transformers`
``generate``; the loss covers the answer tokens only; kill-and-resume at λ = 0.5 is bitwise; on-policy
training makes the student's own samples likelier under the teacher; bad settings exit 2 with one line.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from distillkit.artifacts import read_artifact
from distillkit.cli.main import app
from distillkit.pipelines.plan import PlanConfig
from distillkit.pipelines.plan import run as run_plan
from distillkit.pipelines.score import ScoreConfig
from distillkit.pipelines.score import run as run_score
from distillkit.pipelines.train import TrainConfig, run
from tests.conftest import kill_when, make_texts, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory, tiny_teacher_dir, tiny_student_dir):
    """Scores and 2-stage plans for prompt/response data (two domains) and for plain text."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("onpolicy")
    prompts, answers = make_texts(40, seed=31, min_words=4, max_words=10), make_texts(40, seed=32, min_words=4, max_words=10)
    inst = write_jsonl(root / "inst.jsonl", [{"prompt": p, "response": r, "domain": "qa" if i % 2 else "chat"}
                                             for i, (p, r) in enumerate(zip(prompts, answers))])
    text = write_jsonl(root / "text.jsonl", [{"text": t, "domain": "prose"} for t in make_texts(30, seed=33, min_words=15)])
    out = {"root": root, "teacher": tiny_teacher_dir, "student": tiny_student_dir}
    for name, data in (("inst", inst), ("text", text)):
        run_score(ScoreConfig(data=str(data), teacher=str(tiny_teacher_dir), student=str(tiny_student_dir),
                              out=str(root / f"score-{name}"), dtype="float32", max_length=48, gen_max_new_tokens=4))
        run_plan(PlanConfig(scores=str(root / f"score-{name}"), out=str(root / f"plan-{name}"), stages=2, stage_unit="steps",
                            stage_length=4))
        out[name] = root / f"plan-{name}"
    torch.set_num_threads(n)
    return out


def cfg_for(p, out, data="inst", **kw) -> TrainConfig:
    base = dict(plan=str(p[data]), teacher=str(p["teacher"]), student=str(p["student"]), out=str(out), batch_size=4,
                seq_len=48, lr=3e-3, save_every=0, log_every=100, eval_heldout=False, gen_max_new_tokens=12)
    return TrainConfig(**{**base, **kw})


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(out) / "student" / "model.safetensors")


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def metrics(out) -> dict[str, np.ndarray]:
    t = read_artifact(out, "train").table("metrics.arrow")
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def test_lambda_zero_is_the_off_policy_path_byte_for_byte(pipelines, tmp_path):
    run(cfg_for(pipelines, tmp_path / "plain", steps=6))
    run(cfg_for(pipelines, tmp_path / "zero", steps=6, on_policy=0.0, gen_max_new_tokens=5, gen_temperature=0.3))
    assert same_weights(tmp_path / "plain", tmp_path / "zero")
    assert not metrics(tmp_path / "zero")["on_policy"].any()
    # and λ > 0 does change the run (the answers are the student's, not the data's)
    run(cfg_for(pipelines, tmp_path / "one", steps=6, on_policy=1.0))
    assert not same_weights(tmp_path / "plain", tmp_path / "one")
    m = metrics(tmp_path / "one")
    assert m["on_policy"].all() and (m["kd_weight"] == 1.0).all()
    np.testing.assert_allclose(m["loss"], m["kd_loss"], rtol=1e-6)  # the divergence alone, no CE


def test_share_of_on_policy_steps_follows_lambda():
    from distillkit.training.onpolicy import OnPolicy

    op = OnPolicy(fraction=0.3, max_new_tokens=4, temperature=1.0, top_p=1.0, prompt_from="prompt", prefix_tokens=0,
                  seq_len=16, seed=5, pad_id=0, eos_ids=())
    share = np.mean([op.is_on_policy(s) for s in range(4000)])
    assert abs(share - 0.3) < 0.025
    assert [op.is_on_policy(s) for s in range(50)] == [op.is_on_policy(s) for s in range(50)]  # a function of (seed, step)
    assert not any(replace(op, fraction=0.0).is_on_policy(s) for s in range(50))
    assert all(replace(op, fraction=1.0).is_on_policy(s) for s in range(50))


def _inputs(pipelines, tmp_path, data="inst", **kw):
    from distillkit.pipelines.train import prepare
    from distillkit.training.distributed import DistInfo

    cfg = cfg_for(pipelines, tmp_path / "x", data=data, **kw)
    return cfg, prepare(cfg, DistInfo())


def test_greedy_answers_equal_transformers_generate_and_targets_are_the_answers(pipelines, tmp_path):
    from distillkit.evaluation.generation import eos_ids
    from distillkit.training.batches import IGNORE
    from distillkit.training.onpolicy import OnPolicy, student_batch

    cfg, inputs = _inputs(pipelines, tmp_path)
    model = inputs.student.eval()
    eos = tuple(eos_ids(model, inputs.tokenizer))
    op = OnPolicy(fraction=1.0, max_new_tokens=10, temperature=0.0, top_p=1.0, prompt_from="prompt", prefix_tokens=0,
                  seq_len=48, seed=0, pad_id=inputs.pad_id, eos_ids=eos)
    rows = [0, 3, 5, 8, 13]  # prompts of different lengths: the batch is left-padded
    assert len({int(inputs.seqs.target_start[i]) for i in rows}) > 1
    batch = student_batch(model, inputs.seqs, rows, op, step=0, rank=0, micro=0, device="cpu")
    for r, i in enumerate(rows):
        prompt = inputs.seqs.ids[i][: inputs.seqs.target_start[i]]
        with torch.no_grad():
            ref = model.generate(input_ids=torch.from_numpy(prompt)[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 do_sample=False, max_new_tokens=10, pad_token_id=inputs.pad_id)[0, len(prompt):].tolist()
        cut = next((j + 1 for j, t in enumerate(ref) if t in eos), len(ref))
        answer = ref[:cut]
        n = len(prompt) + len(answer)
        assert batch.input_ids[r, :n].tolist() == list(prompt) + answer
        assert batch.attention_mask[r].sum() == n
        labels = batch.labels[r].tolist()
        # position t predicts token t+1: exactly the answer tokens are targets, nothing of the prompt
        assert labels[len(prompt) - 1 : n - 1] == answer
        assert all(x == IGNORE for x in labels[: len(prompt) - 1] + labels[n - 1 :])
    assert batch.num_targets == sum(int((batch.labels[r] != IGNORE).sum()) for r in range(len(rows)))


class _ServedCopy:
    """An engine in `VllmAnswers`' place without vllm: a separate copy of the student that answers greedily with
    `transformers` and takes weights only through `load_weights`, as vLLM's served model does."""

    def __init__(self, model, pad_id):
        import copy

        self.served, self.pad_id, self.pushes = copy.deepcopy(model).eval(), pad_id, 0

    def load_weights(self, named):
        with torch.no_grad():
            params = dict(self.served.named_parameters())
            for name, t in named:
                params[name].copy_(t)
        self.pushes += 1

    def sample(self, prompts, max_new_tokens, *, seed, temperature, top_p, eos_ids):
        from distillkit.evaluation.generation import sample_answers

        assert temperature == 0.0
        return sample_answers(self.served, prompts, seed=seed, max_new_tokens=max_new_tokens, temperature=0.0,
                              batch_size=len(prompts), pad_id=self.pad_id, eos_ids=eos_ids, keep_eos=True)


def test_a_separate_engine_answers_with_weights_at_most_refresh_every_minus_one_steps_old(pipelines, tmp_path):
    """`VllmAnswers` pushes the training model's weights when the engine's are `refresh_every` steps old (and on
    its first use, as after a resume); in between, the answers are those of the weights last pushed."""
    from distillkit.evaluation.generation import eos_ids
    from distillkit.training.onpolicy import HFAnswers, OnPolicy, VllmAnswers

    cfg, inputs = _inputs(pipelines, tmp_path)
    model = inputs.student.eval()
    op = OnPolicy(fraction=1.0, max_new_tokens=10, temperature=0.0, top_p=1.0, prompt_from="prompt", prefix_tokens=0,
                  seq_len=48, seed=0, pad_id=inputs.pad_id, eos_ids=tuple(eos_ids(model, inputs.tokenizer)))
    prompts = [op.prompt(inputs.seqs, i).tolist() for i in (0, 3, 5, 8)]
    engine = _ServedCopy(model, inputs.pad_id)
    with torch.no_grad():  # the engine starts from other weights than the trainer's: only a push can align them
        for p in engine.served.parameters():
            p.add_(torch.randn_like(p))

    def hf(m):
        return HFAnswers().answers(m, prompts, op, step=0, seed=0, device="cpu", autocast=None)

    src = VllmAnswers(engine, refresh_every=2)
    got = {step: None for step in range(5)}
    history = []
    for step in range(5):
        got[step] = src.answers(model, prompts, op, step=step, seed=0, device="cpu", autocast=None)
        history.append(hf(model))  # what the current weights answer
        with torch.no_grad():  # an optimizer step that changes the answers
            model.lm_head.weight.add_(0.5 * torch.randn_like(model.lm_head.weight))
    assert engine.pushes == src.refreshes == 3 and src.synced_step == 4  # pushed at steps 0, 2, 4
    assert got[0] == history[0] and got[2] == history[2] and got[4] == history[4]
    assert got[1] == history[0] and got[3] == history[2]  # one step stale, as allowed
    assert history[1] != history[0]  # the stale answers really are the old weights'
    assert src.refresh_s > 0
    fresh = VllmAnswers(engine, refresh_every=2)  # a resumed run: the first use pushes whatever the step
    assert fresh.due(7) and fresh.answers(model, prompts, op, step=7, seed=0, device="cpu", autocast=None) == hf(model)
    with pytest.raises(ValueError, match="refresh_every must be >= 1"):
        VllmAnswers(engine, refresh_every=0)


def test_bf16_generation_keeps_autocasts_weight_cache(pipelines, tmp_path, monkeypatch):
    """Under bf16 autocast the student generates with grad off but *not* in inference mode, which would turn off
    autocast's cache of the bf16 weight casts (every decode step re-casting every weight: 2.8x slower decode on the
    demo student, docs/train.md); the tokens equal those of a run that re-casts (inference mode)."""
    from distillkit.training.onpolicy import OnPolicy, student_batch

    cfg, inputs = _inputs(pipelines, tmp_path)
    op = OnPolicy(fraction=1.0, max_new_tokens=6, temperature=1.0, top_p=1.0, prompt_from="prompt", prefix_tokens=0,
                  seq_len=48, seed=5, pad_id=inputs.pad_id, eos_ids=())
    model, modes = inputs.student, []
    real = type(model).generate

    def spy(self, *a, **kw):
        modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return real(self, *a, **kw)

    monkeypatch.setattr(type(model), "generate", spy)
    fast = student_batch(model, inputs.seqs, [1, 2, 3], op, step=0, rank=0, micro=0, device="cpu", autocast=torch.bfloat16)
    assert modes == [(False, False, True)]
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *a: False)  # the old path: inference mode, no cache
    slow = student_batch(model, inputs.seqs, [1, 2, 3], op, step=0, rank=0, micro=0, device="cpu", autocast=torch.bfloat16)
    assert modes[1][0] is True and torch.equal(fast.input_ids, slow.input_ids)
    monkeypatch.undo()
    student_batch(model, inputs.seqs, [1], op, step=0, rank=0, micro=0, device="cpu")  # fp32: inference mode as before


def test_sampled_answers_depend_only_on_seed_and_step_and_leave_the_global_rng(pipelines, tmp_path):
    from distillkit.training.onpolicy import OnPolicy, student_batch

    cfg, inputs = _inputs(pipelines, tmp_path)
    op = OnPolicy(fraction=1.0, max_new_tokens=8, temperature=1.0, top_p=0.9, prompt_from="prompt", prefix_tokens=0,
                  seq_len=48, seed=3, pad_id=inputs.pad_id, eos_ids=())
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = student_batch(inputs.student, inputs.seqs, [1, 2, 3], op, step=7, rank=0, micro=0, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), before)
    b = student_batch(inputs.student, inputs.seqs, [1, 2, 3], op, step=7, rank=0, micro=0, device="cpu")
    c = student_batch(inputs.student, inputs.seqs, [1, 2, 3], op, step=8, rank=0, micro=0, device="cpu")
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)


def test_plain_text_continues_a_prefix(pipelines, tmp_path):
    from distillkit.training.onpolicy import OnPolicy, student_batch

    cfg, inputs = _inputs(pipelines, tmp_path, data="text", prefix_tokens=6, on_policy=1.0)
    assert inputs.data_format == "text"
    op = OnPolicy(fraction=1.0, max_new_tokens=5, temperature=1.0, top_p=1.0, prompt_from="prefix", prefix_tokens=6,
                  seq_len=48, seed=0, pad_id=inputs.pad_id, eos_ids=())
    batch = student_batch(inputs.student, inputs.seqs, [0, 1], op, step=0, rank=0, micro=0, device="cpu")
    assert batch.input_ids[:, :6].tolist() == [inputs.seqs.ids[0][:6].tolist(), inputs.seqs.ids[1][:6].tolist()]
    assert batch.num_targets == 2 * 5  # no EOS given: every answer runs to max_new_tokens
    run(cfg_for(pipelines, tmp_path / "text-run", data="text", steps=3, on_policy=1.0, prefix_tokens=6, gen_max_new_tokens=5))
    assert metrics(tmp_path / "text-run")["on_policy"].all()


def _teacher_nll_of_student_samples(student, teacher, prompts, pad_id, seeds=(1, 2, 3)) -> float:
    """Mean teacher NLL per token of the student's sampled answers (8 new tokens, T = 1), over a few seeds."""
    from distillkit.evaluation.generation import sample_answers

    total, n = 0.0, 0
    for seed in seeds:
        answers = sample_answers(student, prompts, seed=seed, max_new_tokens=8, batch_size=len(prompts), pad_id=pad_id)
        with torch.no_grad():
            for p, a in zip(prompts, answers):
                x = torch.tensor([list(p) + a])
                lp = torch.log_softmax(teacher(x).logits[0, len(p) - 1 : -1].float(), -1)
                total -= float(lp.gather(-1, torch.tensor(a)[:, None]).sum())
                n += len(a)
    return total / n


def test_on_policy_training_makes_the_students_samples_likelier_under_the_teacher(pipelines, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "gkd"
    run(cfg_for(pipelines, out, steps=30, on_policy=1.0, loss="rkl", gen_max_new_tokens=8, lr=5e-3))
    cfg, inputs = _inputs(pipelines, tmp_path)
    prompts = [inputs.seqs.ids[i][: inputs.seqs.target_start[i]].tolist() for i in range(0, 40, 2)]
    teacher = AutoModelForCausalLM.from_pretrained(pipelines["teacher"]).eval()
    before = AutoModelForCausalLM.from_pretrained(pipelines["student"]).eval()
    after = AutoModelForCausalLM.from_pretrained(out / "student").eval()
    nll_before = _teacher_nll_of_student_samples(before, teacher, prompts, inputs.pad_id)
    nll_after = _teacher_nll_of_student_samples(after, teacher, prompts, inputs.pad_id)
    assert nll_after < nll_before - 0.05, (nll_before, nll_after)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_killed_run_at_half_on_policy_resumes_bitwise(pipelines, tmp_path):
    cfg = cfg_for(pipelines, tmp_path / "killed", steps=24, save_every=4, on_policy=0.5, gen_max_new_tokens=10)
    args = ["train", "--plan", cfg.plan, "--teacher", cfg.teacher, "--student", cfg.student, "--out", cfg.out,
            "--batch-size", "4", "--seq-len", "48", "--lr", str(cfg.lr), "--steps", "24", "--save-every", "4",
            "--set", "eval_heldout=false", "--set", "log_every=100", "--set", "on_policy=0.5", "--set", "gen_max_new_tokens=10"]
    ckpts = tmp_path / "killed.partial" / "checkpoints"
    kill_when(args, lambda: any(ckpts.glob("step-*")), env=_env(), cwd=ROOT, timeout=180)
    run(cfg, resume=True)
    assert read_artifact(tmp_path / "killed", "train").manifest["figures"]["resumed_from_step"] in range(4, 24, 4)
    run(replace(cfg, out=str(tmp_path / "reference")))
    assert same_weights(tmp_path / "killed", tmp_path / "reference")
    ma, mb = metrics(tmp_path / "killed"), metrics(tmp_path / "reference")
    assert np.array_equal(ma["loss"], mb["loss"]) and np.array_equal(ma["on_policy"], mb["on_policy"])
    assert 0 < ma["on_policy"].sum() < 24  # both kinds of step happened


@pytest.mark.parametrize("args, message", [
    (["--set", "on_policy=1", "--set", "gen_max_new_tokens=8"], "needs --prefix-tokens"),
    (["--set", "on_policy=1", "--set", "gen_max_new_tokens=48"], "gen_max_new_tokens (48) must be below seq_len (48)"),
    (["--set", "on_policy=1", "--set", "prefix_tokens=40", "--set", "gen_max_new_tokens=10"], "must fit seq_len"),
    (["--set", "on_policy=1", "--set", "prefix_tokens=4", "--set", "gen_max_new_tokens=8", "--set", "teacher_mode=offline"],
     "needs teacher_mode = 'online'"),
    (["--set", "on_policy=1.5"], "on_policy must be in [0, 1]"),
    (["--set", "on_policy=1", "--set", "prefix_tokens=4", "--set", "gen_refresh_every=0"], "gen_refresh_every must be >= 1"),
])
def test_bad_on_policy_settings_exit_2_with_one_line(pipelines, tmp_path, args, message):
    out = tmp_path / "bad"
    r = runner.invoke(app, ["train", "--plan", str(pipelines["text"]), "--teacher", str(pipelines["teacher"]), "--student",
                            str(pipelines["student"]), "--out", str(out), "--seq-len", "48", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not out.exists() and not Path(str(out) + ".partial").exists()


@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_generation_without_vllm_exits_2_naming_the_fix(pipelines, tmp_path):
    out = tmp_path / "novllm"
    r = runner.invoke(app, ["train", "--plan", str(pipelines["inst"]), "--teacher", str(pipelines["teacher"]), "--student",
                            str(pipelines["student"]), "--out", str(out), "--seq-len", "48", "--set", "on_policy=1",
                            "--set", "gen_max_new_tokens=8", "--set", "gen_engine=vllm"])
    assert r.exit_code == 2, r.output
    assert "gen_engine = 'vllm' needs the vllm package" in r.output and "--gen-engine hf" in r.output
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_vllm_generation_is_refused_under_torchrun(pipelines, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "ddp"
    r = runner.invoke(app, ["train", "--plan", str(pipelines["inst"]), "--teacher", str(pipelines["teacher"]), "--student",
                            str(pipelines["student"]), "--out", str(out), "--seq-len", "48", "--set", "on_policy=1",
                            "--set", "gen_max_new_tokens=8", "--set", "gen_engine=vllm"])
    assert r.exit_code == 2, r.output
    assert "gen_engine = 'vllm' runs in one process" in r.output
    assert not out.exists()


def test_vllm_kv_cache_is_sized_to_one_generation_call(tmp_path):
    """2 layers × K,V × 2 KV heads × head_dim 16 = 128 values per token; 3 sequences of 129 tokens round up to
    2 blocks of 128 each; twice over. fp32: 2 × 3 × 256 × 128 × 4 B; bf16 half of it."""
    import json

    from distillkit.engines.vllm import kv_cache_bytes  # no vllm import needed: reads config.json

    (tmp_path / "config.json").write_text(json.dumps(
        {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64}))
    assert kv_cache_bytes(str(tmp_path), "float32", 3, 129) == 2 * 3 * 256 * 128 * 4 == 786_432
    assert kv_cache_bytes(str(tmp_path), "bfloat16", 3, 129) == 393_216
    assert kv_cache_bytes(str(tmp_path), "float32", 3, 128) == 2 * 3 * 128 * 128 * 4
