"""On-policy distillation (GKD): the student answers, the teacher scores the answer, the loss covers it.

A step is on-policy with probability λ (``fraction``, GKD's lmbda; 0 = the off-policy path untouched,
1 = every step), decided by (seed, step) alone. An on-policy step keeps the rows the sampler drew
-- so the POCL stage's pool and the DDK mixture still decide *which* prompts are used -- and replaces
each row's target by the student's own continuation:

- the prompt is the row's prompt (prompt/response data) or its first ``prefix_tokens`` tokens (plain
  text), cut from the left so that prompt + ``max_new_tokens`` fits ``seq_len``;
- the student samples up to ``max_new_tokens`` tokens (``temperature``, ``top_p``; temperature 0 is
  greedy) through an answer source: `HFAnswers` (default) runs `transformers` ``generate`` on the
  training model itself -- one left-padded batch per micro-batch, KV cache on, no per-token Python loop
  over the batch (`distillkit.sampling.sample_answers`); `VllmAnswers` samples in a vLLM
  engine holding a copy of the student, whose weights it replaces in place (``load_weights``) when they
  are ``refresh_every`` or more optimizer steps old, so the answers come from weights at most
  ``refresh_every - 1`` steps stale (1: always the current ones);
- the batch trained on is prompt + answer, right-padded like any batch, with targets on the answer
  only (its EOS included when the student stopped), so the teacher, run online on it, scores exactly
  the student's tokens.

The objective of an on-policy batch is the divergence alone, at the stage's T (GKD: no
cross-entropy on the student's own samples); off-policy batches keep the plan's (1-λ)·CE + λ·D.

Determinism: each micro-batch is generated under ``torch.random.fork_rng`` seeded from
(seed, step, rank, micro-batch), so the samples depend only on those and the weights. A resumed
run therefore draws exactly the samples of an uninterrupted one without any RNG in the checkpoint,
and the global RNG the rest of training uses is left as it was. vLLM samples each prompt with its
own seed derived from the same numbers; after a resume its first on-policy step pushes the weights,
so with ``refresh_every`` > 1 the answers of the interval it resumed in come from newer weights than
in an uninterrupted run (``refresh_every`` = 1 has no such interval).
"""

from __future__ import annotations

from dataclasses import dataclass
import time
from typing import TYPE_CHECKING, Literal, Protocol, Sequence

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


class AnswerSource(Protocol):
    """Where an on-policy step's answers come from (`HFAnswers`, `VllmAnswers`)."""

    name: str
    refresh_s: float  # seconds spent pushing weights into a separate engine so far (0 for HFAnswers)
    refreshes: int

    def answers(self, model, prompts: list[list[int]], op: OnPolicy, *, step: int, seed: int, device,
                autocast: "torch.dtype | None") -> list[list[int]]: ...


class HFAnswers:
    """`transformers` ``generate`` on the training model itself: always the current weights."""

    name, refresh_s, refreshes = "hf", 0.0, 0

    def answers(self, model, prompts, op, *, step, seed, device, autocast):
        import torch

        from distillkit.sampling import sample_answers

        was_training = model.training
        model.eval()
        device_type = "cuda" if str(device).startswith("cuda") else "cpu"
        try:
            cuda = [torch.device(device).index or 0] if device_type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                with torch.autocast(device_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                    return sample_answers(model, prompts, seed=seed, max_new_tokens=op.max_new_tokens,
                                          temperature=op.temperature, top_p=op.top_p, batch_size=len(prompts),
                                          pad_id=op.pad_id, eos_ids=op.eos_ids, keep_eos=True)
        finally:
            model.train(was_training)


class VllmAnswers:
    """A vLLM engine serving a copy of the student; its weights are replaced by the training model's when they
    are `refresh_every` or more optimizer steps old (and at the first on-policy step of a process)."""

    name = "vllm"

    def __init__(self, engine, refresh_every: int = 1) -> None:
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.engine, self.refresh_every = engine, refresh_every
        self.synced_step: int | None = None  # the step whose weights the engine holds
        self.refresh_s, self.refreshes = 0.0, 0

    def due(self, step: int) -> bool:
        return self.synced_step is None or step - self.synced_step >= self.refresh_every

    def answers(self, model, prompts, op, *, step, seed, device, autocast):
        if self.due(step):
            t0 = time.perf_counter()
            self.engine.load_weights(model.named_parameters(remove_duplicate=False))  # tied weights under every name
            self.refresh_s += time.perf_counter() - t0
            self.refreshes += 1
            self.synced_step = step
        return self.engine.sample(prompts, op.max_new_tokens, seed=seed, temperature=op.temperature, top_p=op.top_p,
                                  eos_ids=op.eos_ids)

    def close(self) -> None:
        self.engine.close()


def student_batch(model, seqs: Sequences, rows: Sequence[int], op: OnPolicy, *, step: int, rank: int, micro: int,
                  device, autocast: "torch.dtype | None" = None, pack: bool = False,
                  source: AnswerSource | None = None) -> Batch:
    """The student's answers to `rows`' prompts as a training batch (targets: the answers); `pack`: packed
    like an off-policy batch with --pack (the answers' lengths vary, so the padding saved is real); `source`:
    where the answers come from (default `HFAnswers`)."""
    from distillkit.training.batches import Sequences as Seqs
    from distillkit.training.batches import collate

    prompts = [op.prompt(seqs, i) for i in rows]
    answers = (source or HFAnswers()).answers(model, [p.tolist() for p in prompts], op, step=step,
                                              seed=generation_seed(op.seed, step, rank, micro), device=device,
                                              autocast=autocast)
    ids = [np.concatenate([p, np.asarray(a, dtype=np.int64)]) for p, a in zip(prompts, answers)]
    start = np.array([len(p) for p in prompts], dtype=np.int64)
    gen = Seqs([seqs.sample_id[i] for i in rows], [seqs.domain[i] for i in rows], ids, start,
               np.array([len(a) for a in answers], dtype=np.int64))
    return collate(gen, range(len(rows)), op.pad_id, device, pack=pack)


__all__ = ["AnswerSource", "HFAnswers", "OnPolicy", "PromptFrom", "VllmAnswers", "student_batch", "generation_seed"]
