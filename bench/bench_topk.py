"""Stored top-k teacher: bytes per token on disk and the KL each format loses, on real teacher outputs.

    python bench/bench_topk.py --model smollm2-135m --data demo --max-per-domain 10 --max-length 128 --top-k 64

One fp32 forward of the teacher per document gives both the dense distribution p (all V log-probs) and
its top-k, which is written as `score --top-k` writes it (`distillkit.topk.topk_table`, zstd Arrow IPC,
record batches of ROWS_PER_BATCH samples) in three layouts:

- float16+int32: schema 1 (int32 ids, float16 log-probs, no tail column) -- what score wrote before;
- float16+uint16: `--topk-format float16` (uint16 ids, float16 log-probs, float16 log tail mass);
- uint8+uint16: `--topk-format uint8`, the default (uint16 ids, uint8 log-grid codes + float16 scale + tail).

Bytes per token = file size / stored positions (one per predicted token: len − 1 per document), sample ids
and token ids included. Each layout is read back through the trainer's decoder (`decode_batch`) and
compared with the dense teacher (decode tok/s: read + decompress + dequantise, one process):

- KL(dense ‖ sparse): the sparse teacher is the decoded top-k plus the tail mass (1 − Σ top-k p; for
  schema 1 computed from the rounded values, floored at 1e-6 as the loss does) spread evenly over the
  other V − k ids; mean per token, nats. Most of it is the truncation to k ids.
- added by rounding: the same minus the value for the exact fp32 top-k with the exact tail.
- KL on the bucket: KL(exact (k+1)-vector ‖ stored (k+1)-vector), the support the sparse loss sees
  with tail = "bucket" -- the error the storage format alone puts into the loss's teacher.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--max-per-domain", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--chunk-size", type=int, default=256, help="samples per part file, as score's chunk_size")
    ap.add_argument("--project-tokens", type=float, default=10e9, help="token count for the disk projection")
    args = ap.parse_args()

    import numpy as np
    import pyarrow as pa
    import torch

    from distillkit.artifacts import read_arrow, write_arrow
    from distillkit.assets import resolve_data
    from distillkit.data import DataSpec, load_data, tokenize
    from distillkit.engines.base import SequenceScores
    from distillkit.models import load_model, load_tokenizer, resolve_model
    from distillkit.topk import decode_batch, log_tail, topk_table

    t0 = time.perf_counter()
    ds = load_data(DataSpec(resolve_data(args.data), max_per_domain=args.max_per_domain))
    mdir = resolve_model(args.model)
    tok = load_tokenizer(str(mdir))
    s = tokenize(ds.table, ds.format, tok, args.max_length)
    model = load_model(str(mdir), dtype=args.dtype)
    V, k = len(tok), args.top_k
    positions = sum(len(x) - 1 for x in s.ids)

    dense: list[torch.Tensor] = []  # per document [n, V] fp32 log-probs
    scores: list[SequenceScores] = []
    with torch.inference_mode():
        for ids in s.ids:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1, :V].float()
            lp = torch.log_softmax(logits, -1)
            vals, idx = lp.topk(k, -1)
            dense.append(lp)
            scores.append(SequenceScores(lp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy(),
                                         idx.to(torch.int32).numpy(), vals.numpy()))
    t_fwd = time.perf_counter() - t0

    def v1_table(sid, seqs, sc) -> pa.Table:  # the schema-1 writer, as it was
        return pa.table({
            "sample_id": pa.array(sid, pa.string()),
            "token_ids": pa.array(seqs, pa.list_(pa.int32())),
            "topk_ids": pa.array([x.topk_ids.tolist() for x in sc], pa.list_(pa.list_(pa.int32(), k))),
            "topk_logprobs": pa.array([x.topk_logprobs.astype(np.float16).tolist() for x in sc], pa.list_(pa.list_(pa.float16(), k))),
        })

    layouts = {
        "float16+int32 (schema 1)": lambda sid, seqs, sc: v1_table(sid, seqs, sc),
        "float16+uint16": lambda sid, seqs, sc: topk_table(sid, seqs, sc, "float16", V),
        "uint8+uint16 (default)": lambda sid, seqs, sc: topk_table(sid, seqs, sc, "uint8", V),
    }

    def kl_full(lp: torch.Tensor, ids: torch.Tensor, lp_k: torch.Tensor, logtail: torch.Tensor) -> float:
        """Σ_positions KL(p ‖ p̂), p̂ = top-k values + tail spread evenly over the other V − k ids (float64)."""
        lp = lp.double()
        rest = logtail.double()[:, None] - np.log(V - k)
        lq = rest.expand_as(lp).clone()
        lq.scatter_(1, ids, lp_k.double())
        return float((lp.exp() * (lp - lq)).sum())

    def kl_bucket(lp_k_true, lt_true, lp_k, lt) -> float:
        a = torch.cat([lp_k_true.double(), lt_true.double()[:, None]], 1)
        b = torch.cat([lp_k.double(), lt.double()[:, None]], 1)
        return float((a.exp() * (a - b)).sum())

    floor = np.log(1e-6)

    def tail_of(lp_k: torch.Tensor) -> torch.Tensor:  # what the sparse loss takes as the tail: 1 − Σ p, floored
        return torch.from_numpy(np.maximum(log_tail(lp_k.numpy()), floor))

    exact_kl, exact_tails = 0.0, []
    for lp, sc in zip(dense, scores):
        lt = torch.from_numpy(np.maximum(log_tail(sc.topk_logprobs), floor))
        exact_tails.append(lt)
        exact_kl += kl_full(lp, torch.from_numpy(sc.topk_ids).long(), torch.from_numpy(sc.topk_logprobs), lt)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in layouts.items():
            size, kl, klb, t_read = 0, 0.0, 0.0, 0.0
            for c, a in enumerate(range(0, len(s.ids), args.chunk_size)):
                r = range(a, min(len(s.ids), a + args.chunk_size))
                path = Path(tmp) / f"{c}.arrow"
                write_arrow(path, build([s.sample_id[i] for i in r], [s.ids[i] for i in r], [scores[i] for i in r]), compression="zstd")
                size += path.stat().st_size
                t = time.perf_counter()
                decoded = []
                for b in read_arrow(path).to_batches():
                    off, ids_b, lp_b = decode_batch(b)
                    decoded += [(ids_b[off[j] : off[j + 1]].astype(np.int64), lp_b[off[j] : off[j + 1]]) for j in range(b.num_rows)]
                t_read += time.perf_counter() - t
                for i, (ids, lp_k) in zip(r, decoded):
                    if not np.array_equal(ids, scores[i].topk_ids):
                        raise SystemExit(f"{name}: ids did not round-trip")
                    lp_k = torch.from_numpy(lp_k)
                    lt = tail_of(lp_k)
                    kl += kl_full(dense[i], torch.from_numpy(ids), lp_k, lt)
                    klb += kl_bucket(torch.from_numpy(scores[i].topk_logprobs), exact_tails[i], lp_k, lt)
            rows.append((name, size / positions, kl / positions, (kl - exact_kl) / positions, klb / positions,
                         positions / t_read))

    print(f"model={args.model} dtype={args.dtype} data={args.data} docs={len(s.ids)} max_length={args.max_length} "
          f"k={k} V={V} stored positions={positions} forward {t_fwd:.0f} s threads={torch.get_num_threads()}")
    print(f"exact fp32 top-{k} + exact tail: KL(dense ‖ sparse) {exact_kl / positions:.5f} nats/token (truncation alone)")
    head = f"{'layout':<26} {'B/token':>8} {'TB per ' + f'{args.project_tokens:.0e}'.replace('+', '') + ' tok':>16} " \
           f"{'KL(dense‖sparse)':>17} {'added by rounding':>18} {'KL on bucket':>13} {'decode tok/s':>13}"
    print(head)
    print("-" * len(head))
    for name, bpt, kl, extra, klb, rate in rows:
        print(f"{name:<26} {bpt:8.1f} {bpt * args.project_tokens / 1e12:16.2f} {kl:17.5f} {extra:18.2e} {klb:13.2e} {rate:13,.0f}")


if __name__ == "__main__":
    main()
