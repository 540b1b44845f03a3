"""The transformers engine: batched, length-sorted, padding-aware scoring on CPU or GPU.

Full-vocabulary logits are never built for a whole batch: the decoder's hidden
states go through the LM head a chunk of positions at a time, and each chunk's
log-softmax is taken in fp32 and reduced to the target log-prob (and top-k)
before the next chunk.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from distillkit.engines.base import SequenceScores
from distillkit.models import DType, load_model


def right_padded(sequences: Sequence[Sequence[int]], batch: Sequence[int], pad_id: int):
    """(ids, attention mask) [len(batch), longest] long tensors of `batch`'s sequences, padded on the right."""
    import torch

    width = max(len(sequences[i]) for i in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, i in enumerate(batch):
        ids[r, : len(sequences[i])] = torch.as_tensor(sequences[i], dtype=torch.long)
        mask[r, : len(sequences[i])] = 1
    return ids, mask


def length_sorted_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int = 256) -> list[list[int]]:
    """Group indices longest-first so each padded batch holds at most `batch_tokens` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]  # the first (longest) sets the padded width
        if cur and ((len(cur) + 1) * width > batch_tokens or len(cur) >= max_batch):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


class HFEngine:
    name = "hf"

    def __init__(
        self,
        model_dir: str,
        dtype: DType = "auto",
        batch_tokens: int = 8192,
        model=None,
        device: str | None = None,
        vocab_size: int | None = None,
        position_chunk: int | None = None,
    ) -> None:
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model if model is not None else load_model(model_dir, dtype=dtype, device=self.device)
        self.model.eval()
        self.dtype = next(self.model.parameters()).dtype
        self.batch_tokens = batch_tokens
        # logits rows per LM-head chunk: 256 on CPU (cache-sized), 2048 on a GPU (fewer, larger kernels;
        # 2048 × 151,936 fp32 logits = 1.2 GB)
        self.position_chunk = position_chunk or (256 if self.device == "cpu" else 2048)
        self.vocab_size = vocab_size
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.pad_id = cfg.pad_token_id if getattr(cfg, "pad_token_id", None) is not None else 0
        eos = getattr(cfg, "eos_token_id", None)
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))

    # ------------------------------------------------------------ scoring
    def _logits(self, hidden):
        """LM head (+ softcap) on a chunk of hidden states, in fp32, sliced to the tokenizer vocab."""
        import torch

        head = self.model.get_output_embeddings()
        logits = head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        if self.vocab_size is not None:
            logits = logits[..., : self.vocab_size]
        return logits

    def score(
        self,
        sequences: Sequence[Sequence[int]],
        top_k: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[SequenceScores]:
        import torch

        out: list[SequenceScores | None] = [None] * len(sequences)
        lengths = [len(s) for s in sequences]
        decoder = self.model.get_decoder()
        for batch in length_sorted_batches(lengths, self.batch_tokens):
            ids, mask = right_padded(sequences, batch, self.pad_id)
            with torch.inference_mode():
                hidden = decoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
                n_pos = [lengths[i] - 1 for i in batch]
                scored = self._score_positions(hidden[:, :-1], ids[:, 1:], mask[:, 1:].bool(), top_k)
            starts = np.concatenate([[0], np.cumsum(n_pos)])
            for r, i in enumerate(batch):
                a, b = int(starts[r]), int(starts[r + 1])
                out[i] = SequenceScores(*(x[a:b] if x is not None else None for x in scored))
            if on_batch is not None:
                on_batch(sum(lengths[i] for i in batch))
        return out  # type: ignore[return-value]

    def _score_positions(self, hidden, targets, valid, top_k: int):
        """(target log-probs [P], top-k ids [P, k], top-k log-probs [P, k]) as numpy, for the P valid
        positions of a batch in row-major order: `position_chunk` positions of logits at a time, results
        kept on the device and copied to the host once per batch (one sync, not one per row and chunk)."""
        import torch

        valid = valid.to(hidden.device)
        h, t = hidden[valid], targets.to(hidden.device)[valid]
        n = t.shape[0]
        tgt = torch.empty(n, dtype=torch.float32, device=h.device)
        tk_ids = torch.empty((n, top_k), dtype=torch.int32, device=h.device) if top_k else None
        tk_lp = torch.empty((n, top_k), dtype=torch.float32, device=h.device) if top_k else None
        for s in range(0, n, self.position_chunk):
            e = min(n, s + self.position_chunk)
            logits = self._logits(h[s:e])
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            tgt[s:e] = (logits.gather(-1, t[s:e, None]) - lse).squeeze(-1)
            if top_k:
                vals, idx = logits.topk(top_k, dim=-1)
                tk_lp[s:e] = vals - lse  # type: ignore[index]
                tk_ids[s:e] = idx  # type: ignore[index]
        return tuple(x.cpu().numpy() if x is not None else None for x in (tgt, tk_ids, tk_lp))

    # ------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int = 16) -> list[list[int]]:
        """Greedy decoding, left-padded batches of similar length; new tokens only, cut at EOS."""
        import torch

        results: list[list[int]] = [[] for _ in prompts]
        lengths = [len(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
        for b in range(0, len(order), batch_size):
            batch = order[b : b + batch_size]
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, width - lengths[i] :] = torch.as_tensor(prompts[i], dtype=torch.long)
                mask[r, width - lengths[i] :] = 1
            with torch.inference_mode():
                gen = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.pad_id,
                )
            for r, i in enumerate(batch):
                new = gen[r, width:].tolist()
                for j, t in enumerate(new):
                    if t in self.eos_ids:
                        new = new[:j]
                        break
                results[i] = new
        return results

    def close(self) -> None:
        self.model = None
