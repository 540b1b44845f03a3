"""The stored sampled teacher (``score --teacher-store sampled``): the draws, the on-disk format, a decoder.

Random-sampling KD (Anshumann et al., "Sparse Logit Sampling", ACL 2025, arXiv 2503.16870): instead of the
teacher's top-k, keep n tokens x_1..x_n drawn per position from the teacher's T = 1 distribution p. For any
function f of a token, (1/n)·Σ_j f(x_j) is an unbiased estimate of E_p[f]; with f = log p − log q that is the
forward KL(p‖q), and its gradient w.r.t. the student's logits, q − (1/n)·Σ_j e_{x_j}, is unbiased for q − p.
Which divergences this serves, and why the others are refused, is in `distillkit.losses.sparse`.

Drawing: inverse-CDF sampling on p in vocabulary order, x_j = min{i : F_i > u_j} with F the cumulative sum
of p (in float64, renormalised so F_V = 1), from n uniforms per position:

- ``stratified`` (default): u_j = (j + U_j)/n with U_j uniform on [0, 1): one draw from each 1/n slice of
  the CDF. Still unbiased, since the slices cover [0, 1) once, and never worse than iid: a token's count
  differs from n·p by less than 2, where iid draws give it a binomial spread (sd √(n·p·(1−p))).
- ``iid``: n independent draws with replacement, as in the paper.

The uniforms come from a PCG64 stream keyed by (seed, sample id), so a sample gets the same draws in any
chunk, shard, batch or process (up to float rounding of the teacher's logits moving a CDF boundary across
a uniform, which a batch of another shape can do).

On disk, ``sampled/part-NNNNN.arrow`` holds one score chunk, written as record batches of ``ROWS_PER_BATCH``
samples, zstd-compressed. One row per sample; each outer list has one entry per position t = 0..len−2, the
draws from the distribution that predicts ``token_ids[t+1]``:

- ``token_ids``  list<uint16 | int32>: the scored sequence (uint16 when the vocabulary fits, as top-k).
- ``sampled``    list<list<struct<id: uint16 | int32, count: uint8, logprob: float16>>>: per position, the
  distinct drawn ids (ascending), how many of the n draws gave each (they sum to n), and the teacher's
  log p of each (log softmax over the full vocabulary at T = 1, rounded to float16: within ~5e-4·|log p|).

One struct list rather than three parallel lists: one offsets array per position instead of three
(~14 % smaller on SmolLM2 draws, bench/bench_sampled.py).

Schema metadata: ``distillkit.sampled_count`` (n), ``distillkit.sampled_scheme``, ``distillkit.sampled_seed``,
``distillkit.sampled_max_id``. Decoding (`decode_batch`) expands each position back to its n draws (ids
repeated by their counts, ascending) and their log-probs, [positions, n]: every draw has weight 1/n, so the
loss needs no weights tensor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa

from distillkit.topk import ROWS_PER_BATCH, ids_type

SampleScheme = Literal["stratified", "iid"]
SAMPLE_SCHEMES: tuple[str, ...] = ("stratified", "iid")
MAX_SAMPLE_COUNT = 255  # counts are uint8
ENTRY_FIELDS: tuple[str, ...] = ("id", "count", "logprob")  # the struct of one distinct drawn id
_CDF_ROWS = 256  # positions per float64 cumulative sum (bounds its memory: 256 × 151,936 × 8 B = 311 MB)


@dataclass(frozen=True)
class SampleSpec:
    """What `score --teacher-store sampled` draws: n per position, the scheme, the seed."""

    count: int = 12
    scheme: SampleScheme = "stratified"
    seed: int = 0


def uniforms(seed: int, sample_id: str, positions: int, count: int, scheme: str) -> np.ndarray:
    """[positions, count] float64 uniforms, ascending per row, from the stream of (seed, sample_id)."""
    if scheme not in SAMPLE_SCHEMES:
        raise ValueError(f"sample scheme {scheme!r}; choose one of {', '.join(SAMPLE_SCHEMES)}")
    key = int.from_bytes(hashlib.blake2b(f"{seed}\x00{sample_id}".encode(), digest_size=16).digest(), "little")
    u = np.random.Generator(np.random.PCG64(key)).random((positions, count))
    u = (np.arange(count) + u) / count if scheme == "stratified" else np.sort(u, axis=1)
    return np.minimum(u, np.nextafter(1.0, 0.0))  # (n − 1 + U)/n can round up to 1, past every token


def draw(logprobs, u):
    """Inverse-CDF draws: [c, V] log-probs (a float tensor) and [c, n] ascending uniforms in [0, 1) -> [c, n] long ids.

    x = min{i : F_i > u}, F the cumulative sum of p in float64 scaled so that F_V = 1. Ascending uniforms
    give ascending ids; a token of probability 0 is never drawn."""
    import torch

    u = torch.as_tensor(u, dtype=torch.float64, device=logprobs.device)
    out = torch.empty(u.shape, dtype=torch.long, device=logprobs.device)
    vocab = logprobs.shape[1]
    for a in range(0, logprobs.shape[0], _CDF_ROWS):
        cdf = logprobs[a : a + _CDF_ROWS].double().exp_().cumsum_(1)
        cdf /= cdf[:, -1:].clone()
        out[a : a + _CDF_ROWS] = torch.searchsorted(cdf, u[a : a + _CDF_ROWS].contiguous(), right=True).clamp_(max=vocab - 1)
    return out


def run_lengths(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[P, n] ascending ids -> (distinct ids per position [P], first-of-run mask [P, n], counts of the runs, flat).

    ``ids[first]`` are the distinct ids, position-major, and ``counts`` how often each was drawn."""
    first = np.ones(ids.shape, dtype=bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    starts = np.flatnonzero(first.reshape(-1))
    return first.sum(1), first, np.diff(np.append(starts, ids.size))


def sampled_table(sample_ids: Sequence[str], seqs: Sequence[Sequence[int]], draws: Sequence[tuple[np.ndarray, np.ndarray]],
                  spec: SampleSpec, vocab_size: int | None = None) -> pa.Table:
    """The part table of one chunk. `draws[i]` = (ids [P_i, n] ascending per row, teacher log-probs [P_i, n])."""
    n = spec.count
    max_id = max((int(d[0].max()) for d in draws if d[0].size), default=-1)
    max_tok = max((max(s) for s in seqs if len(s)), default=-1)
    it = ids_type(max(vocab_size or 0, max_id + 1, max_tok + 1))
    np_it = np.uint16 if it == pa.uint16() else np.int32
    per_pos: list[np.ndarray] = []
    flat_ids: list[np.ndarray] = []
    flat_counts: list[np.ndarray] = []
    flat_lp: list[np.ndarray] = []
    for ids, lp in draws:
        if ids.shape[1:] != (n,) or lp.shape != ids.shape:
            raise ValueError(f"draws of shape {ids.shape} / {lp.shape}; expected [positions, {n}] both")
        distinct, first, counts = run_lengths(ids)
        per_pos.append(distinct)
        flat_ids.append(ids[first])
        flat_counts.append(counts)
        flat_lp.append(lp[first])

    def offsets(lengths: list[int] | np.ndarray) -> pa.Array:
        return pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))

    def values(flat: list[np.ndarray], typ: pa.DataType, dtype) -> pa.Array:
        return pa.array(np.concatenate(flat).astype(dtype) if flat else np.zeros(0, dtype), typ)

    entries = pa.StructArray.from_arrays([values(flat_ids, it, np_it), values(flat_counts, pa.uint8(), np.uint8),
                                          values(flat_lp, pa.float16(), np.float16)], list(ENTRY_FIELDS))
    per_position = pa.ListArray.from_arrays(offsets(np.concatenate(per_pos) if per_pos else np.zeros(0, np.int64)), entries)
    tokens = [np.asarray(s, dtype=np_it) for s in seqs]
    cols = {
        "sample_id": pa.array(list(sample_ids), pa.string()),
        "token_ids": pa.ListArray.from_arrays(offsets([len(t) for t in tokens]),
                                              pa.array(np.concatenate(tokens) if tokens else np.zeros(0, np_it), it)),
        "sampled": pa.ListArray.from_arrays(offsets([len(d) for d in per_pos]), per_position),
    }
    meta = {"distillkit.sampled_count": str(n), "distillkit.sampled_scheme": spec.scheme,
            "distillkit.sampled_seed": str(spec.seed), "distillkit.sampled_max_id": str(max_id)}
    table = pa.table(cols).replace_schema_metadata(meta)
    return pa.Table.from_batches(table.to_batches(max_chunksize=ROWS_PER_BATCH), table.schema)


def is_sampled(schema: pa.Schema) -> bool:
    return "sampled" in schema.names


def sample_count(schema: pa.Schema) -> int:
    """n, the draws per position, of a part (from its metadata)."""
    return int((schema.metadata or {})[b"distillkit.sampled_count"])


def max_id(schema: pa.Schema) -> int:
    return int((schema.metadata or {})[b"distillkit.sampled_max_id"])


def decode_batch(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A record batch -> (row offsets [rows + 1], draws [P, n] as stored, teacher log-probs [P, n] float32).

    P = all positions of the batch; each row of draws is the position's n draws, ascending."""
    n = sample_count(batch.schema)
    col = batch.column(batch.schema.names.index("sampled"))
    off = col.offsets.to_numpy()
    per_pos = col.flatten()  # flatten() honours the batch's slice
    positions = len(per_pos)
    fields = dict(zip(ENTRY_FIELDS, per_pos.flatten().flatten()))  # StructArray.flatten() honours a slice, .field() not
    ids = fields["id"].to_numpy(zero_copy_only=False)
    counts = fields["count"].to_numpy(zero_copy_only=False).astype(np.int64)
    lp = fields["logprob"].to_numpy(zero_copy_only=False).astype(np.float32)
    if int(counts.sum()) != positions * n:
        raise ValueError(f"the counts of {positions} positions sum to {int(counts.sum())}, not {positions} × {n} draws")
    return off - off[0], np.repeat(ids, counts).reshape(positions, n), np.repeat(lp, counts).reshape(positions, n)


def store_figures(parts: Sequence, positions: int) -> dict[str, float]:
    """Bytes per stored position of the part files (sample and token ids included), as bench/bench_topk.py
    counts them, and for a sampled store the mean number of distinct ids per position."""
    import pyarrow.ipc as ipc

    size = sum(p.stat().st_size for p in parts)
    out: dict[str, float] = {"store_bytes_per_token": round(size / max(positions, 1), 2), "store_positions": positions}
    distinct = 0
    for p in parts:
        f = ipc.open_file(pa.memory_map(str(p), "r"))
        if not is_sampled(f.schema):
            return out
        i = f.schema.get_field_index("sampled")
        reader = ipc.open_file(pa.memory_map(str(p), "r"), options=ipc.IpcReadOptions(included_fields=[i]))
        distinct += sum(len(reader.get_batch(b).column(0).flatten().flatten()) for b in range(reader.num_record_batches))
    if parts:
        out["sampled_distinct_per_token"] = round(distinct / max(positions, 1), 3)
    return out


__all__ = ["SampleScheme", "SAMPLE_SCHEMES", "MAX_SAMPLE_COUNT", "ENTRY_FIELDS", "SampleSpec", "uniforms", "draw", "run_lengths",
           "sampled_table", "is_sampled", "sample_count", "max_id", "decode_batch", "store_figures"]
