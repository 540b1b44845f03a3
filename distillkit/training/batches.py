"""Training sequences and micro-batches: tokenized like the score stage, padded on the right.

A sample's targets are ``ids[target_start:]`` (``distillkit.data.tokenize``: 1 for text, the
prompt length for prompt/response data), so position t of a batch is trained to predict ``ids[t+1]``
when ``t + 1 >= target_start``; padding and prompt positions carry label -100 and are excluded
from both CE and KD.

Packing (``collate(..., pack=True)``): the micro-batch's samples are laid first-fit-decreasing into
rows no wider than its longest sample, each sample's positions restarting at 0. The batch then carries
`position_ids` and no 2-D attention mask, and transformers (>= 4.54, `masking_utils`) turns the position
restarts into a block-diagonal causal mask (eager / SDPA / flex; flash-attention's varlen path on CUDA),
so no token sees another sample. Labels and stored teacher rows sit at each sample's own offsets, and the
last position of a sample predicts nothing, so the token losses -- and their mean, the micro-batch's
loss -- are those of the padded batch (tests/test_packing.py), on fewer padded positions.

Offline teachers (`TopKStore`): the score stage's ``topk/part-*.arrow`` rows, where row t of a
sample holds the teacher's top-k for the distribution predicting ``token_ids[t+1]`` -- exactly the
batch position t, so stored rows line up with the labels without any shifting. A score artifact made
with ``--teacher-store sampled`` holds ``sampled/part-*.arrow`` instead (`distillkit.sampled_store`): the same
store reads them, and a row is then the position's n draws from the teacher with their log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa

from distillkit.errors import DataError

if TYPE_CHECKING:
    import torch

IGNORE = -100


@dataclass(slots=True)
class Batch:
    """One micro-batch. Shapes [b, L]; top-k [b, L, k] (offline teacher only). A packed batch has
    `position_ids` (restarting at 0 for each sample) and its attention mask marks the real tokens only
    (it is not given to the model, which builds the block-diagonal mask from the positions)."""

    input_ids: "torch.Tensor"
    attention_mask: "torch.Tensor"
    labels: "torch.Tensor"  # the token position t predicts, or IGNORE
    num_targets: int
    topk_ids: "torch.Tensor | None" = None
    topk_logprobs: "torch.Tensor | None" = None
    position_ids: "torch.Tensor | None" = None  # packed batches only

    def model_inputs(self) -> dict[str, "torch.Tensor"]:
        """The decoder's keyword arguments: ids and the padding mask, or ids and the packed positions. No KV
        cache: a forward pass over whole sequences needs none, and transformers reads packed positions only
        without one."""
        if self.position_ids is None:
            return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "use_cache": False}
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}


@dataclass(slots=True)
class Sequences:
    """Tokenized samples, addressed by row index."""

    sample_id: list[str]
    domain: list[str]
    ids: list[np.ndarray]  # int64 token ids, at most seq_len
    target_start: np.ndarray  # int64
    num_targets: np.ndarray  # int64: len(ids) - target_start

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_rows(rows: pa.Table, fmt: str, tok, max_length: int, seq_len: int, chat: bool = False) -> Sequences:
    """Tokenize like the score stage (same `max_length` and chat template), then keep the first `seq_len` tokens."""
    from distillkit.data import tokenize

    s = tokenize(rows, fmt, tok, max_length, chat)
    if s.dropped:
        raise DataError(f"{s.dropped} of {rows.num_rows} samples tokenize to fewer than 2 tokens now, although the score stage "
                        "kept them: the tokenizer differs from the one used for scoring")
    ids = [np.asarray(x[:seq_len], dtype=np.int64) for x in s.ids]
    start = np.asarray(s.target_start, dtype=np.int64)
    n = np.array([max(len(x) - st, 0) for x, st in zip(ids, start)], dtype=np.int64)
    return Sequences(s.sample_id, s.domain, ids, start, n)


class TopKStore:
    """The teacher's stored top-k for the samples a run uses, streamed from the score artifact's parts.

    Opening indexes where each sample lies (part, record batch, row) and checks its stored sequence
    against the tokenized data, reading only the sample_id and token_ids columns; `rows` then decodes
    the top-k of the samples a batch needs, a record batch at a time (a few cached), so memory stays
    at a few record batches however large the artifact. Ids come back as int64, log-probs as
    dequantised fp32 (`distillkit.topk.decode`); schema-1 float16 parts read too.

    `store` says what the artifact holds: "topk", or "sampled" (``score --teacher-store sampled``), whose
    rows are each position's k = n draws (ids repeated by their counts) with the teacher's log-probs; the
    loss must then be told (`LossSpec.store`).
    """

    def __init__(self, score_dir, seqs: Sequences, max_length: int, cache_batches: int = 16) -> None:
        from distillkit import sampled_store as sampled
        from distillkit.artifacts import read_artifact
        from distillkit.errors import ArtifactError
        from distillkit.topk import PartReader, table_format

        art = read_artifact(score_dir, "score")
        parts = art.files("topk/")
        self.store = "topk" if parts else "sampled"
        if not parts:
            parts = art.files("sampled/")
        if not parts:
            raise DataError(f"teacher_mode = 'offline' needs the teacher's stored top-k or sampled tokens, but {art.path} has "
                            "neither: rescore with --top-k K (e.g. 32) or --teacher-store sampled, or use teacher_mode = 'online'")
        self.reader = PartReader([art.file(name) for name in parts], cache_batches=cache_batches,
                                 decode=sampled.decode_batch if self.store == "sampled" else None)
        want = {sid: i for i, sid in enumerate(seqs.sample_id)}
        self.where = np.full((len(seqs), 3), -1, dtype=np.int64)  # part, record batch, row
        self.num_rows = np.array([max(len(x) - 1, 0) for x in seqs.ids], dtype=np.int64)
        self.k, self.max_id, self.formats, widths = 0, -1, set(), set()
        for p, name in enumerate(parts):
            try:
                schema = self.reader.schema(p)
                f = self.reader.open(p, ["sample_id", "token_ids"])
            except (pa.ArrowInvalid, OSError, KeyError) as e:
                raise ArtifactError(f"{art.path / name} is not a readable top-k part ({e}); rescore with --overwrite") from e
            try:
                if self.store == "sampled":
                    fmt, self.k = "sampled", sampled.sample_count(schema)
                else:
                    fmt, self.k = table_format(schema), schema.field("topk_ids").type.value_type.list_size
            except (ValueError, KeyError):
                raise ArtifactError(f"{art.path / name} has no top-k log-prob column (or sample count); rescore with "
                                    "--overwrite") from None
            self.formats.add(fmt)
            widths.add(self.k)
            used = False
            for b in range(f.num_record_batches):
                batch = f.get_batch(b)
                sid = batch.column(0).to_pylist()
                tok = batch.column(1)
                off, flat = tok.offsets.to_numpy(), tok.flatten().to_numpy()
                for j, s in enumerate(sid):
                    i = want.get(s)
                    if i is None:
                        continue
                    used = True
                    stored, mine = flat[off[j] - off[0] : off[j + 1] - off[0]], seqs.ids[i]
                    if len(stored) < len(mine) or not np.array_equal(stored[: len(mine)], mine):
                        raise DataError(f"sample {s!r}: the stored top-k sequence differs from the tokenized data "
                                        "(data or tokenizer changed since scoring); rescore")
                    self.where[i] = (p, b, j)
            if used:
                self.max_id = max(self.max_id, self._max_id(p, schema))
        if len(widths) > 1:
            raise ArtifactError(f"{art.path} mixes {'sample counts' if self.store == 'sampled' else 'top-k sizes'} "
                                f"({', '.join(map(str, sorted(widths)))}) across its parts; rescore with --overwrite")
        if len(self.formats) > 1:
            raise ArtifactError(f"{art.path} mixes top-k formats ({', '.join(sorted(self.formats))}); rescore with --overwrite")
        missing = [seqs.sample_id[i] for i in np.flatnonzero(self.where[:, 0] < 0)]
        if missing:
            raise DataError(f"{len(missing)} samples have no stored top-k in {art.path} (e.g. {missing[0]!r}); "
                            "the score artifact does not match the plan")

    def _max_id(self, part: int, schema: pa.Schema) -> int:
        meta = schema.metadata or {}
        if b"distillkit.sampled_max_id" in meta:
            return int(meta[b"distillkit.sampled_max_id"])
        if b"distillkit.topk_max_id" in meta:
            return int(meta[b"distillkit.topk_max_id"])
        f = self.reader.open(part, ["topk_ids"])  # schema 1: scan the ids column, one record batch at a time
        return max((int(np.max(f.get_batch(b).column(0).flatten().flatten().to_numpy(), initial=-1))
                    for b in range(f.num_record_batches)), default=-1)

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample i's (ids [n, k] int64, log-probs [n, k] float32), n = len(seqs.ids[i]) − 1 (sampled: k = the
        draws per position, ascending, and each draw's teacher log-prob)."""
        p, b, j = (int(x) for x in self.where[i])
        off, ids, lp = self.reader.batch(p, b)
        a = int(off[j])
        n = min(int(self.num_rows[i]), int(off[j + 1]) - a)
        return ids[a : a + n].astype(np.int64), lp[a : a + n]


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices into `lengths`, grouped into bins whose lengths sum to <= capacity.

    Deterministic (ties by index); a length above capacity gets a bin of its own."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, r in enumerate(room):
            if lengths[i] <= r:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def padded_slots(seqs: Sequences, rows: Sequence[int], pack: bool = False) -> int:
    """Token positions (real + padding) a micro-batch of `rows` computes: rows × width."""
    lengths = [len(seqs.ids[i]) for i in rows]
    width = max(lengths)
    if not pack:
        return len(rows) * width
    bins = pack_bins(lengths, width)
    return len(bins) * max(sum(lengths[j] for j in b) for b in bins)


def collate(seqs: Sequences, rows: Sequence[int], pad_id: int, device, topk: TopKStore | None = None,
            pack: bool = False) -> Batch:
    """Right-padded micro-batch of `rows` with aligned labels (and stored top-k rows); `pack`: the rows'
    samples packed into as few rows as fit the longest one (see the module doc)."""
    import torch

    rows = list(rows)
    lengths = [len(seqs.ids[i]) for i in rows]
    layout = ([[rows[j] for j in b] for b in pack_bins(lengths, max(lengths))] if pack else [[i] for i in rows])
    width = max(sum(len(seqs.ids[i]) for i in line) for line in layout)
    ids = np.full((len(layout), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(layout), width), dtype=np.int64)
    labels = np.full((len(layout), width), IGNORE, dtype=np.int64)
    pos = np.zeros((len(layout), width), dtype=np.int64)
    where: list[tuple[int, int, int]] = []  # (batch row, offset, sample row)
    for r, line in enumerate(layout):
        o = 0
        for i in line:
            x, n = seqs.ids[i], len(seqs.ids[i])
            ids[r, o : o + n] = x
            mask[r, o : o + n] = 1
            pos[r, o : o + n] = np.arange(n)
            a = max(int(seqs.target_start[i]), 1)
            labels[r, o + a - 1 : o + n - 1] = x[a:]
            where.append((r, o, i))
            o += n
        pos[r, o:] = np.arange(width - o)  # padding: a segment of its own
    batch = Batch(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device),
                  torch.from_numpy(labels).to(device), int((labels != IGNORE).sum()),
                  position_ids=torch.from_numpy(pos).to(device) if pack else None)
    if topk is not None:
        k = topk.k
        t_ids = np.zeros((len(layout), width, k), dtype=np.int64)
        t_lp = np.zeros((len(layout), width, k), dtype=np.float32)
        for r, o, i in where:
            ids_i, lp_i = topk.rows(i)
            n = len(ids_i)
            t_ids[r, o : o + n] = ids_i
            t_lp[r, o : o + n] = lp_i
        batch.topk_ids = torch.from_numpy(t_ids).to(device)
        batch.topk_logprobs = torch.from_numpy(t_lp).to(device)
    return batch


def packing_supported() -> bool:
    """The installed transformers builds block-diagonal masks from packed position ids (>= 4.54)."""
    try:
        from transformers import masking_utils
    except ImportError:
        return False
    return hasattr(masking_utils, "find_packed_sequence_indices")


__all__ = ["Batch", "Sequences", "TopKStore", "tokenize_rows", "collate", "pack_bins", "padded_slots", "packing_supported", "IGNORE"]
