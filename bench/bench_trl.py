"""Training throughput: `distillkit train` (online teacher, FKL) against TRL's `GKDTrainer` used off-policy.

    python bench/bench_trl.py --teacher smollm2-135m --student runs/train-demo/student --plan /tmp/trl-bench/plan

On a machine shared with other jobs use `--threads 1`: with as many threads as cores, a step takes 7 s or 50 s
depending on whether another process holds a core (OpenMP threads wait for a descheduled peer), on both sides.

Both trainers distil the same teacher into the same student on the same batches: batch 4 × ≤128 tokens of
the demo corpus, fp32 weights and compute (no autocast, no gradient checkpointing), AdamW (β 0.9/0.95, no
weight decay, same lr, fused kernel: distillkit's own and transformers' default), gradient clipping at 1.0, one
process, the same torch thread count.

- distillkit: the real CLI, `distillkit train --loss fkl --loss-form pocl --kd-weight 1 --temperature 1
  --mixture uniform --save-every 0 --set eval_heldout=false --set teacher_dtype=float32 --set precision=fp32`
  on a one-stage plan (`distillkit plan --set curriculum=false`), i.e. loss = KL(teacher ‖ student) per target
  token (CE is computed in the same LM-head chunks for the log only: at weight 0 it gets no gradient).
- TRL: `trl.experimental.gkd.GKDTrainer` with `lmbda = 0` (never samples from the student: off-policy, the
  dataset's sequences) and `beta = 0`: in TRL's `generalized_jsd_loss` beta == 0 is special-cased to
  `F.kl_div(student_log_probs, teacher_log_probs, log_target=True)` = KL(teacher ‖ student), summed over the
  vocabulary and divided by the number of target tokens -- the same forward KL, token mean. (GKD's `compute_loss`
  calls it at temperature 1 whatever `GKDConfig.temperature` says; that only sets the sampling temperature.)
  Its batches are exactly the ones the preceding distillkit run drew (read from its `batches.arrow`, tokenized
  with distillkit's own `tokenize_rows`, right-padded to the batch's longest row as distillkit does) fed in
  order; models loaded with `AutoModelForCausalLM.from_pretrained(dtype=float32)`; `optimizers=` is given the
  same `torch.optim.AdamW(...)` distillkit builds. `bf16=False` and `gradient_checkpointing=False` override
  TRL's SFT defaults (True), which would otherwise make the comparison one of settings, not of trainers.

Each run is a fresh subprocess; runs alternate distillkit, TRL, distillkit, TRL, ... (`--repeats`) so load from
other jobs on the machine falls on both. Timing is the same on both sides: the wall time between consecutive
optimizer-step ends (distillkit: a wrapper around `Monitor.log`, which the loop calls right after
`optimizer.zero_grad()`; TRL: `TrainerCallback.on_step_end`, called right after `model.zero_grad()`), so a step
includes drawing/collating its batch, the teacher forward, student forward/backward, clipping and the AdamW
step, and excludes model loading and everything before the first step. The first `--warmup` steps are dropped
and the next `--steps` kept; s/step is the median over the kept steps of all runs of a trainer, tokens/s the
kept steps' target tokens (positions with a label: len − 1 per row) over their summed time.

Memory: `ru_maxrss` (the process's lifetime peak: model loading included, the same models on both sides) and
the peak RSS during the kept steps (psutil, sampled every 5 ms), both per run, max over runs.

MFU = (6·N_student + 2·N_teacher) × target tokens/s ÷ peak, N = all parameters with the tied embedding counted
once (it is the LM-head matmul); attention-score FLOPs (≈ 1 % at 128 tokens) are left out. The peak is
measured here, first, in its own subprocess: the best of `--matmul-reps` n×n @ n×n matmuls in fp32 (n = 2048)
and in bf16 (n = 1024: without bf16 units it runs ~90× slower) on the same threads -- under the same machine load as the runs, so it is what this machine
delivered then, not a datasheet figure.

Setup (once): the student is SmolLM2-135M with layers 16-22 dropped and the plan needs a score artifact:

    distillkit prune --model smollm2-135m --drop-layers 16-22 --out /tmp/trl-bench/student
    distillkit score --data demo --teacher smollm2-135m --student /tmp/trl-bench/student --max-per-domain 20 \\
        --max-length 128 --dtype float32 --out /tmp/trl-bench/score
    distillkit plan --scores /tmp/trl-bench/score --out /tmp/trl-bench/plan --set curriculum=false

TRL: `pip install --no-deps trl==1.16.0` (GKDTrainer lives in `trl.experimental.gkd` since 1.x).

`--pack` adds `train --pack` arms (online, and offline with `--offline`) on the same plan and seed, hence the
same samples per micro-batch, packed into fewer rows (see `distillkit.training.batches`). Prompt/response data
is where packing and the target-only LM head pay: e.g. the GSM8K study's score artifact (top-64 stored)

    distillkit plan --scores runs/pocl/score --out /tmp/pack-bench/plan --set curriculum=false
    python bench/bench_trl.py --student runs/pocl/student --plan /tmp/pack-bench/plan --out /tmp/pack-bench/runs \
        --batch 8 --seq-len 320 --offline --pack --threads 1

There MFU still counts target (response) tokens only: prompt positions are work both trainers do but not
what a user trains on.

On-policy (lmbda = 1) is `bench_onpolicy.py`, which drives the runners here: a distillkit case's `extra_args`
are appended to its `train` command (`--set on_policy=1 ...`) and its on-policy micro-batches are counted and
timed at `distillkit.training.onpolicy.student_batch`; a TRL case with `on_policy` runs `_run_trl_on_policy`.
Without those keys the runs above are unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BETAS = (0.9, 0.95)


class RssSampler:
    """Peak RSS between `start()` and `stop()`, sampled every `period` s by a daemon thread."""

    def __init__(self, period: float = 0.005) -> None:
        import psutil

        self.proc, self.period, self.peak, self.on, self._stop = psutil.Process(), period, 0, False, False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop:
            if self.on:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.period)

    def start(self) -> None:
        self.peak = self.proc.memory_info().rss
        self.on = True

    def stop(self) -> None:
        self.on = False
        self._stop = True


class StepClock:
    """Times between consecutive step ends; samples memory over the kept steps. On-policy steps also record
    their non-pad tokens (prompt + answer) and the seconds spent generating (`bench_onpolicy.py`)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.total, self.ends, self.targets = warmup, warmup + steps, [], []
        self.tokens: list[int] = []
        self.gen_s: list[float] = []
        self.rss = RssSampler()

    def step_end(self, targets: int, tokens: int | None = None, gen_s: float | None = None) -> None:
        self.ends.append(time.perf_counter())
        self.targets.append(targets)
        if tokens is not None:
            self.tokens.append(tokens)
        if gen_s is not None:
            self.gen_s.append(gen_s)
        if len(self.ends) == self.warmup:
            self.rss.start()
        if len(self.ends) == self.total:
            self.rss.stop()

    def result(self) -> dict:
        w = self.warmup
        dts = [b - a for a, b in zip(self.ends[w - 1 : -1], self.ends[w:])] if w >= 1 else []
        res = {"s_per_step": dts, "targets": self.targets[w:], "steps_seen": len(self.ends),
               "peak_rss_steps_mb": self.rss.peak / 2**20,
               "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if self.tokens:
            res["tokens"] = self.tokens[w:]
        if self.gen_s:
            res["gen_s"] = self.gen_s[w:]
        return res


def n_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --- distillkit --------------------------------------------------------------------------------------


def run_distillkit(case: dict) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    import distillkit.training.loop as loop
    import distillkit.training.monitor as monitor
    import distillkit.training.onpolicy as onpolicy
    from distillkit.cli.main import app

    clock = StepClock(case["warmup"], case["steps"])
    pending = {"targets": 0, "loss": [], "gen_s": None}
    collate = loop.collate
    student_batch = onpolicy.student_batch

    def counting_collate(*a, **k):  # the loop's micro-batches: count their target tokens
        b = collate(*a, **k)
        pending["targets"] += b.num_targets
        return b

    def counting_student_batch(*a, **k):  # on-policy micro-batches (generated, then collated): targets, time
        t = time.perf_counter()
        b = student_batch(*a, **k)
        pending["gen_s"] = (pending["gen_s"] or 0.0) + time.perf_counter() - t
        pending["targets"] += b.num_targets
        return b

    log = monitor.Monitor.log

    def timed_log(self, row):  # called right after optimizer.step() + zero_grad()
        clock.step_end(pending["targets"], tokens=row["tokens"], gen_s=pending["gen_s"])
        pending["targets"], pending["gen_s"] = 0, None
        pending["loss"].append(row["kd_loss"])
        return log(self, row)

    loop.collate = counting_collate
    onpolicy.student_batch = counting_student_batch  # the loop imports it from the module at each on-policy step
    monitor.Monitor.log = timed_log
    total = case["warmup"] + case["steps"]
    args = ["train", "--plan", case["plan"], "--teacher", case["teacher"], "--student", case["student"],
            "--out", case["out"], "--overwrite", "--steps", str(total), "--batch-size", str(case["batch"]),
            "--seq-len", str(case["seq_len"]), "--lr", str(case["lr"]), "--loss", "fkl", "--loss-form", "pocl",
            "--kd-weight", "1", "--temperature", "1", "--mixture", "uniform", "--save-every", "0", "--seed", "0",
            "--device", "cpu", "--set", "eval_heldout=false", "--set", f"teacher_dtype={'bfloat16' if case.get('precision') == 'bf16' else 'float32'}",
            "--set", f"precision={case.get('precision', 'fp32')}", "--set", "weight_decay=0", "--set", "max_grad_norm=1.0",
            "--set", f"log_every={total}", "--teacher-mode", case.get("teacher_mode", "online"), *case.get("extra_args", [])]
    try:
        app(args, standalone_mode=False)
    except SystemExit as e:
        if e.code:
            raise
    res = clock.result()
    from distillkit.models import load_model

    res["loss"] = pending["loss"]
    res["threads"] = torch.get_num_threads()
    res["cmd"] = "distillkit " + " ".join(args)
    if case.get("count_params"):  # after the run: not part of its memory figures
        res["n_student"] = n_params(load_model(case["student"]))
        res["n_teacher"] = n_params(load_model(case["teacher"]))
    return res


# --- TRL ----------------------------------------------------------------------------------------------


def batches_of(case: dict, tok):
    """The distillkit run's batches (batches.arrow), tokenized as distillkit tokenized them."""
    import pyarrow as pa

    sys.path.insert(0, str(ROOT))
    from distillkit.artifacts import read_arrow, read_artifact
    from distillkit.seqkd import scored_dataset
    from distillkit.training.batches import tokenize_rows

    drawn = read_arrow(Path(case["batches_from"]) / "batches.arrow")
    steps = drawn.column("step").to_pylist()
    sids = drawn.column("sample_id").to_pylist()
    plan = read_artifact(case["plan"], "plan")
    scores = read_artifact(plan.manifest["plan"]["scores"], "score")
    sc = scores.config
    ds = scored_dataset(scores)  # as train reads it
    index = {s: i for i, s in enumerate(ds.table.column("sample_id").to_pylist())}
    rows = ds.table.take(pa.array([index[s] for s in sids], pa.int64()))
    seqs = tokenize_rows(rows, ds.format, tok, int(sc.get("max_length", case["seq_len"])), case["seq_len"])
    return seqs, steps


def _fit_trl(trainer_cls, student, teacher, args, collator, tok, timer, case: dict, total: int, clock, losses) -> dict:
    """Train with TRL's trainer class on rows 0..total·batch in order, with distillkit's AdamW; the run's figures."""
    import torch
    import trl
    from datasets import Dataset

    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=case["lr"],
                            weight_decay=0.0, betas=BETAS, fused=True)  # = make_optimizer = adamw_torch_fused
    trainer = trainer_cls(model=student, teacher_model=teacher, args=args, data_collator=collator,
                          train_dataset=Dataset.from_dict({"row": list(range(total * case["batch"]))}),
                          processing_class=tok, callbacks=[timer], optimizers=(opt, None))
    trainer.train()
    res = clock.result()
    res["loss"] = losses
    res["threads"] = torch.get_num_threads()
    res["trl"] = trl.__version__
    res["n_student"], res["n_teacher"] = n_params(student), n_params(teacher)
    return res


def run_trl(case: dict) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, TrainerCallback

    sys.path.insert(0, str(ROOT))
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from distillkit.models import load_tokenizer, resolve_model
    from distillkit.training.batches import IGNORE, collate

    tok = load_tokenizer(case["teacher"])
    seqs, steps = batches_of(case, tok)
    total = case["warmup"] + case["steps"]
    if len(seqs) < total * case["batch"]:
        raise SystemExit(f"{case['batches_from']} holds {len(seqs)} rows, need {total * case['batch']}")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    op = case.get("on_policy")  # bench_onpolicy.py: {"max_new_tokens", "temperature", "top_p"}; None: off-policy
    if op:
        return _run_trl_on_policy(case, op, seqs, tok, pad)

    def collator(examples):
        b = collate(seqs, [e["row"] for e in examples], pad, "cpu")
        labels = b.input_ids.clone()  # TRL shifts itself: logits[:, :-1] against labels[:, 1:]
        labels[b.attention_mask == 0] = IGNORE
        for r, e in enumerate(examples):
            labels[r, : max(int(seqs.target_start[e["row"]]), 1)] = IGNORE
        return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": labels}

    student = AutoModelForCausalLM.from_pretrained(resolve_model(case["student"]), dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(resolve_model(case["teacher"]), dtype=torch.float32)
    clock = StepClock(case["warmup"], case["steps"])
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # right after optimizer.step() + zero_grad()
            clock.step_end(n_targets.pop(0))

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    n_targets: list[int] = []
    orig = collator

    def counting(examples):
        out = orig(examples)
        n_targets.append(int((out["labels"][:, 1:] != IGNORE).sum()))
        return out

    class InOrder(GKDTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    args = GKDConfig(
        output_dir=case["out"], per_device_train_batch_size=case["batch"], gradient_accumulation_steps=1,
        max_steps=total, learning_rate=case["lr"], weight_decay=0.0, adam_beta1=BETAS[0], adam_beta2=BETAS[1],
        max_grad_norm=1.0, lmbda=0.0, beta=0.0, temperature=1.0, seq_kd=False, bf16=case.get("precision") == "bf16", fp16=False,
        gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no",
        logging_steps=1, dataloader_num_workers=0, seed=0, disable_tqdm=True, max_length=case["seq_len"],
        lr_scheduler_type="constant",
    )
    return _fit_trl(InOrder, student, teacher, args, counting, tok, Timer(), case, total, clock, losses)


def _run_trl_on_policy(case: dict, op: dict, seqs, tok, pad: int) -> dict:
    """`GKDTrainer` with lmbda = 1: every step generates from the student (`generate_on_policy_outputs`)."""
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, TrainerCallback

    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from distillkit.models import resolve_model
    from distillkit.training.batches import IGNORE
    from distillkit.training.onpolicy import OnPolicy

    if op["top_p"] != 1.0:
        raise SystemExit("TRL's GKDTrainer samples with top_p = 1 (hard-coded); compare at gen_top_p = 1")
    total = case["warmup"] + case["steps"]
    # The prompt distillkit's on-policy step gives the student for the same row: the row's prompt, cut from the
    # left to seq_len - max_new_tokens.
    cut = OnPolicy(fraction=1.0, max_new_tokens=op["max_new_tokens"], temperature=op["temperature"], top_p=op["top_p"],
                   prompt_from="prompt", prefix_tokens=0, seq_len=case["seq_len"], seed=0, pad_id=pad, eos_ids=())

    def collator(examples):
        # What GKD's on-policy step reads: left-padded `prompts` + `prompt_attention_mask`; `input_ids` and
        # `attention_mask` are replaced by the generated sequences. No `labels`: Trainer would count the reference
        # answers' tokens as `num_items_in_batch` and GKD would divide the loss over the *generated* tokens by
        # that; without them the loss is the token mean over the generated tokens, as distillkit's.
        ps = [cut.prompt(seqs, e["row"]) for e in examples]
        width = max(len(x) for x in ps)
        ids = torch.full((len(ps), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ps), width), dtype=torch.long)
        for r, x in enumerate(ps):
            ids[r, width - len(x) :] = torch.as_tensor(x, dtype=torch.long)
            mask[r, width - len(x) :] = 1
        return {"prompts": ids, "prompt_attention_mask": mask, "input_ids": ids, "attention_mask": mask}

    student = AutoModelForCausalLM.from_pretrained(resolve_model(case["student"]), dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(resolve_model(case["teacher"]), dtype=torch.float32)
    clock = StepClock(case["warmup"], case["steps"])
    losses: list[float] = []
    gen: list[tuple[int, int, float]] = []  # per step: target tokens, non-pad tokens, generation seconds

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # right after optimizer.step() + zero_grad()
            targets, tokens, gen_s = gen.pop(0)
            clock.step_end(targets, tokens=tokens, gen_s=gen_s)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class InOrder(GKDTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        @staticmethod
        def generate_on_policy_outputs(model, inputs, generation_config):
            t = time.perf_counter()
            ids, mask, labels = GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
            gen.append((int((labels[:, 1:] != IGNORE).sum()), int(mask.sum()), time.perf_counter() - t))
            return ids, mask, labels

    args = GKDConfig(
        output_dir=case["out"], per_device_train_batch_size=case["batch"], gradient_accumulation_steps=1,
        max_steps=total, learning_rate=case["lr"], weight_decay=0.0, adam_beta1=BETAS[0], adam_beta2=BETAS[1],
        max_grad_norm=1.0, lmbda=1.0, beta=0.0, temperature=op["temperature"], max_new_tokens=op["max_new_tokens"],
        seq_kd=False, bf16=case.get("precision") == "bf16", fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
        save_strategy="no", eval_strategy="no", logging_steps=1, dataloader_num_workers=0, seed=0, disable_tqdm=True,
        max_length=case["seq_len"], lr_scheduler_type="constant",
    )
    return _fit_trl(InOrder, student, teacher, args, collator, tok, Timer(), case, total, clock, losses)


# --- peak matmul --------------------------------------------------------------------------------------


def run_matmul(case: dict) -> dict:
    import torch

    out = {}
    for name, dt, n in (("fp32", torch.float32, case["n"]), ("bf16", torch.bfloat16, case["n_bf16"])):
        a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
        a @ b
        times = []
        for _ in range(case["reps"]):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        out[name] = {"n": n, "best_gflops": 2 * n**3 / min(times) / 1e9, "median_gflops": 2 * n**3 / statistics.median(times) / 1e9}
    out["threads"] = torch.get_num_threads()
    return out


# --- driver ------------------------------------------------------------------------------------------


def run_case(case: dict) -> dict:
    import torch

    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    return {"distillkit": run_distillkit, "trl": run_trl, "matmul": run_matmul}[case["kind"]](case)


def spawn(case: dict, log: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(case["threads"]), TRL_EXPERIMENTAL_SILENCE="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=f, text=True)
    if p.returncode:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{case['kind']} run failed (exit {p.returncode}); log {log}:\n{tail}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--student", default="/tmp/trl-bench/student")
    ap.add_argument("--plan", default="/tmp/trl-bench/plan", help="a one-stage plan (distillkit plan --set curriculum=false)")
    ap.add_argument("--out", default="/tmp/trl-bench/runs")
    ap.add_argument("--steps", type=int, default=8, help="measured optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="steps run first and not measured")
    ap.add_argument("--repeats", type=int, default=2, help="runs per trainer, interleaved")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--matmul-n-bf16", type=int, default=1024, help="bf16 size (CPUs without bf16 units run it ~50× slower)")
    ap.add_argument("--matmul-reps", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep each distillkit run's checkpoint and student")
    ap.add_argument("--offline", action="store_true",
                    help="add a third arm: distillkit with --teacher-mode offline (the plan's scores must hold top-k)")
    ap.add_argument("--pack", action="store_true",
                    help="add `train --pack` arms: online packed (and offline packed with --offline), same batches")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="both trainers: fp32, or bf16 (distillkit: autocast student + bf16 teacher weights; TRL: bf16=True, "
                         "its SFT default, autocast for both models). Use bf16 only where the CPU has avx512_bf16/amx_bf16")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        print(json.dumps(run_case(json.loads(a.case))))
        return

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base = {"teacher": a.teacher, "student": str(Path(a.student).resolve()) if Path(a.student).exists() else a.student,
            "plan": str(Path(a.plan).resolve()), "steps": a.steps, "warmup": a.warmup, "batch": a.batch, "seq_len": a.seq_len,
            "lr": a.lr, "threads": a.threads, "precision": a.precision}
    t0 = time.time()
    mm = spawn({"kind": "matmul", "n": a.matmul_n, "n_bf16": a.matmul_n_bf16, "reps": a.matmul_reps, "threads": a.threads},
               out / "matmul.log")
    print(f"matmul ({mm['threads']} threads, best of {a.matmul_reps}): fp32 {a.matmul_n}² {mm['fp32']['best_gflops']:.1f} GFLOP/s "
          f"(median {mm['fp32']['median_gflops']:.1f}), bf16 {a.matmul_n_bf16}² {mm['bf16']['best_gflops']:.1f} GFLOP/s "
          f"(median {mm['bf16']['median_gflops']:.1f})", flush=True)
    arms = {"distillkit": [], "trl": []} | ({"offline": []} if a.offline else {})
    if a.pack:
        arms |= {"packed": []} | ({"offline-pack": []} if a.offline else {})
    runs: dict[str, list[dict]] = arms

    def report(r: int, name: str, res: dict) -> None:
        runs[name].append(res)
        steps = res["s_per_step"]
        print(f"run {r} {name + ':':<11} median {statistics.median(steps):.2f} s/step "
              f"(steps {' '.join('%.1f' % x for x in steps)}), loss {['%.4f' % x for x in res['loss'][:3]]}", flush=True)

    def tidy(run_out: Path) -> None:
        if not a.keep:  # a distillkit run's final checkpoint and student: ~1.7 GB, not needed here
            for sub in ("student", "checkpoints"):
                shutil.rmtree(run_out / sub, ignore_errors=True)

    for r in range(a.repeats):
        dk_out = out / f"distillkit-{r}"
        report(r, "distillkit", spawn({**base, "kind": "distillkit", "out": str(dk_out), "count_params": r == 0},
                                      out / f"distillkit-{r}.log"))
        report(r, "trl", spawn({**base, "kind": "trl", "out": str(out / f"trl-{r}"), "batches_from": str(dk_out)},
                               out / f"trl-{r}.log"))
        tidy(dk_out)  # after TRL, which reads this run's batches
        if a.offline:  # same plan and seed, so the same batches; stored top-k teacher, no teacher forward
            off_out = out / f"offline-{r}"
            report(r, "offline", spawn({**base, "kind": "distillkit", "out": str(off_out), "teacher_mode": "offline"},
                                       out / f"offline-{r}.log"))
            tidy(off_out)
        if a.pack:  # same plan and seed: the same samples per micro-batch, packed into fewer rows
            for name, mode in (("packed", "online"), ("offline-pack", "offline"))[: 2 if a.offline else 1]:
                pk_out = out / f"{name}-{r}"
                report(r, name, spawn({**base, "kind": "distillkit", "out": str(pk_out), "teacher_mode": mode,
                                       "extra_args": ["--pack"]}, out / f"{name}-{r}.log"))
                tidy(pk_out)

    peak = {k: mm[k]["best_gflops"] * 1e9 for k in ("fp32", "bf16")}
    n_s, n_t = runs["distillkit"][0]["n_student"], runs["distillkit"][0]["n_teacher"]
    flops_per_token = 6 * n_s + 2 * n_t
    rows = {}
    for name, rs in runs.items():
        dts = [x for r in rs for x in r["s_per_step"]]
        tgt = sum(t for r in rs for t in r["targets"])
        tps = tgt / sum(dts)
        fpt = 6 * n_s if name.startswith("offline") else flops_per_token  # offline: no teacher forward, only 6·N_student
        rows[name] = {"s_step": statistics.median(dts), "spread": (min(dts), max(dts)), "tps": tps,
                      "rss": max(r["ru_maxrss_mb"] for r in rs), "rss_steps": max(r["peak_rss_steps_mb"] for r in rs),
                      "mfu32": fpt * tps / peak["fp32"], "mfu16": fpt * tps / peak["bf16"],
                      "loss": rs[0]["loss"][0] if rs[0]["loss"] else float("nan"), "threads": rs[0]["threads"]}
    print()
    print(f"{a.batch} × ≤{a.seq_len} tokens, {a.warmup} warm-up + {a.steps} timed steps × {a.repeats} runs each, {a.precision}, "
          f"{a.threads} threads; N_student {n_s / 1e6:.1f}M, N_teacher {n_t / 1e6:.1f}M, "
          f"{flops_per_token / 1e9:.2f} GFLOP/target token; TRL {runs['trl'][0].get('trl')}; wall {time.time() - t0:.0f} s")
    print(f"{'trainer':<11} {'s/step (med)':>12} {'range':>13} {'target tok/s':>12} {'ru_maxrss MB':>12} "
          f"{'steps RSS MB':>12} {'MFU fp32':>8} {'MFU bf16':>8} {'step-1 KL':>9}")
    for name, r in rows.items():
        print(f"{name:<11} {r['s_step']:>12.2f} {r['spread'][0]:>6.2f}-{r['spread'][1]:<6.2f} {r['tps']:>12.1f} "
              f"{r['rss']:>12.0f} {r['rss_steps']:>12.0f} {r['mfu32']:>8.1%} {r['mfu16']:>8.1%} {r['loss']:>9.4f}")
    d, t = rows["distillkit"], rows["trl"]
    print(f"distillkit/trl: tokens/s ×{d['tps'] / t['tps']:.2f}, s/step ×{d['s_step'] / t['s_step']:.2f}, "
          f"ru_maxrss ×{d['rss'] / t['rss']:.2f}, step RSS ×{d['rss_steps'] / t['rss_steps']:.2f}")
    if "offline" in rows:
        o = rows["offline"]
        print(f"offline/online (distillkit): tokens/s ×{o['tps'] / d['tps']:.2f}, ru_maxrss ×{o['rss'] / d['rss']:.2f}; "
              f"offline/trl: tokens/s ×{o['tps'] / t['tps']:.2f} (offline KD is on the stored top-k, not the full teacher "
              "distribution: the step-1 KL column differs by design)")
    for name in ("packed", "offline-pack"):
        if name in rows:
            k, base_arm = rows[name], rows["offline" if name == "offline-pack" else "distillkit"]
            print(f"{name}: tokens/s ×{k['tps'] / base_arm['tps']:.2f} its unpacked arm, ×{k['tps'] / t['tps']:.2f} TRL; "
                  f"ru_maxrss ×{k['rss'] / t['rss']:.2f} TRL, step RSS ×{k['rss_steps'] / t['rss_steps']:.2f} TRL")
    print(f"peak used for MFU: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s (measured above)"
          + ("; bf16 is the slower dtype on this machine, so 'MFU bf16' (> 100 %) only says both trainers are right to stay in fp32"
             if peak["bf16"] < peak["fp32"] else ""))
    (out / "result.json").write_text(json.dumps({"matmul": mm, "runs": runs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
