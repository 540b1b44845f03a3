"""The stored top-k teacher (``score --top-k K``): on-disk format, encoding, and a streaming reader.

Each ``topk/part-NNNNN.arrow`` holds one score chunk, written as record batches of
``ROWS_PER_BATCH`` samples (the unit a reader decompresses), zstd-compressed. One row per
sample; each list column has one entry per position t = 0..len(token_ids)−2, the teacher's
distribution that predicts ``token_ids[t+1]``:

- ``token_ids``     list<uint16 | int32>: the scored sequence.
- ``topk_ids``      list<fixed_size_list<uint16 | int32, K>>: the top-K ids, most probable first.
  uint16 when the vocabulary has at most 65,536 ids, else int32.
- ``topk_logtail``  list<float16>: log(1 − Σ_topK p), the teacher's exact mass outside the K ids
  (computed from the fp32 log-probs at write time; −inf when the K ids hold all the mass).
- format ``uint8`` (default): ``topk_codes`` list<fixed_size_list<uint8, K>> and ``topk_scale``
  list<float16>: code_i = round(255 · (lp_max − lp_i) / scale), scale = lp_max − lp_min of the
  position (rounded up to float16). The most probable id has code 0.
- format ``float16``: ``topk_logprobs`` list<fixed_size_list<float16, K>>.

Decoding (`decode`) puts the top-k on the fp32 log-prob scale: rel_i = −code_i · scale / 255, then
shifts the whole row by one constant so that Σ_topK p = 1 − tail exactly (float16 log-probs get the
same shift). So the sparse loss's tail bucket, 1 − Σ_topK p, is the stored tail, not the sum of
rounded values, and the relative probabilities within the k ids are the quantised ones.

Why a per-position linear grid in *log* space: the KL that rounding adds is ≈ ½ Σ p_i ε_i² with ε_i
the log-prob error, so a grid that bounds ε uniformly (unlike a grid on p) bounds the added KL for
every token whatever its probability; a per-position range (rather than a fixed one) spends the 256
levels on the span the position actually has. Error bound (tested): |decoded − lp| ≤ scale / 255
+ 2e-3 · (1 + |lp|): half a step of rounding plus at most half a step of shift, and float16 rounding of
the scale and the tail. The added KL is ≈ (scale / 255)² / 24 per token (~1e-4 nats at scale 12).

Schema version 1 artifacts (float16 ``topk_logprobs``, int32 ids, no tail column) still read; their
tail is 1 − Σ of the rounded values, as before.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

TOPK_FORMATS: tuple[str, ...] = ("uint8", "float16")
ROWS_PER_BATCH = 8  # samples per Arrow record batch: what one random read decompresses
UINT16_VOCAB = 65536
_MAX_SPAN = 1.0e4  # a −inf log-prob (masked logit) is stored as lp_max − this


def ids_type(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= UINT16_VOCAB else pa.int32()


def _lse(x: np.ndarray) -> np.ndarray:
    """Row-wise logsumexp in float64 ([n, k] -> [n])."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.sum(np.exp(x - m), axis=1, keepdims=True)) + m)[:, 0]


def log_tail(lp: np.ndarray) -> np.ndarray:
    """log(1 − Σ_k p) per row from [n, k] log-probs, in float64; −inf when Σ_k p rounds to ≥ 1."""
    head = np.minimum(_lse(lp), 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.maximum(-np.expm1(head), 0.0))


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 − e^x) for x ≤ 0 (float64), accurate on both sides of −log 2; x = −inf gives 0."""
    x = np.minimum(np.asarray(x, dtype=np.float64), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > -np.log(2.0), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def encode(lp: np.ndarray, fmt: str) -> dict[str, np.ndarray]:
    """[n, k] fp32 log-probs -> the per-position arrays of `fmt` (see the module doc)."""
    if fmt not in TOPK_FORMATS:
        raise ValueError(f"top-k format {fmt!r}; choose one of {', '.join(TOPK_FORMATS)}")
    lp = np.asarray(lp, dtype=np.float32)
    out = {"logtail": log_tail(lp).astype(np.float16)}
    if fmt == "float16":
        out["logprobs"] = lp.astype(np.float16)
        return out
    top = lp.max(axis=1, keepdims=True)
    span = np.minimum(top - lp, _MAX_SPAN)  # ≥ 0; −inf entries become the largest span
    scale = span.max(axis=1)
    s16 = scale.astype(np.float16)
    low = s16.astype(np.float32) < scale  # round the scale up, so every code fits in 0..255
    s16[low] = np.nextafter(s16[low], np.float16(np.inf))
    s = s16.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.where(s > 0, np.rint(span / np.where(s > 0, s, 1.0) * 255.0), 0.0)
    out["codes"] = np.clip(codes, 0, 255).astype(np.uint8)
    out["scale"] = s16
    return out


def decode(*, codes: np.ndarray | None = None, scale: np.ndarray | None = None, logprobs: np.ndarray | None = None,
           logtail: np.ndarray | None = None) -> np.ndarray:
    """Stored arrays of n positions -> [n, k] float32 log-probs (the sum matches the stored tail)."""
    if codes is not None:
        rel = codes.astype(np.float32) * (np.asarray(scale, dtype=np.float32)[:, None] / np.float32(-255.0))
    else:
        rel = np.asarray(logprobs, dtype=np.float32)
    if logtail is None or rel.shape[0] == 0:  # schema 1: the rounded values as they are
        return rel.astype(np.float32, copy=False)
    head = np.maximum(_log1mexp(np.asarray(logtail, dtype=np.float64)), -100.0)  # a tail of 1 would zero the top-k
    shift = head - _lse(rel)
    return (rel + shift[:, None].astype(np.float32)).astype(np.float32, copy=False)


def topk_table(sample_ids: Sequence[str], seqs: Sequence[Sequence[int]], scores, fmt: str = "uint8",
               vocab_size: int | None = None) -> pa.Table:
    """The part table for one chunk; `scores` are `SequenceScores` with top-k (see the module doc)."""
    k = scores[0].topk_ids.shape[1]
    max_id = max((int(sc.topk_ids.max()) for sc in scores if sc.topk_ids.size), default=-1)
    max_tok = max((max(s) for s in seqs if len(s)), default=-1)
    it = ids_type(max(vocab_size or 0, max_id + 1, max_tok + 1))  # an id past the tokenizer (padded head) widens it
    np_it = np.uint16 if it == pa.uint16() else np.int32
    enc = [encode(sc.topk_logprobs, fmt) for sc in scores]

    def nested(arrs: list[np.ndarray], typ: pa.DataType) -> pa.Array:
        """list<fixed_size_list<typ, k>> from per-sample [n_i, k] arrays, without going through Python lists."""
        offsets = np.concatenate([[0], np.cumsum([a.shape[0] for a in arrs])]).astype(np.int32)
        flat = np.concatenate([a.reshape(-1) for a in arrs]) if arrs else np.zeros(0)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, typ), k)
        return pa.ListArray.from_arrays(pa.array(offsets), inner)

    def listed(arrs: list[np.ndarray], typ: pa.DataType) -> pa.Array:
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrs])]).astype(np.int32)
        flat = np.concatenate([np.asarray(a).reshape(-1) for a in arrs]) if arrs else np.zeros(0)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, typ))

    cols: dict[str, pa.Array] = {
        "sample_id": pa.array(list(sample_ids), pa.string()),
        "token_ids": listed([np.asarray(s, dtype=np_it) for s in seqs], it),
        "topk_ids": nested([sc.topk_ids.astype(np_it) for sc in scores], it),
    }
    if fmt == "uint8":
        cols["topk_codes"] = nested([e["codes"] for e in enc], pa.uint8())
        cols["topk_scale"] = listed([e["scale"] for e in enc], pa.float16())
    else:
        cols["topk_logprobs"] = nested([e["logprobs"] for e in enc], pa.float16())
    cols["topk_logtail"] = listed([e["logtail"] for e in enc], pa.float16())
    table = pa.table(cols).replace_schema_metadata({"distillkit.topk_format": fmt, "distillkit.topk_max_id": str(max_id)})
    return pa.Table.from_batches(table.to_batches(max_chunksize=ROWS_PER_BATCH), table.schema)


def table_format(schema: pa.Schema) -> str:
    """'uint8', 'float16', or 'float16-v1' (schema 1: no tail column) from a part's columns."""
    names = set(schema.names)
    if "topk_codes" in names:
        return "uint8"
    if "topk_logprobs" in names:
        return "float16" if "topk_logtail" in names else "float16-v1"
    raise ValueError("no topk_codes or topk_logprobs column")


def decode_batch(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A record batch -> (row offsets [rows + 1], ids [n, k] as stored, log-probs [n, k] float32), n = all positions."""
    names = batch.schema.names

    def column(name: str) -> tuple[np.ndarray, np.ndarray]:
        col = batch.column(names.index(name))
        off = col.offsets.to_numpy()
        vals = col.flatten()  # flatten() honours the batch's slice of the values
        if pa.types.is_fixed_size_list(vals.type):
            k = vals.type.list_size
            return off - off[0], vals.flatten().to_numpy(zero_copy_only=False).reshape(-1, k)
        return off - off[0], vals.to_numpy(zero_copy_only=False)

    off, ids = column("topk_ids")
    tail = column("topk_logtail")[1] if "topk_logtail" in names else None
    if "topk_codes" in names:
        lp = decode(codes=column("topk_codes")[1], scale=column("topk_scale")[1], logtail=tail)
    else:
        lp = decode(logprobs=column("topk_logprobs")[1], logtail=tail)
    return off, ids, lp


def decode_rows(batch: pa.RecordBatch, row: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n, k] int64, log-probs [n, k] float32) of one sample of a record batch."""
    off, ids, lp = decode_batch(batch)
    return ids[off[row] : off[row + 1]].astype(np.int64), lp[off[row] : off[row + 1]]


class PartReader:
    """Random access to a score artifact's teacher parts, a record batch at a time, with a small LRU cache.

    `decode` turns a record batch into (row offsets, ids, log-probs): `decode_batch` for top-k parts,
    `distillkit.sampled_store.decode_batch` for sampled ones."""

    def __init__(self, paths: Sequence[Path], cache_batches: int = 16, decode=None) -> None:
        self.paths = list(paths)
        self.cache: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self.cache_batches = cache_batches
        self.decode = decode or decode_batch

    def schema(self, part: int) -> pa.Schema:
        return ipc.open_file(pa.memory_map(str(self.paths[part]), "r")).schema

    def open(self, part: int, fields: Sequence[str] | None = None):
        """An IPC file reader of one part; with `fields`, only those columns are read (and decompressed)."""
        src = pa.memory_map(str(self.paths[part]), "r")
        if not fields:
            return ipc.open_file(src)
        schema = ipc.open_file(src).schema
        missing = [f for f in fields if schema.get_field_index(f) < 0]
        if missing:
            raise KeyError(f"no column {missing[0]!r}")
        return ipc.open_file(src, options=ipc.IpcReadOptions(included_fields=[schema.get_field_index(f) for f in fields]))

    def batch(self, part: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`decode` of one record batch (the last `cache_batches` are kept)."""
        key = (part, index)
        b = self.cache.get(key)
        if b is None:
            b = self.decode(self.open(part).get_batch(index))
            self.cache[key] = b
            if len(self.cache) > self.cache_batches:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        return b


__all__ = ["TOPK_FORMATS", "ROWS_PER_BATCH", "encode", "decode", "decode_batch", "decode_rows", "topk_table", "ids_type", "log_tail",
           "table_format", "PartReader"]
