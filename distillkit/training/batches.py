"""Training sequences and micro-batches: tokenized like the score stage, padded on the right.

A sample's targets are ``ids[target_start:]`` (``distillkit.scoring.tokenize``: 1 for text, the
prompt length for prompt/response data), so position t of a batch is trained to predict ``ids[t+1]``
when ``t + 1 >= target_start``; padding and prompt positions carry label -100 and are excluded
from both CE and KD.

Offline teachers (`TopKStore`): the score stage's ``topk/part-*.arrow`` rows, where row t of a
sample holds the teacher's top-k for the distribution predicting ``token_ids[t+1]`` -- exactly the
batch position t, so stored rows line up with the labels without any shifting.
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
    """One micro-batch. Shapes [b, L]; top-k [b, L, k] (offline teacher only)."""

    input_ids: "torch.Tensor"
    attention_mask: "torch.Tensor"
    labels: "torch.Tensor"  # the token position t predicts, or IGNORE
    num_targets: int
    topk_ids: "torch.Tensor | None" = None
    topk_logprobs: "torch.Tensor | None" = None


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


def tokenize_rows(rows: pa.Table, fmt: str, tok, max_length: int, seq_len: int) -> Sequences:
    """Tokenize like the score stage (same `max_length`), then keep the first `seq_len` tokens."""
    from distillkit.scoring import tokenize

    s = tokenize(rows, fmt, tok, max_length)
    if s.dropped:
        raise DataError(f"{s.dropped} of {rows.num_rows} samples tokenize to fewer than 2 tokens now, although the score stage "
                        "kept them: the tokenizer differs from the one used for scoring")
    ids = [np.asarray(x[:seq_len], dtype=np.int64) for x in s.ids]
    start = np.asarray(s.target_start, dtype=np.int64)
    n = np.array([max(len(x) - st, 0) for x, st in zip(ids, start)], dtype=np.int64)
    return Sequences(s.sample_id, s.domain, ids, start, n)


class TopKStore:
    """The teacher's stored top-k log-probs for the samples a run uses, in memory (int32 ids, fp16/fp32 lps)."""

    def __init__(self, score_dir, seqs: Sequences, max_length: int) -> None:
        from distillkit.artifacts import read_artifact

        art = read_artifact(score_dir, "score")
        parts = art.files("topk/")
        if not parts:
            raise DataError(f"teacher_mode = 'offline' needs the teacher's top-k log-probs, but {art.path} has none: "
                            "rescore with --top-k K (e.g. 32), or use teacher_mode = 'online'")
        want = {sid: i for i, sid in enumerate(seqs.sample_id)}
        self.ids: list[np.ndarray | None] = [None] * len(seqs)
        self.logprobs: list[np.ndarray | None] = [None] * len(seqs)
        self.k = 0
        for name in parts:
            t = art.table(name, verify=False)
            sid = t.column("sample_id").to_pylist()
            keep = [j for j, s in enumerate(sid) if s in want]
            if not keep:
                continue
            t = t.take(pa.array(keep))
            tok_ids, tk_ids, tk_lp = (t.column(c).combine_chunks() for c in ("token_ids", "topk_ids", "topk_logprobs"))
            offsets = tk_ids.offsets.to_numpy()
            k = tk_ids.type.value_type.list_size
            self.k = k
            flat_ids = tk_ids.values.flatten().to_numpy().reshape(-1, k)
            flat_lp = tk_lp.values.flatten().to_numpy(zero_copy_only=False).reshape(-1, k)
            for r, j in enumerate(keep):
                i = want[sid[j]]
                stored = np.asarray(tok_ids[r].as_py(), dtype=np.int64)
                mine = seqs.ids[i]
                if len(stored) < len(mine) or not np.array_equal(stored[: len(mine)], mine):
                    raise DataError(f"sample {sid[j]!r}: the stored top-k sequence differs from the tokenized data "
                                    "(data or tokenizer changed since scoring); rescore")
                rows = slice(offsets[r], offsets[r] + max(len(mine) - 1, 0))
                self.ids[i], self.logprobs[i] = flat_ids[rows], flat_lp[rows]
        self.max_id = max((int(x.max()) for x in self.ids if x is not None and x.size), default=-1)
        missing = [seqs.sample_id[i] for i, x in enumerate(self.ids) if x is None]
        if missing:
            raise DataError(f"{len(missing)} samples have no stored top-k in {art.path} (e.g. {missing[0]!r}); "
                            "the score artifact does not match the plan")


def collate(seqs: Sequences, rows: Sequence[int], pad_id: int, device, topk: TopKStore | None = None) -> Batch:
    """Right-padded micro-batch of `rows` with aligned labels (and stored top-k rows)."""
    import torch

    width = max(len(seqs.ids[i]) for i in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE, dtype=np.int64)
    for r, i in enumerate(rows):
        x, n = seqs.ids[i], len(seqs.ids[i])
        ids[r, :n] = x
        mask[r, :n] = 1
        a = max(int(seqs.target_start[i]), 1)
        labels[r, a - 1 : n - 1] = x[a:]
    batch = Batch(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device),
                  torch.from_numpy(labels).to(device), int((labels != IGNORE).sum()))
    if topk is not None:
        k = topk.k
        t_ids = np.zeros((len(rows), width, k), dtype=np.int64)
        t_lp = np.zeros((len(rows), width, k), dtype=np.float32)
        for r, i in enumerate(rows):
            n = len(topk.ids[i])  # type: ignore[arg-type]
            t_ids[r, :n] = topk.ids[i]
            t_lp[r, :n] = topk.logprobs[i]
        batch.topk_ids = torch.from_numpy(t_ids).to(device)
        batch.topk_logprobs = torch.from_numpy(t_lp).to(device)
    return batch


__all__ = ["Batch", "Sequences", "TopKStore", "tokenize_rows", "collate", "IGNORE"]
