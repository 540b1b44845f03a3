"""Peak memory and time of one KD loss forward+backward: plain vs chunked LM-head-fused.

Each case runs in a fresh subprocess, so one case's allocator state and peak cannot
leak into another's. Memory is the peak *increase* over the inputs (hidden states,
both LM heads): on CPU the peak RSS (getrusage ru_maxrss) minus the RSS before
the step (psutil); on CUDA torch.cuda.max_memory_allocated minus the allocation before.
tracemalloc would not see torch's allocations.

    python bench/bench_loss.py                       # the full grid: 4096 positions, V 49,152 / 151,936
    python bench/bench_loss.py --positions 512 --chunk-size 128 --dtypes fp32   # smaller

"plain" = student logits = hidden @ W.T (autograd), teacher logits likewise (no
grad), then kd_loss over the full [P, V] logits. "chunked" = chunked_kd_loss with
the teacher as a LinearHead: logits for chunk_size positions at a time. "liger" =
Liger-Kernel's LigerFusedLinearJSD (Triton, so CUDA only): its generalised JSD has
the same beta convention as distillkit's (beta·KL(p‖m) + (1−beta)·KL(q‖m), p the
teacher) and is KL(teacher‖student) at beta = 0, KL(student‖teacher) at beta = 1,
so fkl/rkl/jsd map to beta 0/1/0.5. Liger has no T² factor: its loss (and gradient)
are scaled by T² here to match. Its own chunking is fixed (no --chunk-size). Where
liger-kernel is missing or cannot run on the device, its row says "skipped: ...".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("plain", "chunked", "liger")
# Liger's jsd_beta for the divergences it can express (generalised JSD, same convention as distillkit's).
LIGER_BETA = {"fkl": 0.0, "rkl": 1.0, "jsd": 0.5}


class Skipped(Exception):
    """This case cannot run here (e.g. liger-kernel missing or without a backend for the device)."""


def liger_loss_fn(case: dict) -> Callable[..., Any]:
    """Liger's fused linear JSD as f(hidden [P, H], weight, t_hidden [P, Ht], t_weight) -> scalar.

    Imported here, in the child, so the other methods never need liger-kernel. A tiny call on the
    case's device first: Liger's kernels are Triton, so on CPU this raises and the case is skipped.
    """
    import torch

    if case["kind"] not in LIGER_BETA:
        raise Skipped(f"liger's JSD cannot express kind={case['kind']}")
    try:
        from liger_kernel.transformers import LigerFusedLinearJSD
    except Exception as e:  # ImportError, or triton failing to import
        raise Skipped(f"liger-kernel not importable ({type(e).__name__}: {str(e).splitlines()[0][:60]})") from e
    loss_fn = LigerFusedLinearJSD(jsd_beta=LIGER_BETA[case["kind"]], temperature=case["temperature"])
    scale = case["temperature"] ** 2
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[case["dtype"]]
    try:
        x = torch.randn(8, 16, device=case["device"], dtype=dtype, requires_grad=True)
        loss_fn(x, torch.randn(32, 16, device=case["device"], dtype=dtype), x.detach(),
                torch.randn(32, 16, device=case["device"], dtype=dtype), None).backward()
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:70] if str(e).strip() else ""
        raise Skipped(f"liger-kernel does not run on {case['device']} ({type(e).__name__}: {msg})") from e

    def fn(hidden: torch.Tensor, weight: torch.Tensor, t_hidden: torch.Tensor, t_weight: torch.Tensor) -> torch.Tensor:
        return loss_fn(hidden, weight, t_hidden, t_weight, None) * scale

    return fn


def run_case(case: dict) -> dict:
    """Child process: build inputs, measure one (or more) forward+backward."""
    import gc

    import psutil
    import torch

    sys.path.insert(0, str(ROOT))
    from distillkit.losses import LinearHead, chunked_kd_loss, kd_loss

    if case["threads"]:
        torch.set_num_threads(case["threads"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[case["dtype"]]
    device = torch.device(case["device"])
    cuda = device.type == "cuda"
    P, H, Ht, V = case["positions"], case["hidden"], case["teacher_hidden"], case["vocab"]
    params = {"t": 0.5} if case["kind"] == "taid" else {}
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, device=device, dtype=dtype) * scale)

    hidden = randn(1, P, H, scale=1.0).requires_grad_()
    weight = randn(V, H, scale=H**-0.5 * 2).requires_grad_()
    t_hidden = randn(1, P, Ht, scale=1.0)
    t_weight = randn(V, Ht, scale=Ht**-0.5 * 2)
    mask = torch.ones(1, P, dtype=torch.bool, device=device)
    liger = liger_loss_fn(case) if case["method"] == "liger" else None

    def step() -> float:
        hidden.grad = weight.grad = None
        if case["method"] == "plain":
            student_logits = hidden @ weight.t()
            with torch.no_grad():
                teacher_logits = t_hidden @ t_weight.t()
            loss = kd_loss(
                student_logits, teacher_logits, mask, case["kind"], temperature=case["temperature"], **params
            )
        elif liger is not None:  # all positions count: no labels / ignore_index needed
            loss = liger(hidden.view(P, H), weight, t_hidden.view(P, Ht), t_weight)
        else:
            loss = chunked_kd_loss(
                hidden, weight, LinearHead(t_hidden, t_weight), mask, case["kind"],
                temperature=case["temperature"], chunk_size=case["chunk_size"], **params,
            )
        loss.backward()
        return float(loss)

    if case["mem_limit_bytes"] and not cuda:
        resource.setrlimit(resource.RLIMIT_AS, (case["mem_limit_bytes"], case["mem_limit_bytes"]))
    for _ in range(case["warmup"]):
        step()
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = psutil.Process().memory_info().rss
    times = []
    value = float("nan")
    for _ in range(case["repeats"]):
        t0 = time.perf_counter()
        value = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "peak_mb": peak / 2**20,
        "time_s": min(times),
        "loss": value,
        "grad_w_norm": float(weight.grad.float().norm()),
    }


def child_main(case_json: str) -> None:
    case = json.loads(case_json)
    try:
        out = run_case(case)
    except Skipped as e:
        out = {"skipped": str(e)}
    except (RuntimeError, MemoryError) as e:  # RLIMIT_AS or CUDA OOM surfaces as one of these
        msg = str(e).splitlines()[0][:80]
        out = {"error": "out of memory" if "memory" in msg.lower() or "alloc" in msg.lower() else msg}
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=4096, help="B*L positions (one sequence)")
    ap.add_argument("--hidden", type=int, default=576, help="student hidden size")
    ap.add_argument("--teacher-hidden", type=int, default=None, help="teacher hidden size (default: --hidden)")
    ap.add_argument("--vocabs", default="49152,151936", help="comma-separated vocabulary sizes")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--methods", default="plain,chunked", help="comma-separated: " + ", ".join(METHODS))
    ap.add_argument("--kind", default="fkl", help="divergence")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--chunk-size", type=int, default=1024, help="positions per chunk (chunked method)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 0 on cpu, 1 on cuda)")
    ap.add_argument("--repeats", type=int, default=1, help="timed steps; the minimum is reported")
    ap.add_argument(
        "--mem-limit-gb", type=float, default=None,
        help="CPU only: address-space cap per case, so a case that does not fit fails instead of "
        "waking the OOM killer (default: 90%% of the memory available at start; 0 = none)",
    )
    ap.add_argument("--_case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._case:
        child_main(args._case)
        return

    import psutil

    if args.mem_limit_gb is None:
        limit = int(psutil.virtual_memory().available * 0.9)
    else:
        limit = int(args.mem_limit_gb * 2**30)
    warmup = args.warmup if args.warmup is not None else (1 if args.device == "cuda" else 0)
    # The repo first, then whatever the caller had (e.g. a --target dir holding liger-kernel).
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    vocabs = [int(v) for v in args.vocabs.split(",")]
    dtypes = args.dtypes.split(",")
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    print(
        f"# kind={args.kind} T={args.temperature} positions={args.positions} hidden={args.hidden} "
        f"teacher_hidden={args.teacher_hidden or args.hidden} chunk_size={args.chunk_size} device={args.device} "
        f"threads={args.threads or 'default'} warmup={warmup} repeats={args.repeats}"
    )
    print("| vocab | dtype | method | peak MB (over inputs) | time s (fwd+bwd) | loss | ‖grad W‖ |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for vocab in vocabs:
        for dtype in dtypes:
            for method in methods:
                case = dict(
                    vocab=vocab, dtype=dtype, method=method, positions=args.positions, hidden=args.hidden,
                    teacher_hidden=args.teacher_hidden or args.hidden, kind=args.kind,
                    temperature=args.temperature, chunk_size=args.chunk_size, device=args.device,
                    threads=args.threads, warmup=warmup, repeats=args.repeats, mem_limit_bytes=limit,
                )
                proc = subprocess.run(
                    [sys.executable, __file__, "--_case", json.dumps(case)],
                    capture_output=True, text=True, env={**os.environ, "PYTHONPATH": pythonpath},
                )
                lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if lines:
                    r = json.loads(lines[-1][len("RESULT "):])
                else:
                    tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:80]
                    r = {"error": f"exit {proc.returncode}: {tail}"}
                if "skipped" in r:
                    print(f"| {vocab:,} | {dtype} | {method} | skipped: {r['skipped']} | | | |", flush=True)
                elif "error" in r:
                    print(f"| {vocab:,} | {dtype} | {method} | {r['error']} | | | |", flush=True)
                else:
                    print(
                        f"| {vocab:,} | {dtype} | {method} | {r['peak_mb']:,.0f} | {r['time_s']:.4f} | "
                        f"{r['loss']:.5f} | {r['grad_w_norm']:.5f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
