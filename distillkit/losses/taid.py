"""TAID's interpolation parameter t and its momentum-adaptive schedule.

TAID (Shing et al., ICLR 2025, arXiv 2501.16937) distils toward
p_t = softmax((1−t)·stopgrad(z_S) + t·z_T), moving t from t_start to t_end. After
each step, with J_n the step's TAID loss:

    δ_n   = (J_{n−1} − J_n) / (J_{n−1} + ε)            relative improvement
    m_n   = β·m_{n−1} + (1 − β)·δ_n                    momentum
    t_n+1 = min(t_end, max(t_linear(n), t_n + α·sigmoid(m_n)·(1 − t_n)))

where t_linear(n) = t_start + (t_end − t_start)·n/N is a floor that guarantees t
reaches t_end by the last step. The first step only records J. Defaults follow the
paper: t 0.4 → 1, α = 5e-4, β = 0.99.
"""

from __future__ import annotations

import math


class TaidSchedule:
    """Holds t between steps; `update` after each optimizer step, `state_dict` into checkpoints.

    Usage:
        schedule = TaidSchedule()
        loss = kd_loss(s, t, mask, "taid", t=schedule.t)
        ...; schedule.update(loss.item(), step, total_steps)
    """

    _HYPER = ("t_start", "t_end", "alpha", "beta", "adaptive")

    def __init__(
        self, t_start: float = 0.4, t_end: float = 1.0, alpha: float = 5e-4, beta: float = 0.99, adaptive: bool = True
    ):
        if not 0.0 <= t_start <= t_end <= 1.0:
            raise ValueError(f"need 0 ≤ t_start ≤ t_end ≤ 1, got t_start={t_start}, t_end={t_end}")
        if not 0.0 <= alpha <= 1.0 or not 0.0 <= beta < 1.0:
            raise ValueError(f"need alpha in [0, 1] and beta in [0, 1), got alpha={alpha}, beta={beta}")
        self.t_start, self.t_end, self.alpha, self.beta = float(t_start), float(t_end), float(alpha), float(beta)
        self.adaptive = bool(adaptive)
        self.t = self.t_start
        self.prev_loss: float | None = None
        self.momentum = 0.0

    def update(self, loss: float, step: int, total_steps: int) -> float:
        """Advance t after the optimizer step `step` (0-based) of `total_steps`, whose TAID loss was `loss`.

        Returns the t to use next. A non-finite loss is skipped (t and the momentum stay).
        """
        if total_steps < 1:
            raise ValueError(f"total_steps must be ≥ 1, got {total_steps}")
        loss = float(loss)
        if not math.isfinite(loss):
            return self.t
        if self.prev_loss is None:
            self.prev_loss = loss
            return self.t
        progress = min(max(step / total_steps, 0.0), 1.0)
        t_linear = self.t_start + (self.t_end - self.t_start) * progress
        if self.adaptive:
            relative = (self.prev_loss - loss) / (self.prev_loss + 1e-15)
            self.momentum = self.beta * self.momentum + (1.0 - self.beta) * relative
            step_up = self.alpha * _sigmoid(self.momentum) * (1.0 - self.t)
            self.t = min(self.t_end, max(t_linear, self.t + step_up))
        else:
            self.t = t_linear
        self.prev_loss = loss
        return self.t

    def state_dict(self) -> dict[str, float | bool | None]:
        return {
            **{name: getattr(self, name) for name in self._HYPER},
            "t": self.t,
            "prev_loss": self.prev_loss,
            "momentum": self.momentum,
        }

    def load_state_dict(self, state: dict[str, float | bool | None]) -> None:
        """Restore t, the last loss and the momentum. Hyperparameters must match this schedule's."""
        missing = sorted({"t", "prev_loss", "momentum", *self._HYPER} - set(state))
        if missing:
            raise ValueError(f"TAID schedule state lacks {missing}; was it written by TaidSchedule.state_dict()?")
        differ = [
            f"{n}: saved {state[n]} vs now {getattr(self, n)}" for n in self._HYPER if state[n] != getattr(self, n)
        ]
        if differ:
            raise ValueError(
                "TAID schedule hyperparameters differ from the checkpoint's (" + "; ".join(differ) + "); "
                "construct TaidSchedule with the saved values to resume"
            )
        self.t = float(state["t"])  # type: ignore[arg-type]
        self.prev_loss = None if state["prev_loss"] is None else float(state["prev_loss"])  # type: ignore[arg-type]
        self.momentum = float(state["momentum"])  # type: ignore[arg-type]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
