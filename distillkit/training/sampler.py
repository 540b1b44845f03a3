"""Which samples each optimizer step trains on: curriculum stage pools x domain mixture.

Every step draws one *global* batch (all ranks, all accumulation micro-batches):

1. the domain of each of its rows i.i.d. from the mixture weights (DDK's r), with a generator
   seeded by (seed, step), so a step's domains depend only on the seed, the step and the weights;
2. each row's sample from its domain's stream: a shuffled pass over that domain's pool in the
   current stage (pool of stage s = the domain's samples whose curriculum stage is <= s). An
   exhausted stream starts a new, differently shuffled pass ("exhausted domains restart their
   stream", DDK); a stage change starts fresh streams over the larger pools.

Every rank runs the same sampler and takes its own slice of the global batch (`rank_slice`), so a
run on N processes sees exactly the batches of a single-process run with the same global batch.

The state (`state_dict`) is a few numbers per domain -- the permutations are re-derived from
(seed, domain, stage, pass) -- and is JSON-serialisable, so checkpoints resume the exact sequence.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from distillkit.errors import ConfigError, DataError

_DOMAINS, _STREAMS = 0, 1  # generator stream tags: domain draws vs per-domain shuffles


class CurriculumSampler:
    """Draws global batches of sample indices (rows of the plan's curriculum table).

    Args:
        domain: [N] int domain code of each sample (0..D-1).
        stage: [N] int first curriculum stage whose pool holds the sample.
        weights: [D] domain sampling probabilities (renormalised over domains with a non-empty pool).
        seed: the run's seed.
    """

    def __init__(self, domain: Sequence[int] | np.ndarray, stage: Sequence[int] | np.ndarray,
                 weights: Sequence[float] | np.ndarray, seed: int = 0) -> None:
        self.domain = np.asarray(domain, dtype=np.int64)
        self.stage_of = np.asarray(stage, dtype=np.int64)
        if self.domain.shape != self.stage_of.shape or self.domain.ndim != 1 or self.domain.size == 0:
            raise DataError(f"sampler needs one domain and one stage per sample, got {self.domain.shape} and {self.stage_of.shape}")
        self.num_domains = len(np.asarray(weights))
        if self.domain.min() < 0 or self.domain.max() >= self.num_domains:
            raise DataError(f"domain codes must be in 0..{self.num_domains - 1}, got {self.domain.min()}..{self.domain.max()}")
        self.num_stages = int(self.stage_of.max()) + 1
        self.seed = int(seed)
        self.step = 0  # global batches drawn so far
        self.stage = 0
        self.cursor = [0] * self.num_domains  # position in the current pass over the domain's pool
        self.passes = [0] * self.num_domains  # completed passes in the current stage
        self._perm_cache: dict[tuple[int, int, int], np.ndarray] = {}
        self.weights = np.zeros(self.num_domains)
        self.set_weights(weights)

    # ------------------------------------------------------------------ pools and weights
    def pool(self, domain: int, stage: int | None = None) -> np.ndarray:
        """Sample indices of `domain` in the pool of `stage` (default: the current one), in rank order."""
        s = self.stage if stage is None else stage
        return np.flatnonzero((self.domain == domain) & (self.stage_of <= s))

    def pool_sizes(self, stage: int | None = None) -> np.ndarray:
        s = self.stage if stage is None else stage
        return np.bincount(self.domain[self.stage_of <= s], minlength=self.num_domains)

    def set_weights(self, weights: Sequence[float] | np.ndarray) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.num_domains,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise DataError(f"domain weights must be {self.num_domains} finite non-negative numbers with a positive sum, got {w.tolist()}")
        self.weights = w / w.sum()

    def probabilities(self) -> np.ndarray:
        """The weights the next draw uses: zero for domains without samples in the current pool."""
        p = np.where(self.pool_sizes() > 0, self.weights, 0.0)
        if p.sum() <= 0:
            raise DataError(f"no domain with a positive weight has samples in stage {self.stage}'s pool")
        return p / p.sum()

    def set_stage(self, stage: int) -> None:
        """Switch to `stage`'s pool; every domain starts a fresh shuffled pass over it."""
        if not 0 <= stage < self.num_stages:
            raise ConfigError(f"stage {stage} does not exist (the plan has stages 0..{self.num_stages - 1})")
        if stage != self.stage:
            self.stage = int(stage)
            self.cursor = [0] * self.num_domains
            self.passes = [0] * self.num_domains
            self._perm_cache.clear()

    # ------------------------------------------------------------------ drawing
    def _permutation(self, d: int) -> np.ndarray:
        key = (d, self.stage, self.passes[d])
        perm = self._perm_cache.get(key)
        if perm is None:
            pool = self.pool(d)
            rng = np.random.default_rng([self.seed, _STREAMS, d, self.stage, self.passes[d]])
            perm = pool[rng.permutation(len(pool))]
            self._perm_cache = {key: perm, **{k: v for k, v in self._perm_cache.items() if k[0] != d}}
        return perm

    def _next_of(self, d: int) -> int:
        perm = self._permutation(d)
        if self.cursor[d] >= len(perm):
            self.passes[d] += 1
            self.cursor[d] = 0
            perm = self._permutation(d)
        i = int(perm[self.cursor[d]])
        self.cursor[d] += 1
        return i

    def draw_domains(self, size: int) -> np.ndarray:
        """The domains of the next global batch (does not advance the sampler)."""
        rng = np.random.default_rng([self.seed, _DOMAINS, self.step])
        return rng.choice(self.num_domains, size=size, p=self.probabilities())

    def next_batch(self, size: int) -> np.ndarray:
        """The next global batch: `size` sample indices, all from the current stage's pool."""
        if size < 1:
            raise ConfigError(f"batch size must be >= 1, got {size}")
        out = np.array([self._next_of(int(d)) for d in self.draw_domains(size)], dtype=np.int64)
        self.step += 1
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "stage": self.stage, "weights": [float(x) for x in self.weights],
                "cursor": list(self.cursor), "passes": list(self.passes), "seed": self.seed,
                "num_samples": int(self.domain.size), "num_domains": self.num_domains}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["num_samples"], state["num_domains"], state["seed"]) != (int(self.domain.size), self.num_domains, self.seed):
            raise DataError(
                f"sampler state is for {state['num_samples']} samples / {state['num_domains']} domains / seed {state['seed']}, "
                f"this run has {self.domain.size} / {self.num_domains} / {self.seed}: the checkpoint belongs to another plan"
            )
        self.set_stage(int(state["stage"]))
        self.set_weights(state["weights"])
        self.step = int(state["step"])
        self.cursor = [int(x) for x in state["cursor"]]
        self.passes = [int(x) for x in state["passes"]]
        self._perm_cache.clear()


def rank_slice(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous share of a global batch (the batch size is a multiple of world_size)."""
    if len(batch) % world_size:
        raise ConfigError(f"global batch of {len(batch)} does not split over {world_size} processes")
    per = len(batch) // world_size
    return batch[rank * per : (rank + 1) * per]


__all__ = ["CurriculumSampler", "rank_slice"]
