"""On-policy distillation (GKD): the student answers, the teacher scores the answer, the loss covers it.

A step is on-policy with probability λ (``fraction``, GKD's lmbda; 0 = the off-policy path untouched,
1 = every step), decided by (seed, step) alone. An on-policy step keeps the rows the sampler drew
-- so the POCL stage's pool and the DDK mixture still decide *which* prompts are used -- and replaces
each row's target by the student's own continuation:

- the prompt is the row's prompt (prompt/response data) or its first ``prefix_tokens`` tokens (plain
  text), cut from the left so that prompt + ``max_new_tokens`` fits ``seq_len``;
- the student samples up to ``max_new_tokens`` tokens (``temperature``, ``top_p``; temperature 0 is
  greedy) with `transformers` ``generate``: one left-padded batch per micro-batch, KV cache on, no
  per-token Python loop over the batch (`distillkit.evaluation.generation.sample_answers`);
- the batch trained on is prompt + answer, right-padded like any batch, with targets on the answer
  only (its EOS included when the student stopped), so the teacher, run online on it, scores exactly
  the student's tokens.

The objective of an on-policy batch is the divergence alone, at the stage's T (GKD: no
cross-entropy on the student's own samples); off-policy batches keep the plan's (1-λ)·CE + λ·D.

Determinism: each micro-batch is generated under ``torch.random.fork_rng`` seeded from
(seed, step, rank, micro-batch), so the samples depend only on those and the weights. A resumed
run therefore draws exactly the samples of an uninterrupted one without any RNG in the checkpoint,
and the global RNG the rest of training uses is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

    from distillkit.training.batches import Batch, Sequences

PromptFrom = Literal["prompt", "prefix"]
_TAG_STEP, _TAG_GEN = 11, 12  # generator stream tags (the sampler uses 0 and 1)


@dataclass(frozen=True, slots=True)
class OnPolicy:
    """How on-policy steps generate; fixed for a run."""

    fraction: float  # λ: share of steps that are on-policy
    max_new_tokens: int
    temperature: float  # 0: greedy
    top_p: float
    prompt_from: PromptFrom  # "prompt": the row's prompt; "prefix": its first prefix_tokens tokens
    prefix_tokens: int
    seq_len: int
    seed: int
    pad_id: int
    eos_ids: tuple[int, ...]

    def is_on_policy(self, step: int) -> bool:
        """Whether optimizer step `step` (0-based) trains on the student's own samples."""
        if self.fraction <= 0.0:
            return False
        if self.fraction >= 1.0:
            return True
        return bool(np.random.default_rng([self.seed, _TAG_STEP, step]).random() < self.fraction)

    def prompt(self, seqs: Sequences, row: int) -> np.ndarray:
        """The tokens the student continues for training row `row`."""
        ids = seqs.ids[row]
        budget = self.seq_len - self.max_new_tokens
        if self.prompt_from == "prefix":
            return ids[: max(1, min(self.prefix_tokens, len(ids) - 1, budget))]
        end = max(1, min(int(seqs.target_start[row]), len(ids)))
        return ids[:end][-budget:]


def generation_seed(seed: int, step: int, rank: int, micro: int) -> int:
    """The torch seed of one micro-batch's generation (a 31-bit number derived from the four)."""
    return int(np.random.default_rng([seed, _TAG_GEN, step, rank, micro]).integers(0, 2**31 - 1))


def student_batch(model, seqs: Sequences, rows: Sequence[int], op: OnPolicy, *, step: int, rank: int, micro: int,
                  device, autocast: "torch.dtype | None" = None, pack: bool = False) -> Batch:
    """The student's answers to `rows`' prompts as a training batch (targets: the answers); `pack`: packed
    like an off-policy batch with --pack (the answers' lengths vary, so the padding saved is real)."""
    import torch

    from distillkit.evaluation.generation import sample_answers
    from distillkit.training.batches import Sequences as Seqs
    from distillkit.training.batches import collate

    prompts = [op.prompt(seqs, i) for i in rows]
    was_training = model.training
    model.eval()
    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    try:
        cuda = [torch.device(device).index or 0] if device_type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            with torch.autocast(device_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                answers = sample_answers(model, [p.tolist() for p in prompts], seed=generation_seed(op.seed, step, rank, micro),
                                         max_new_tokens=op.max_new_tokens, temperature=op.temperature, top_p=op.top_p,
                                         batch_size=len(prompts), pad_id=op.pad_id, eos_ids=op.eos_ids, keep_eos=True)
    finally:
        model.train(was_training)
    ids = [np.concatenate([p, np.asarray(a, dtype=np.int64)]) for p, a in zip(prompts, answers)]
    start = np.array([len(p) for p in prompts], dtype=np.int64)
    gen = Seqs([seqs.sample_id[i] for i in rows], [seqs.domain[i] for i in rows], ids, start,
               np.array([len(a) for a in answers], dtype=np.int64))
    return collate(gen, range(len(rows)), op.pad_id, device, pack=pack)


__all__ = ["OnPolicy", "PromptFrom", "student_batch", "generation_seed"]
