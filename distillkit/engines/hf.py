"""The transformers engine: batched, length-sorted, padding-aware scoring on CPU or GPU.

Full-vocabulary logits are never built for a whole batch: the decoder's hidden
states go through the LM head a chunk of positions at a time, and each chunk's
log-softmax is taken in fp32 and reduced to the target log-prob (and top-k)
before the next chunk.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from distillkit.engines.base import DType, SequenceScores


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
        position_chunk: int = 256,
    ) -> None:
        import torch

        from distillkit.models import load_model

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model if model is not None else load_model(model_dir, dtype=dtype, device=self.device)
        self.model.eval()
        self.dtype = next(self.model.parameters()).dtype
        self.batch_tokens = batch_tokens
        self.position_chunk = position_chunk
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
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, : lengths[i]] = torch.as_tensor(sequences[i], dtype=torch.long)
                mask[r, : lengths[i]] = 1
            with torch.inference_mode():
                hidden = decoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
                for r, i in enumerate(batch):
                    out[i] = self._score_row(hidden[r, : lengths[i] - 1], ids[r, 1 : lengths[i]].to(self.device), top_k)
            if on_batch is not None:
                on_batch(sum(lengths[i] for i in batch))
        return out  # type: ignore[return-value]

    def _score_row(self, hidden, targets, top_k: int) -> SequenceScores:
        import torch

        n = targets.shape[0]
        tgt = np.empty(n, dtype=np.float32)
        tk_ids = np.empty((n, top_k), dtype=np.int32) if top_k else None
        tk_lp = np.empty((n, top_k), dtype=np.float32) if top_k else None
        for s in range(0, n, self.position_chunk):
            e = min(n, s + self.position_chunk)
            logits = self._logits(hidden[s:e])
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            tgt[s:e] = (logits.gather(-1, targets[s:e, None]) - lse).squeeze(-1).cpu().numpy()
            if top_k:
                vals, idx = logits.topk(top_k, dim=-1)
                tk_lp[s:e] = (vals - lse).cpu().numpy()  # type: ignore[index]
                tk_ids[s:e] = idx.to(torch.int32).cpu().numpy()  # type: ignore[index]
        return SequenceScores(tgt, tk_ids, tk_lp)

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
