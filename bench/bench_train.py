"""Memory and time of one distillation training step: the plain loss vs the chunked LM-head-fused loss.

A step is what `distillkit train` does per micro-batch: teacher forward (no_grad) -> its hidden
states; student forward; loss = (1-λ)·CE + λ·FKL (`--kd-weight` λ); backward. "plain" builds both models' full
[B, L, V] fp32 logits; "chunked" (train's default) computes them `chunk` positions at a time from
the hidden states and LM heads (distillkit.losses.objective, as train calls it). The optimizer step
is left out: it costs the same in both.

Each case runs in a fresh subprocess. Memory is the peak *increase* during the first step over the
memory held before it (models, inputs): on CPU the peak RSS, sampled every millisecond by a thread
(getrusage's lifetime peak would include model loading); on CUDA torch.cuda.max_memory_allocated.
Time is the median of the following steps.

    # real models (CPU, the demo corpus): SmolLM2-135M -> its 23-layer pruned student
    python bench/bench_train.py --teacher smollm2-135m --student runs/train-demo/student --batch 4 --seq-len 128
    # SmolLM2-shaped random models on a GPU, long sequences
    python bench/bench_train.py --shape smollm2 --device cuda --batch 8 --seq-len 2048
    # where a step's time goes (torch.profiler; phases are distillkit's record_function labels)
    python bench/bench_train.py --impls chunked:1024 --kd-weight 1 --threads 1 --profile 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def smollm2_shaped(vocab: int, layers: int = 30, seed: int = 0):
    """A randomly initialised model of SmolLM2-135M's shape (30 layers) or a depth-pruned one, on CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def _random_models(vocab: int, device):
    return smollm2_shaped(vocab, 30, 0).to(device), smollm2_shaped(vocab, 23, 1).to(device)  # teacher, student


def run_case(case: dict) -> dict:
    import psutil
    import torch

    sys.path.insert(0, str(ROOT))
    from distillkit.losses import LossSpec
    from distillkit.training.batches import Sequences, collate
    from distillkit.training.student import StudentLoss, teacher_sources

    if case["threads"]:
        torch.set_num_threads(case["threads"])
    device = case["device"]
    cuda = device.startswith("cuda")
    B, L = case["batch"], case["seq_len"]
    if case["shape"]:
        teacher, student = _random_models(case["vocab"], device)
        vocab = case["vocab"]
        g = torch.Generator().manual_seed(0)
        ids = [torch.randint(0, vocab, (L,), generator=g).numpy() for _ in range(B)]
    else:
        from distillkit.assets import resolve_data
        from distillkit.models import load_model, load_tokenizer

        tok = load_tokenizer(case["teacher"])
        teacher = load_model(case["teacher"], dtype="float32", device=device)
        student = load_model(case["student"], dtype="float32", device=device, trainable=True)
        vocab = len(tok)
        import pyarrow.parquet as pq

        # B rows of L tokens: demo-corpus documents (every 7th, for a domain mix) concatenated and cut
        texts = pq.read_table(resolve_data("demo"), columns=["text"]).column("text").to_pylist()[::7]
        stream: list[int] = []
        for t in texts:
            stream += tok(t)["input_ids"] + [tok.eos_token_id]
            if len(stream) >= B * L:
                break
        ids = [stream[r * L : (r + 1) * L] for r in range(B)]
    teacher.eval().requires_grad_(False)
    student.train()
    import numpy as np

    seqs = Sequences([str(i) for i in range(B)], ["x"] * B, [np.asarray(x, dtype=np.int64) for x in ids],
                     np.ones(B, dtype=np.int64), np.array([len(x) - 1 for x in ids]))
    batch = collate(seqs, list(range(B)), 0, device)
    spec = LossSpec("fkl", {}, "pocl", case["impl"], vocab, case["chunk"])
    module = StudentLoss(student, spec)
    source, _ = teacher_sources(teacher, case["impl"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and case["bf16"])

    from torch.profiler import record_function

    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5, fused=True) if case["profile"] else None  # as the loop

    def step() -> float:
        student.zero_grad(set_to_none=True)
        with record_function("distillkit.teacher_forward"):
            teacher_in = source(batch)
        with autocast:
            loss, kd, ce = module(batch, teacher_in, 1.0, {}, kd_weight=case["kd_weight"])
        with record_function("distillkit.backward"):
            loss.backward()
        if optimizer is not None:
            with record_function("distillkit.optimizer"):
                optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        return float(loss)

    proc = psutil.Process()
    peak = {"rss": 0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], proc.memory_info().rss)
            time.sleep(0.001)

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = proc.memory_info().rss
        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
    t0 = time.perf_counter()
    loss = step()
    first = time.perf_counter() - t0
    if cuda:
        peak_delta = torch.cuda.max_memory_allocated() - before
    else:
        stop.set()
        thread.join()
        peak_delta = peak["rss"] - before
    times = []
    for _ in range(case["repeats"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    out = {**case, "loss": loss, "before_mb": before / 2**20, "peak_delta_mb": peak_delta / 2**20,
           "first_s": first, "step_s": float(np.median(times)) if times else first}
    if case["profile"]:
        out["profile"] = _profile(step, case["profile"])
    return out


def _profile(step, steps: int) -> str:
    """Where a step's time goes (torch.profiler, CPU): distillkit's phases, then the top operators."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    phases = {e.key: e.cpu_time_total / 1e6 / steps for e in events if e.key.startswith("distillkit.")}
    total = sum(phases.values())  # the phases do not nest
    lines = [f"profile: {steps} step(s) incl. AdamW; wall time per step by phase (s):"]
    for k in ("distillkit.teacher_forward", "distillkit.student_forward", "distillkit.loss", "distillkit.backward",
              "distillkit.optimizer"):
        if k in phases:
            lines.append(f"  {k[11:]:<18}{phases[k]:>8.3f}  {100 * phases[k] / total:5.1f} %")
    lines.append(f"  {'sum':<18}{total:>8.3f}")
    lines.append("top operators by self CPU time per step (s):")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]:
        lines.append(f"  {e.key[:40]:<42}{e.self_cpu_time_total / 1e6 / steps:>8.3f}  calls/step {e.count // steps}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--student", default="runs/train-demo/student")
    ap.add_argument("--shape", choices=["smollm2"], help="random SmolLM2-shaped models instead of --teacher/--student")
    ap.add_argument("--vocab", type=int, default=49152, help="vocabulary of --shape models")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA (train's default there)")
    ap.add_argument("--impls", default="plain,chunked:1024,chunked:128", help="comma list of plain | chunked:CHUNK")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--kd-weight", type=float, default=0.7, help="λ: loss = (1-λ)·CE + λ·FKL (1 = KD only)")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="after timing, profile STEPS more steps (with an AdamW step) and print where the time goes")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_case(json.loads(args.child))))
        return
    rows = []
    for impl in args.impls.split(","):
        name, _, chunk = impl.partition(":")
        case = {"impl": name, "chunk": int(chunk or 1024), "teacher": args.teacher, "student": args.student, "shape": args.shape,
                "vocab": args.vocab, "batch": args.batch, "seq_len": args.seq_len, "device": args.device, "bf16": args.bf16,
                "repeats": args.repeats, "threads": args.threads, "kd_weight": args.kd_weight, "profile": args.profile}
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            sys.exit(f"case {impl} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    what = f"random {args.shape}-shaped (V={args.vocab})" if args.shape else f"{args.teacher} -> {args.student}"
    print(f"one KD step (teacher fwd + student fwd/bwd, FKL + CE), {what}, batch {args.batch}x{args.seq_len}, {args.device}"
          + (" bf16 autocast" if args.bf16 else " fp32"))
    print(f"{'impl':<16}{'loss':>10}{'held before (MB)':>18}{'step peak +MB':>15}{'first s':>9}{'s/step':>9}")
    for r in rows:
        label = r["impl"] + (f":{r['chunk']}" if r["impl"] == "chunked" else "")
        print(f"{label:<16}{r['loss']:>10.4f}{r['before_mb']:>18,.0f}{r['peak_delta_mb']:>15,.0f}{r['first_s']:>9.2f}{r['step_s']:>9.2f}")
    for r in rows:
        if r.get("profile"):
            print(f"\n[{r['impl']}:{r['chunk']}] " + r["profile"])


if __name__ == "__main__":
    main()
