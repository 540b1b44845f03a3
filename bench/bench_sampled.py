"""Sampled vs top-k teacher store: bytes per token on disk, and how far each one's KD loss is from the full one.

    python bench/bench_sampled.py --model smollm2-135m --data demo --max-per-domain 10 --max-length 128 \\
        --top-k 64 --sample-count 12 --seeds 16

Teacher: the model; student: the same model depth-pruned (decoder layers --drop-layers removed, by default
16-22 of SmolLM2's 30: the student docs/ASSETS.md describes), both fp32, one forward per document, so the
teacher's full distribution p and the student's q are known at every position. Stores, written as `score`
writes them (zstd Arrow IPC, record batches of ROWS_PER_BATCH samples) and read back through the trainer's
decoders (`distillkit.topk.decode_batch`, `distillkit.sampled_store.decode_batch`):

- top-K, `--topk-format uint8` (the default top-k store);
- sampled-n, stratified (the default) and iid (the paper's), seed 0 for the bytes.

Bytes per token = file size / stored positions (one per predicted token: len − 1 per document), sample and
token ids included -- as bench/bench_topk.py counts them.

Loss figures, per token, for fkl (KL(p‖q)) and skl (KL(p ‖ 0.1·p + 0.9·q)), T = 1:

- exact: the full-vocabulary value (the mean over all stored positions);
- top-K: what `sparse_kd_loss(tail="bucket")` computes from the decoded store: deterministic, and biased
  (the coarsened distributions; for fkl a lower bound);
- sampled: `sampled_kd_loss` on the decoded draws, once per seed (the draws of seed s are those of
  `score --sample-seed s`): mean ± sd over the seeds of the corpus-level value, the bias as a z-score
  (mean − exact) / (sd / √seeds) -- |z| < ~2 is what an unbiased estimator gives -- and the sd of a single
  position's estimate around its exact value (the per-token noise a training step averages over).
- fkl grad err: ‖ĝ − g‖ / ‖g‖ of the fkl gradient w.r.t. the student's logits at one position, g = q − p,
  averaged over positions: top-K's is a bias (the same every epoch), sampled's is noise of one draw of n
  (a fresh seed averages it away; the mean over the seeds, "of mean", shows it shrinking like 1/√seeds).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--drop-layers", default="16-22", help="decoder layers removed from the model to make the student")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--max-per-domain", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--sample-count", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=16, help="independent draws (sample seeds) per scheme for the loss figures")
    ap.add_argument("--chunk-size", type=int, default=256, help="samples per part file, as score's chunk_size")
    ap.add_argument("--project-tokens", type=float, default=10e9, help="token count for the disk projection")
    args = ap.parse_args()
    _return_freed_memory()

    import numpy as np
    import torch

    from distillkit.artifacts import read_arrow, write_arrow
    from distillkit.assets import resolve_data
    from distillkit.data import DataSpec, load_data, tokenize
    from distillkit.engines.base import SequenceScores
    from distillkit.losses.sparse import sampled_kd_loss, sparse_kd_loss
    from distillkit.models import load_model, load_tokenizer, resolve_model
    from distillkit.prune import parse_layers, prune_depth
    from distillkit.sampled_store import SampleSpec, decode_batch as decode_sampled, draw, sampled_table, uniforms
    from distillkit.topk import decode, encode, topk_table
    from distillkit.topk import decode_batch as decode_topk

    t0 = time.perf_counter()
    ds = load_data(DataSpec(resolve_data(args.data), max_per_domain=args.max_per_domain))
    mdir = resolve_model(args.model)
    tok = load_tokenizer(str(mdir))
    s = tokenize(ds.table, ds.format, tok, args.max_length)
    teacher = load_model(str(mdir), dtype="float32")
    student = load_model(str(mdir), dtype="float32")
    n_layers = len(student.model.layers)
    drop = set(parse_layers(args.drop_layers, n_layers))
    prune_depth(student, [i for i in range(n_layers) if i not in drop])
    V, k, n = len(tok), args.top_k, args.sample_count
    positions = sum(len(x) - 1 for x in s.ids)
    alpha = 0.1

    def fkl_skl(lp: torch.Tensor, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact per-position fkl and skl (float64)."""
        lp, lq = lp.double(), lq.double()
        p = lp.exp()
        lm = torch.logaddexp(lp + np.log(alpha), lq + np.log1p(-alpha))
        return (p * (lp - lq)).sum(1), (p * (lp - lm)).sum(1)

    # One pass over the documents: exact values, the top-k and each seed's draws (kept small: ids + log p).
    exact = {"fkl": 0.0, "skl": 0.0}
    topk_scores: list[SequenceScores] = []
    draws = {scheme: [[] for _ in range(args.seeds)] for scheme in ("stratified", "iid")}
    est = {(scheme, kind): np.zeros(args.seeds) for scheme in draws for kind in exact}
    topk_est = {kind: 0.0 for kind in exact}
    sq_dev = {(scheme, kind): 0.0 for scheme in draws for kind in exact}  # Σ (per-position estimate − exact)²
    grad_err = {name: 0.0 for name in ("top-k", "stratified", "iid")}  # one draw (seed 0)
    grad_err_mean = {name: 0.0 for name in ("stratified", "iid")}  # of the mean over the seeds
    t_fwd = t_draw = 0.0
    with torch.no_grad():  # not inference_mode: the top-k gradient below needs autograd
        for doc, ids in enumerate(s.ids):
            t = time.perf_counter()
            x = torch.tensor([ids])
            lp = torch.log_softmax(teacher(input_ids=x).logits[0, :-1, :V].float(), -1)
            zs = student(input_ids=x).logits[0, :-1, :V].float()
            lq = torch.log_softmax(zs, -1)
            t_fwd += time.perf_counter() - t
            f, sk = fkl_skl(lp, lq)
            exact["fkl"] += float(f.sum())
            exact["skl"] += float(sk.sum())
            g = (lq.exp() - lp.exp()).double()  # exact fkl gradient w.r.t. the student's logits
            g_norm = g.norm(dim=1).clamp(min=1e-30)
            vals, idx = lp.topk(k, -1)
            topk_scores.append(SequenceScores(lp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy(),
                                              idx.to(torch.int32).numpy(), vals.numpy()))
            # the top-k store's (deterministic) loss and gradient, on the values as stored and decoded
            e = encode(vals.numpy(), "uint8")
            lp_k = torch.from_numpy(decode(codes=e["codes"], scale=e["scale"], logtail=e["logtail"]))
            zs_g = zs.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                kd = sparse_kd_loss(zs_g, idx, lp_k, None, "fkl", tail="bucket") * zs.shape[0]
                (g_k,) = torch.autograd.grad(kd, zs_g)
            topk_est["fkl"] += float(kd)
            topk_est["skl"] += float(sparse_kd_loss(zs, idx, lp_k, None, "skl", tail="bucket", alpha=alpha)) * zs.shape[0]
            grad_err["top-k"] += float(((g_k.double() - g).norm(dim=1) / g_norm).sum())
            t = time.perf_counter()
            for scheme in draws:
                g_mean = torch.zeros_like(g)
                for r in range(args.seeds):
                    u = uniforms(r, s.sample_id[doc], len(ids) - 1, n, scheme)
                    d = draw(lp, u)
                    d_lp = lp.gather(1, d).half().float()  # as stored (float16) and decoded
                    draws[scheme][r].append((d.numpy(), d_lp.numpy()))
                    for kind in exact:
                        rows = _rows(zs, d, d_lp, kind, alpha)
                        est[scheme, kind][r] += float(rows.sum())
                        sq_dev[scheme, kind] += float(((rows.double() - (f if kind == "fkl" else sk)) ** 2).sum())
                    g_hat = lq.exp().double()
                    g_hat.scatter_add_(1, d, torch.full(d.shape, -1.0 / n, dtype=torch.float64))
                    g_mean += g_hat / args.seeds
                    if r == 0:
                        grad_err[scheme] += float(((g_hat - g).norm(dim=1) / g_norm).sum())
                grad_err_mean[scheme] += float(((g_mean - g).norm(dim=1) / g_norm).sum())
            t_draw += time.perf_counter() - t

    # Stores on disk, decoded as the trainer decodes them.
    def write_parts(build, tmp: Path, tag: str) -> tuple[int, list]:
        size, decoded = 0, []
        for c, a in enumerate(range(0, len(s.ids), args.chunk_size)):
            r = range(a, min(len(s.ids), a + args.chunk_size))
            path = tmp / f"{tag}-{c}.arrow"
            write_arrow(path, build(r), compression="zstd")
            size += path.stat().st_size
            for b in read_arrow(path).to_batches():
                off, i_b, v_b = (decode_topk if tag == "topk" else decode_sampled)(b)
                decoded += [(i_b[off[j] : off[j + 1]].astype(np.int64), v_b[off[j] : off[j + 1]]) for j in range(b.num_rows)]
        return size, decoded

    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        size, dec = write_parts(lambda r: topk_table([s.sample_id[i] for i in r], [s.ids[i] for i in r],
                                                     [topk_scores[i] for i in r], "uint8", V), Path(tmp), "topk")
        for doc, (ids_k, lp_k) in enumerate(dec):  # the file decodes to what the loss above used
            if not np.array_equal(ids_k, topk_scores[doc].topk_ids):
                raise SystemExit("top-k: ids did not round-trip")
        rows_out.append((f"top-{k} uint8 (bucket)", size, float(k), None))
        for scheme in draws:
            spec = SampleSpec(n, scheme, 0)
            size, dec = write_parts(lambda r: sampled_table([s.sample_id[i] for i in r], [s.ids[i] for i in r],
                                                            [draws[scheme][0][i] for i in r], spec, V), Path(tmp), scheme)
            for doc, (d_ids, d_lp) in enumerate(dec):  # the store round-trips the draws exactly
                if not (np.array_equal(d_ids, draws[scheme][0][doc][0]) and np.array_equal(d_lp, draws[scheme][0][doc][1])):
                    raise SystemExit(f"{scheme}: the sampled store did not round-trip")
            distinct = sum(int((np.diff(d[0], axis=1) != 0).sum()) + d[0].shape[0] for d in draws[scheme][0])
            rows_out.append((f"sampled-{n} {scheme}", size, distinct / positions, scheme))
        # one check that the library's loss is what the bench computes from the draws
        with torch.inference_mode():
            zs = student(input_ids=torch.tensor([s.ids[0]])).logits[0, :-1, :V].float()
            d, d_lp = (torch.from_numpy(a) for a in draws["stratified"][0][0])
            lib = float(sampled_kd_loss(zs, d, d_lp, None, "fkl"))
            mine = float(_rows(zs, d, d_lp, "fkl", alpha).mean())
            assert abs(lib - mine) < 1e-5 * max(1.0, abs(mine)), (lib, mine)

    print(f"model={args.model} student=drop {args.drop_layers} data={args.data} docs={len(s.ids)} max_length={args.max_length} "
          f"V={V} stored positions={positions} k={k} n={n} seeds={args.seeds} threads={torch.get_num_threads()} "
          f"forwards {t_fwd:.0f} s, draws+estimates {t_draw:.0f} s, total {time.perf_counter() - t0:.0f} s")
    print(f"exact (full vocabulary), nats/token: fkl {exact['fkl'] / positions:.4f}  skl(α={alpha}) {exact['skl'] / positions:.4f}")
    tb = "TB/" + f"{args.project_tokens:.0e}".replace("+", "") + " tok"
    head = (f"{'store':<26} {'B/token':>8} {tb:>13} {'ids/token':>9}  {'fkl: mean ± sd over seeds':>26} {'z':>6} {'pos sd':>7}"
            f"  {'skl: mean ± sd over seeds':>26} {'z':>6} {'pos sd':>7}  {'fkl grad err':>12} {'of mean':>8}")
    print(head)
    print("-" * len(head))
    for name, size, ids_per, scheme in rows_out:
        bpt = size / positions
        cells = []
        for kind in ("fkl", "skl"):
            want = exact[kind] / positions
            if scheme is None:
                v = topk_est[kind] / positions
                cells.append(f"{v:12.4f} (bias {100 * (v - want) / want:+6.1f} %) {'':>6} {'0':>7}")
            else:
                e = est[scheme, kind] / positions
                sd = float(e.std(ddof=1)) if len(e) > 1 else float("nan")
                z = (e.mean() - want) / (sd / np.sqrt(len(e))) if sd > 0 else float("nan")
                pos_sd = np.sqrt(sq_dev[scheme, kind] / (positions * len(e)))
                cells.append(f"{e.mean():12.4f} ± {sd:.4f} ({100 * (e.mean() - want) / want:+5.2f} %) {z:6.2f} {pos_sd:7.3f}")
        gb = grad_err["top-k" if scheme is None else scheme] / positions
        gm = f"{grad_err_mean[scheme] / positions:8.3f}" if scheme else f"{gb:8.3f}"
        print(f"{name:<26} {bpt:8.1f} {bpt * args.project_tokens / 1e12:13.2f} {ids_per:9.2f}  {cells[0]}  {cells[1]}  {gb:12.3f} {gm}")


def _return_freed_memory() -> None:
    """glibc: serve blocks ≥ 64 KiB by mmap, so freed [positions, V] tensors go back to the OS. With the default
    (a threshold that rises as blocks are freed) the heap fragments by ~80 MB per document of another length."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _rows(zs, d, d_lp, kind: str, alpha: float):
    """Per-position sampled estimate from the draws (the formula `sampled_rows` implements)."""
    import numpy as np
    import torch

    log_q = torch.log_softmax(zs.float(), -1).gather(1, d)
    if kind == "fkl":
        return (d_lp - log_q).mean(1)
    return (d_lp - torch.logaddexp(d_lp + np.log(alpha), log_q + np.log1p(-alpha))).mean(1)


if __name__ == "__main__":
    main()
