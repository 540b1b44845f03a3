"""DDK during training: re-measure the student per domain on held-out data, re-weight the domains.

Every K steps (``ddk_interval``) the student's perplexity on each domain's held-out slice (the
score stage's "validation" rows) is measured; the teacher's comes from the scores (it is frozen).
The domain factor is then updated with DDK Eq. 2 (`distillkit.mixture.ddk_update`; with
``smoothing = false`` it is Eq. 1 on the new perplexities), or with its large-gap variant when
``factor = "log-ratio"`` (``ψ = r·ratio^(1/τ)``, `distillkit.mixture.log_ratio_update`), and the
sampler draws domains from the new weights. Every update is one row per domain in the run's
history (-> ``mixture.arrow``).

`measure_heldout` is also the before/after report: student perplexity per domain and, with a
teacher at hand, the student's KL(teacher || student) per target token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Sequence, get_args

import numpy as np

from distillkit.choices import DDK_FACTOR, DDK_TAU, DdkFactor
from distillkit.mixture import discrepancy_update

if TYPE_CHECKING:
    from distillkit.training.batches import Sequences
    from distillkit.training.distributed import DistInfo

MixtureMode = Literal["ddk", "static", "uniform"]
HISTORY_COLUMNS = ("step", "domain", "weight", "student_ppl", "teacher_ppl")


@dataclass
class DomainMixer:
    """The domain weights over a run: fixed (static / uniform) or DDK-updated every `interval` steps."""

    mode: MixtureMode
    domains: list[str]
    weights: np.ndarray  # current r_t
    teacher_ppl: np.ndarray  # frozen, from the scores
    interval: int
    alpha: float = 0.5
    smoothing: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)
    # Which factor the updates use and its temperature: settings of the run (like alpha), not state,
    # so checkpoints hold the same keys as before the variant existed.
    factor: DdkFactor = DDK_FACTOR
    tau: float = DDK_TAU

    @classmethod
    def create(cls, mode: MixtureMode, domains: list[str], plan_weights: Sequence[float], teacher_ppl: Sequence[float],
               student_ppl: Sequence[float], interval: int, alpha: float, smoothing: bool,
               factor: DdkFactor = DDK_FACTOR, tau: float = DDK_TAU) -> "DomainMixer":
        if mode == "ddk" and (factor not in get_args(DdkFactor) or not (math.isfinite(tau) and tau > 0)):
            from distillkit.errors import ConfigError

            raise ConfigError(f"ddk_factor must be one of {', '.join(map(repr, get_args(DdkFactor)))} and ddk_tau a finite "
                              f"number > 0, got {factor!r} and {tau}")
        w = np.full(len(domains), 1.0 / len(domains)) if mode == "uniform" else np.asarray(plan_weights, dtype=np.float64)
        mixer = cls(mode, list(domains), w / w.sum(), np.asarray(teacher_ppl, dtype=np.float64), int(interval),
                    float(alpha), bool(smoothing), factor=factor, tau=float(tau))
        mixer._log(0, np.asarray(student_ppl, dtype=np.float64))
        return mixer

    def due(self, step: int) -> bool:
        """An update follows optimizer step `step` (1-based count of finished steps)."""
        return self.mode == "ddk" and step > 0 and step % self.interval == 0

    def update(self, step: int, student_ppl: Sequence[float]) -> np.ndarray:
        """DDK Eq. 2 (or the log-ratio variant) on freshly measured student perplexities; returns (and keeps) the new weights."""
        s = np.asarray(student_ppl, dtype=np.float64)
        self.weights = discrepancy_update(self.weights, s, self.teacher_ppl, alpha=self.alpha, smoothing=self.smoothing,
                                          factor=self.factor, tau=self.tau)
        self._log(step, s)
        return self.weights

    def _log(self, step: int, student_ppl: np.ndarray) -> None:
        for d, w, s, t in zip(self.domains, self.weights, student_ppl, self.teacher_ppl):
            self.history.append({"step": int(step), "domain": d, "weight": float(w), "student_ppl": float(s), "teacher_ppl": float(t)})

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "domains": self.domains, "weights": [float(x) for x in self.weights], "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["domains"] != self.domains or state["mode"] != self.mode:
            raise ValueError(f"mixture state is for {state['mode']} over {state['domains']}, not {self.mode} over {self.domains}")
        self.weights = np.asarray(state["weights"], dtype=np.float64)
        self.history = [dict(r) for r in state["history"]]

    def table(self):
        import pyarrow as pa

        types = {"step": pa.int64(), "domain": pa.string(), "weight": pa.float64(), "student_ppl": pa.float64(), "teacher_ppl": pa.float64()}
        return pa.table({c: pa.array([r[c] for r in self.history], types[c]) for c in HISTORY_COLUMNS})


@dataclass(frozen=True, slots=True)
class Heldout:
    """Per-domain sums over held-out target tokens."""

    domains: list[str]
    tokens: np.ndarray
    nll: np.ndarray  # summed student NLL (nats)
    kl: np.ndarray | None  # summed KL(teacher || student), when a teacher was given

    @property
    def student_ppl(self) -> np.ndarray:
        return np.exp(self.nll / np.maximum(self.tokens, 1))

    @property
    def mean_kl(self) -> np.ndarray | None:
        return None if self.kl is None else self.kl / np.maximum(self.tokens, 1)

    def overall(self) -> dict[str, float]:
        n = float(self.tokens.sum())
        out = {"tokens": n, "student_ppl": math.exp(float(self.nll.sum()) / max(n, 1.0))}
        if self.kl is not None:
            out["kl"] = float(self.kl.sum()) / max(n, 1.0)
        return out


def heldout_batches(seqs: "Sequences", rows_by_domain: list[list[int]], batch_size: int) -> list[tuple[int, list[int]]]:
    """(domain index, rows) batches, each within one domain, longest first (less padding)."""
    out = []
    for d, rows in enumerate(rows_by_domain):
        rows = sorted(rows, key=lambda i: (-len(seqs.ids[i]), i))
        out += [(d, rows[a : a + batch_size]) for a in range(0, len(rows), batch_size)]
    return out


def measure_heldout(model, seqs: "Sequences", rows_by_domain: list[list[int]], domains: list[str], *, batch_size: int,
                    pad_id: int, device, dist: "DistInfo", teacher_fn=None, topk=None, with_kl: bool = False,
                    pack: bool = False) -> Heldout:
    """Student NLL (and KL to the teacher) summed per domain; batches are split over ranks, sums all-reduced.

    `pack` packs each batch's samples (one domain per batch, so the per-domain sums are unchanged).
    `model` is the (possibly wrapped) `StudentLoss` module; called with ``mode="eval"`` it returns the
    batch's summed NLL and summed KL. `teacher_fn(batch)` gives the online teacher, `topk` the offline one.
    """
    import torch

    from distillkit.training.batches import collate
    from distillkit.training.distributed import all_reduce_sum

    sums = torch.zeros(3, len(domains), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    batches = heldout_batches(seqs, rows_by_domain, batch_size)
    rounds = -(-len(batches) // dist.world_size)
    with torch.no_grad():
        # Ranks run in lockstep, the same number of forwards each (under FSDP2 every forward is a
        # collective): a rank without a batch left in the last round repeats batch 0 and discards it.
        for j in range(dist.rank, rounds * dist.world_size, dist.world_size):
            d, rows = batches[j] if j < len(batches) else batches[0]
            batch = collate(seqs, rows, pad_id, device, topk if with_kl else None, pack=pack)
            teacher = teacher_fn(batch) if with_kl and teacher_fn is not None else None
            nll, kl = model(batch, teacher, mode="eval", with_kl=with_kl)
            if j < len(batches):
                sums[0, d] += batch.num_targets
                sums[1, d] += nll.double()
                sums[2, d] += kl.double()
    model.train(was_training)
    if hasattr(model, "reshard"):  # FSDP2 keeps the root unsharded after a forward without backward
        model.reshard()
    all_reduce_sum(sums, dist)
    s = sums.cpu().numpy()
    return Heldout(list(domains), s[0], s[1], s[2] if with_kl else None)


__all__ = ["DomainMixer", "MixtureMode", "Heldout", "measure_heldout", "heldout_batches", "HISTORY_COLUMNS"]
