"""Distilling into an already-trained student: the defaults must not make it worse in the first steps,
and train's early held-out check says so when a setting does.

The student here is *trained* (plain torch, to the end of a cosine schedule) on text from per-domain
Markov chains; the teacher is a larger model trained on the same source. Held-out losses are measured
with plain transformers forwards, not with the code under test. docs/train.md, "Starting from a trained
student", has the measurements this setup gave.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from tests.conftest import WORDS, build_model, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread for this module

SEQ_LEN = 48
DOMAINS = ("alpha", "beta", "gamma")


def markov_texts(n: int, domain: int, seed: int) -> list[str]:
    """Text from domain `domain`'s word-level Markov chain (each word has 4 likely successors)."""
    chain = random.Random(1000 + domain)
    succ = {w: chain.sample(WORDS, 4) for w in WORDS}
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w, words = rng.choice(WORDS), []
        for _ in range(rng.randint(15, 35)):
            words.append(w)
            w = rng.choice(succ[w]) if rng.random() < 0.9 else rng.choice(WORDS)
        out.append(" ".join(words) + ".")
    return out


def pretrain(model_dir: Path, texts: list[str], steps: int, lr: float, batch: int = 16, seed: int = 0) -> None:
    """Train `model_dir`'s model in place on `texts` with plain CE: AdamW, warmup then cosine to lr/100."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = [tok(t)["input_ids"][:SEQ_LEN] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warm = max(steps // 20, 1)

    def factor(s: int) -> float:
        return min((s + 1) / warm, 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * s / steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        rows = [ids[i] for i in torch.randint(len(ids), (batch,), generator=g).tolist()]
        x, mask = _pad(rows, tok.pad_token_id)
        labels = x.masked_fill(mask == 0, -100)
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.save_pretrained(model_dir)


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    x = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return x, mask


def heldout(student, teacher, ids: list[list[int]]) -> dict[str, float]:
    """Mean student NLL and KL(teacher || student) per target token, with plain transformers forwards."""
    nll = kl = 0.0
    n = 0
    with torch.no_grad():
        for row in ids:
            x = torch.tensor([row])
            q = torch.log_softmax(student(x).logits[0, :-1].double(), -1)
            p = torch.log_softmax(teacher(x).logits[0, :-1].double(), -1)
            nll -= float(q.gather(-1, x[0, 1:, None]).sum())
            kl += float((p.exp() * (p - q)).sum())
            n += len(row) - 1
    return {"nll": nll / n, "kl": kl / n}


def build_trained(root: Path, tok_dir: Path) -> dict[str, Path]:
    """A trained teacher (2 layers, 64 wide) and a trained student (1 layer, 32 wide), the distillation data
    (3 domains x 40 documents, 20 % held out) and a plan from `distillkit score` + `distillkit plan` at defaults."""
    from distillkit.data_options import DataOptions
    from distillkit.pipelines.plan import PlanConfig
    from distillkit.pipelines.plan import run as run_plan
    from distillkit.pipelines.score import ScoreConfig
    from distillkit.pipelines.score import run as run_score

    pre = [t for d in range(len(DOMAINS)) for t in markov_texts(400, d, seed=100 + d)]
    teacher = build_model(root / "teacher", tok_dir, layers=2, hidden=64, seed=1)
    student = build_model(root / "student", tok_dir, layers=1, hidden=32, seed=2)
    pretrain(teacher, pre, steps=250, lr=5e-3, seed=1)
    pretrain(student, pre, steps=400, lr=3e-3, seed=2)
    rows = [{"text": t, "domain": name} for d, name in enumerate(DOMAINS) for t in markov_texts(40, d, seed=200 + d)]
    data = write_jsonl(root / "data.jsonl", rows)
    run_score(ScoreConfig(data=str(data), teacher=str(teacher), student=str(student), out=str(root / "score"), dtype="float32",
                          max_length=SEQ_LEN, data_opts=DataOptions(val_fraction=0.2)))
    run_plan(PlanConfig(scores=str(root / "score"), out=str(root / "plan")))
    return {"root": root, "teacher": teacher, "student": student, "data": data, "plan": root / "plan"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tok_dir):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_trained(tmp_path_factory.mktemp("trained"), tiny_tok_dir)
    finally:
        torch.set_num_threads(n)


def cfg_for(p, out, **kw):
    from distillkit.pipelines.train import TrainConfig

    return TrainConfig(**{"plan": str(p["plan"]), "teacher": str(p["teacher"]), "student": str(p["student"]), "out": str(out),
                          "log_every": 1000, **kw})


def fresh_heldout_ids(p) -> list[list[int]]:
    """Documents from the same source that neither the student's training nor the distillation data holds."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(p["student"])
    return [tok(t)["input_ids"][:SEQ_LEN] for d in range(len(DOMAINS)) for t in markov_texts(8, d, seed=300 + d)]


def per_step_heldout(p, out: Path, steps: tuple[int, ...] | None = None) -> dict[int, dict[str, float]]:
    """Held-out NLL and KL of the student before training (step 0) and after each optimizer step (or `steps`),
    from the run's per-step checkpoints."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(p["teacher"]).eval()
    student = AutoModelForCausalLM.from_pretrained(p["student"]).eval()
    ids = fresh_heldout_ids(p)
    rows = {0: heldout(student, teacher, ids)}  # the trained student as it came
    for ck in sorted((Path(out) / "checkpoints").glob("step-*")):
        step = int(ck.name.removeprefix("step-"))
        if steps is None or step in steps:
            state = torch.load(ck / "model.pt", weights_only=True)
            student.load_state_dict({k.removeprefix("student."): v for k, v in state.items()})
            rows[step] = heldout(student, teacher, ids)
    return rows


def manifest(out: Path) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("run_kw", [{}, {"batch_size": 2, "steps": 6}], ids=["plan-length", "issue-run"])
def test_defaults_do_not_make_a_trained_student_worse(trained, tmp_path, run_kw, capfd):
    """At the defaults (lr, warm-up, the plan's λ and T) the held-out KL and NLL do not rise over the first steps:
    the plan's own length at the default batch (30 steps), and the issue's run (batch 2, 6 steps)."""
    from distillkit.pipelines.train import run

    out = tmp_path / "train"
    run(cfg_for(trained, out, save_every=1, keep_checkpoints=100, **run_kw))  # every step's weights, to measure here
    m = manifest(out)
    assert m["train"]["lr"]["peak"] == 1e-5 and "already close to its teacher" in m["train"]["lr"]["why"]
    assert "train: lr 1e-5 (default for a student already close" in " ".join(capfd.readouterr().err.split())
    rows = per_step_heldout(trained, out)
    assert sorted(rows) == list(range(1 + (run_kw.get("steps") or 30)))
    first = rows.pop(0)
    for step, r in rows.items():
        assert r["kl"] <= first["kl"] * (1 + 1e-4) and r["nll"] <= first["nll"] * (1 + 1e-4), (step, first, r)
    assert not m["figures"]["early_check"]["rose"], m["figures"]["early_check"]
    if run_kw:
        return
    # The old default, lr 1e-4 (right for a pruned student), makes the same trained student worse from the first
    # steps, and the early check says so.
    run(cfg_for(trained, tmp_path / "old", lr=1e-4, save_every=1, keep_checkpoints=100))
    old = per_step_heldout(trained, tmp_path / "old", steps=(10, 30))
    assert min(old[10]["kl"], old[30]["kl"]) > first["kl"] * 1.002, (first, old)
    check = manifest(tmp_path / "old")["figures"]["early_check"]
    assert check["rose"] and check["step"] == 10 and check["metric"] == "kl", check


def test_a_too_high_lr_is_caught_by_the_early_check(trained, tmp_path, capfd):
    """lr 0.05 without warm-up wrecks the trained student: one warning line after step 10, the record in the
    manifest, and the run goes on to the end."""
    from distillkit.pipelines.train import run

    out = tmp_path / "train"
    run(cfg_for(trained, out, lr=0.05, warmup_fraction=0.0, steps=12, save_every=0))
    err = " ".join(capfd.readouterr().err.split())
    assert "warning: held-out KL to the teacher rose from 0.2" in err and "over the first 10 steps (3 of 3 domains rose)" in err
    assert "lower --lr (this run: 0.05; e.g. 1e-5" in err and err.count("warning:") == 1
    f = manifest(out)["figures"]
    check = f["early_check"]
    assert check["rose"] and check["step"] == 10 and check["metric"] == "kl" and check["domains_rose"] == list(DOMAINS)
    assert check["after"] > 2 * check["before"] and check["before"] == pytest.approx(f["heldout"]["overall_kl"]["before"])
    assert f["steps"] == 12  # warned, and trained on


def test_early_check_stop_exits_1_and_keeps_the_checkpoint(trained, tmp_path):
    from typer.testing import CliRunner

    from distillkit.cli.main import app

    out = tmp_path / "train"
    r = CliRunner().invoke(app, ["train", "--plan", str(trained["plan"]), "--teacher", str(trained["teacher"]), "--student",
                                 str(trained["student"]), "--out", str(out), "--lr", "0.05", "--set", "warmup_fraction=0",
                                 "--steps", "12", "--early-check", "4", "--early-check-stop"])
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "stopped after the early held-out check" in lines[0] and "over the first 4 steps" in lines[0]
    assert "is kept" in lines[0] and "--resume" in lines[0]
    assert not out.exists() and (tmp_path / "train.partial" / "checkpoints" / "step-00000004" / "model.pt").is_file()


def test_the_check_does_not_change_training(trained, tmp_path):
    """Bitwise the same weights, losses, batches and RNG state with the check (after step 3) and without it."""
    from safetensors.torch import load_file

    from distillkit.artifacts import read_artifact
    from distillkit.pipelines.train import run

    kw = dict(lr=1e-3, steps=6, save_every=0, mixture="ddk", ddk_interval=2)
    run(cfg_for(trained, tmp_path / "with", early_check=3, **kw))
    run(cfg_for(trained, tmp_path / "without", early_check=0, **kw))
    assert manifest(tmp_path / "with")["figures"]["early_check"]["step"] == 3
    assert "early_check" not in manifest(tmp_path / "without")["figures"]
    a, b = (load_file(tmp_path / x / "student" / "model.safetensors") for x in ("with", "without"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ta, tb = (read_artifact(tmp_path / x, "train") for x in ("with", "without"))
    for name in ("batches.arrow", "mixture.arrow"):
        assert ta.table(name).equals(tb.table(name)), name
    ma, mb = ta.table("metrics.arrow"), tb.table("metrics.arrow")
    for c in ("loss", "kd_loss", "ce_loss", "grad_norm", "lr"):
        assert ma.column(c).equals(mb.column(c)), c
    ra, rb = (torch.load(tmp_path / x / "checkpoints" / "step-00000006" / "trainer.pt", weights_only=True)["rng"]
              for x in ("with", "without"))
    assert torch.equal(ra["torch"], rb["torch"]) and ra["python"] == rb["python"] and ra["numpy"] == rb["numpy"]


@pytest.mark.parametrize("args, says", [
    (["--early-check", "-1"], "early_check must be >= 0"),
    (["--early-check", "0", "--early-check-stop"], "early_check_stop needs the early held-out check"),
    (["--early-check-stop", "--set", "eval_heldout=false"], "early_check_stop needs the early held-out check"),
    (["--set", "early_check=ten"], "early_check"),
    (["--lr", "0"], "lr must be > 0"),
])
def test_bad_early_check_values_exit_2_in_one_line(tmp_path, args, says):
    from typer.testing import CliRunner

    from distillkit.cli.main import app

    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["train", "--plan", str(tmp_path / "p"), "--teacher", "t", "--student", "s", "--out", str(out),
                                 *args])
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.output
    assert not out.exists()


def test_default_lr_follows_the_scored_gap():
    from distillkit.training.setup import lr_choice

    assert lr_choice(None, [3.4, 3.2, 3.3], [2.7, 2.8, 2.7])[0] == 1e-5  # trained (this file's student: ratio 1.2)
    lr, why = lr_choice(None, [385.9, 227.1], [45.0, 14.9])  # SmolLM2-135M pruned to 23 layers (docs/train.md)
    assert lr == 1e-4 and "freshly pruned" in why and "ratio 11.43" in why  # geometric mean of 8.58 and 15.24
    assert lr_choice(None, [4.0], [2.0])[0] == 1e-4  # the boundary: a ratio of 2 heals
    assert lr_choice(2e-4, [3.0], [2.9]) == (2e-4, "0.0002 (--lr)")  # given: kept (the demo recipe's 2e-4)
    assert lr_choice(None, [float("nan")], [2.0])[0] == 1e-4


def test_the_demo_recipe_keeps_its_own_settings():
    from distillkit.pipelines.recipe import load_recipe

    train = load_recipe("demo", "/tmp/demo-root").configs["train"]
    assert (train.lr, train.warmup_fraction, train.steps, train.batch_size) == (2e-4, 0.05, 60, 4)  # not the rule's lr
