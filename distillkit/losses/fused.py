"""The chunked, LM-head-fused path: logits exist for `chunk_size` positions at a time.

Full [B, L, V] fp32 logits of two models are the largest tensors in a KD step
(4096 positions x 151,936 entries x 4 bytes = 2.5 GB each, before the
loss's own temporaries). Here the student's hidden states and LM head go in
instead of its logits, and for each chunk of positions we

1. compute the chunk's student (and teacher) logits, in the inputs' dtype, then fp32;
2. compute the chunk's loss rows and, with a local autograd pass, d(loss)/d(logits);
3. fold that into d/d(hidden) (rows of the chunk) and d/d(weight), d/d(bias)
   (accumulated in fp32), and drop the chunk.

This runs inside the forward of a custom `torch.autograd.Function` (as
Liger-Kernel's fused linear losses do); backward only scales the stored
gradients by the incoming grad_output. We chose that over
`torch.utils.checkpoint` per chunk because the peak is no higher (one chunk's
temporaries plus one fp32 [V, H] weight-gradient buffer, into which each chunk
accumulates in place with `addmm_`, whereas autograd's per-chunk weight
gradient is a fresh [V, H] tensor added to the running sum: two buffers), and
it does not recompute the student and teacher matmuls in backward.
The price: the forward does the backward's work even under `torch.no_grad()`
-- unless nothing requires grad, in which case no gradient is computed -- and
the result cannot be differentiated twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from distillkit.losses.dense import common_vocab, flat_mask
from distillkit.losses.divergences import check_temperature, fkl_rows_and_grad, tempered_rows
from distillkit.losses.registry import Divergence, resolve_params

TeacherLogitsFn = Callable[[Tensor], Tensor]
"""Teacher logits on demand: given flat position indices [n] (into the B*L grid,
row-major), return logits [n, V_t] (any float dtype, V_t ≥ vocab_size)."""

# Per-chunk loss: (student logits [c, V] fp32 with grad, flat positions [c]) -> loss rows [c].
RowsFn = Callable[[Tensor, Tensor], Tensor]
# The same with the rows' gradient w.r.t. the logits in closed form: -> (rows [c], d rows / d logits [c, V]).
RowsGradFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True, slots=True)
class LinearHead:
    """Hidden states and the LM head that turns them into logits: hidden @ weight.T + bias.

    hidden: [B, L, H]; weight: [V_rows, H] (V_rows ≥ the tokenizer's vocabulary:
    padded rows are ignored); bias: [V_rows] or None.
    """

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None

    def logits(self, positions: Tensor, vocab_size: int) -> Tensor:
        """fp32 logits [n, vocab_size] at flat `positions`, without gradient."""
        with torch.no_grad():
            h = self.hidden.reshape(-1, self.hidden.shape[-1]).index_select(0, positions)
            return _head_logits(h, self.weight, self.bias, vocab_size)


def _head_logits(h: Tensor, weight: Tensor, bias: Tensor | None, vocab_size: int) -> Tensor:
    w = weight[:vocab_size]
    z = h @ w.t() if bias is None else torch.addmm(bias[:vocab_size], h, w.t())
    return z.float()


def teacher_rows_source(teacher: LinearHead | TeacherLogitsFn, vocab_size: int) -> Callable[[Tensor], Tensor]:
    """A function flat positions -> fp32 teacher logits [n, vocab_size] (no gradient)."""
    if isinstance(teacher, LinearHead):
        return lambda pos: teacher.logits(pos, vocab_size)

    def from_fn(pos: Tensor) -> Tensor:
        with torch.no_grad():
            z = teacher(pos)
        if z.dim() != 2 or z.shape[0] != pos.numel() or z.shape[1] < vocab_size:
            raise ValueError(
                f"teacher_logits_fn returned shape {tuple(z.shape)} for {pos.numel()} positions; "
                f"expected [{pos.numel()}, ≥{vocab_size}]"
            )
        return z[:, :vocab_size].float()

    return from_fn


@dataclass(slots=True)
class _Job:
    """Everything the autograd Function needs besides the differentiable inputs."""

    vocab_size: int
    chunk_size: int
    kd_keep: Tensor  # flat bool [N]: positions in the KD mean
    kd_rows: RowsFn
    labels: Tensor | None  # flat long [N], ignore_index where no CE
    ignore_index: int
    need_grad: bool  # grad mode on and some input requires grad (forward runs with grad mode off)
    # None: outputs (kd, ce), each with its own gradient. (w_kd, w_ce): outputs (w_kd·kd + w_ce·ce, kd, ce),
    # only the first differentiable -- one gradient accumulation per chunk, and none for a zero weight.
    weights: tuple[float, float] | None = None
    kd_rows_grad: RowsGradFn | None = None  # kd_rows with a closed-form gradient (used when given)


def _accumulate(dz: Tensor, h: Tensor, pos: Tensor, weight: Tensor, grads: list[Tensor | None]) -> None:
    """Fold d(loss)/d(logits) [c, V] of one chunk into the hidden/weight/bias gradient buffers."""
    g_hidden, g_weight, g_bias = grads
    vocab = dz.shape[1]
    # Same dtype rule as autograd on the plain path: the logits' gradient meets the head in its dtype
    # (a bf16 head: bf16 matmuls, summed over chunks in fp32).
    dz_w = dz if weight.dtype == dz.dtype else dz.to(weight.dtype)
    if g_hidden is not None:
        g_hidden.index_add_(0, pos, (dz_w @ weight[:vocab]).float())
    if g_weight is not None:
        if dz_w is dz:
            g_weight[:vocab].addmm_(dz.t(), h.to(dz.dtype))
        else:
            g_weight[:vocab] += dz_w.t() @ h.to(weight.dtype)
    if g_bias is not None:
        g_bias[:vocab] += dz.sum(0)


def _chunk_dz(n: int, vocab: int, parts: list[tuple[float, Tensor | None, Tensor]]) -> Tensor | None:
    """scale·dz of each part (rows `idx` of the chunk, None = all rows) summed into one [n, V] gradient.

    Parts covering every row are scaled in place and added into the first such one, so the usual
    case (KD and CE on the same positions) allocates nothing.
    """
    parts = [(s, idx, dz) for s, idx, dz in parts if s != 0.0]
    if not parts:
        return None
    full = next((i for i, (_, idx, _) in enumerate(parts) if idx is None), None)
    if full is not None:
        s, _, out = parts.pop(full)
        out.mul_(s)
    else:
        out = torch.zeros(n, vocab, dtype=parts[0][2].dtype, device=parts[0][2].device)
    for s, idx, dz in parts:
        if idx is None:
            out.add_(dz, alpha=s)
        else:
            out.index_add_(0, idx, dz, alpha=s)
    return out


class _FusedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, job: _Job):  # type: ignore[override]
        n_rows, width = hidden.shape
        vocab = job.vocab_size
        f32 = dict(dtype=torch.float32, device=hidden.device)

        def buffers() -> list[Tensor | None]:
            return [
                torch.zeros(n_rows, width, **f32) if hidden.requires_grad else None,
                torch.zeros(weight.shape, **f32) if weight.requires_grad else None,
                torch.zeros(bias.shape, **f32) if bias is not None and bias.requires_grad else None,
            ]

        with_ce = job.labels is not None
        ce_keep = job.labels != job.ignore_index if with_ce else None
        n_kd = max(int(job.kd_keep.sum()), 1)
        n_ce = max(int(ce_keep.sum()), 1) if with_ce else 1
        # Gradient groups: (scale of d kd_sum, scale of d ce_sum), each with its buffers. Separate outputs
        # keep one group each; a weighted objective folds both into one, so each chunk is accumulated
        # once. No dz has a non-zero scale in two groups: _chunk_dz may scale it in place.
        if job.weights is None:
            groups = [(1.0 / n_kd, 0.0), (0.0, 1.0 / n_ce)] if with_ce else [(1.0 / n_kd, 0.0)]
        else:
            w_kd, w_ce = job.weights
            groups = [(w_kd / n_kd, w_ce / n_ce if with_ce else 0.0)]
        grads = [buffers() if job.need_grad else [None, None, None] for _ in groups]
        kd_grad = job.need_grad and any(a != 0.0 for a, _ in groups)
        ce_grad = job.need_grad and with_ce and any(b != 0.0 for _, b in groups)

        wanted = job.kd_keep | ce_keep if with_ce else job.kd_keep
        positions = wanted.nonzero().squeeze(1)
        kd_total = torch.zeros((), **f32)
        ce_total = torch.zeros((), **f32)

        for start in range(0, positions.numel(), job.chunk_size):
            pos = positions[start : start + job.chunk_size]
            h = hidden.index_select(0, pos)
            z = _head_logits(h, weight, bias, vocab)
            dz_kd = dz_ce = idx_kd = idx_ce = None

            kd_local = job.kd_keep[pos]
            if bool(kd_local.any()):
                idx_kd = None if bool(kd_local.all()) else kd_local.nonzero().squeeze(1)
                pk = pos if idx_kd is None else pos.index_select(0, idx_kd)
                if kd_grad and job.kd_rows_grad is not None:
                    rows, dz_kd = job.kd_rows_grad(z if idx_kd is None else z.index_select(0, idx_kd), pk)
                    kd_total += rows.sum()
                    del rows
                else:
                    zk = (z if idx_kd is None else z.index_select(0, idx_kd)).detach().requires_grad_(kd_grad)
                    with torch.enable_grad() if kd_grad else torch.no_grad():
                        rows_sum = job.kd_rows(zk, pk).sum()
                    kd_total += rows_sum.detach()
                    if kd_grad and rows_sum.requires_grad:
                        (dz_kd,) = torch.autograd.grad(rows_sum, zk)
                    del zk, rows_sum

            if with_ce:
                ce_local = ce_keep[pos]
                if bool(ce_local.any()):
                    idx_ce = None if bool(ce_local.all()) else ce_local.nonzero().squeeze(1)
                    # z is not needed after this, so the CE gradient may overwrite it.
                    zc = z if idx_ce is None else z.index_select(0, idx_ce)
                    pc = pos if idx_ce is None else pos.index_select(0, idx_ce)
                    target = job.labels[pc].unsqueeze(1)
                    lse = torch.logsumexp(zc, dim=-1, keepdim=True)
                    ce_total += (lse - zc.gather(1, target)).sum()
                    if ce_grad:
                        # d CE / d logits = softmax - onehot, computed in place.
                        dz_ce = zc.sub_(lse).exp_()
                        dz_ce.scatter_add_(1, target, torch.full_like(target, -1.0, dtype=dz_ce.dtype))
                    del zc
            del z

            if dz_kd is not None or dz_ce is not None:
                for (a, b), bufs in zip(groups, grads):
                    parts = [(a, idx_kd, dz_kd)] if dz_kd is not None else []
                    if dz_ce is not None:
                        parts.append((b, idx_ce, dz_ce))
                    dz = _chunk_dz(pos.numel(), vocab, parts)
                    if dz is not None:
                        _accumulate(dz, h, pos, weight, bufs)
                    del dz, parts  # parts holds dz_kd: keep it from living into the next chunk
            del dz_kd, dz_ce, h

        kd, ce = kd_total / n_kd, ce_total / n_ce
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.save_for_backward(*[g for bufs in grads for g in bufs])
        ctx.n_groups = len(groups)
        if job.weights is None:
            return kd, ce
        ctx.mark_non_differentiable(kd, ce)
        w_kd, w_ce = job.weights
        return w_kd * kd + (w_ce * ce if with_ce else 0.0), kd, ce

    @staticmethod
    def backward(ctx, *grad_outputs: Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        out: list[Tensor | None] = []
        for i, dtype in enumerate(ctx.dtypes):
            g = None
            for k in range(ctx.n_groups):
                buf = saved[3 * k + i]
                if buf is None:
                    continue
                # In place: the buffers are ours, and a second backward fails loudly on the version check.
                buf = buf.mul_(grad_outputs[k])
                g = buf if g is None else g.add_(buf)
            out.append(g.to(dtype) if g is not None else None)
        return out[0], out[1], out[2], None


def _check_head(hidden: Tensor, weight: Tensor, bias: Tensor | None, chunk_size: int) -> bool:
    """Validate the shapes; True when a gradient is wanted."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1 position, got {chunk_size}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"student hidden {tuple(hidden.shape)} and lm_head weight {tuple(weight.shape)} do not fit "
            "(expected [N, H] and [V, H])"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"student bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
    trainable = hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    return torch.is_grad_enabled() and trainable


def fused_head_losses(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kd_keep: Tensor,
    kd_rows: RowsFn,
    *,
    vocab_size: int,
    chunk_size: int,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    kd_rows_grad: RowsGradFn | None = None,
) -> tuple[Tensor, Tensor]:
    """(mean KD over kd_keep, mean CE over labels != ignore_index) from hidden [N, H] and the head.

    kd_rows_grad: optional closed form of kd_rows with its logit gradient (skips autograd per chunk)."""
    need_grad = _check_head(hidden, weight, bias, chunk_size)
    job = _Job(vocab_size, int(chunk_size), kd_keep, kd_rows, labels, ignore_index, need_grad, None, kd_rows_grad)
    return _FusedHeadLoss.apply(hidden, weight, bias, job)


def fused_head_objective(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kd_keep: Tensor,
    kd_rows: RowsFn,
    *,
    weights: tuple[float, float],
    vocab_size: int,
    chunk_size: int,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    kd_rows_grad: RowsGradFn | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(w_kd·kd + w_ce·ce, kd, ce): as `fused_head_losses`, for a fixed mix known up front.

    Only the objective carries a gradient (kd and ce are values for logging). Each chunk's two
    logit gradients are summed before they meet the LM head, so a step does one pair of
    [c, V] × [V, H] products per chunk instead of two, and a zero weight skips that term's
    gradient altogether (CE at λ = 1 costs only its log-sum-exp).
    """
    need_grad = _check_head(hidden, weight, bias, chunk_size)
    w_kd, w_ce = (float(w) for w in weights)
    job = _Job(vocab_size, int(chunk_size), kd_keep, kd_rows, labels, ignore_index, need_grad, (w_kd, w_ce),
               kd_rows_grad)
    return _FusedHeadLoss.apply(hidden, weight, bias, job)


def _flat_hidden(student_hidden: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    if student_hidden.dim() < 2:
        raise ValueError(f"student_hidden must be [B, L, H] (or [N, H]), got {tuple(student_hidden.shape)}")
    return student_hidden.reshape(-1, student_hidden.shape[-1]), tuple(student_hidden.shape[:-1])


def _check_teacher(teacher: LinearHead | TeacherLogitsFn, lead: tuple[int, ...]) -> int | None:
    if isinstance(teacher, LinearHead):
        if tuple(teacher.hidden.shape[:-1]) != lead:
            raise ValueError(
                f"teacher hidden has shape {tuple(teacher.hidden.shape)}, expected {lead} + (H_teacher,) "
                "like the student's"
            )
        return teacher.weight.shape[0]
    if not callable(teacher):
        raise ValueError("teacher must be a LinearHead(hidden, weight, bias) or a callable positions -> logits")
    return None


def chunked_kd_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher: LinearHead | TeacherLogitsFn,
    mask: Tensor | None = None,
    kind: Divergence = "fkl",
    *,
    student_bias: Tensor | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    **params: float,
) -> Tensor:
    """`kd_loss` from the student's hidden states and LM head, `chunk_size` positions at a time.

    Same value and gradients as `kd_loss(student_hidden @ student_weight.T + student_bias,
    teacher_logits, mask, kind, ...)`, without ever holding more than `chunk_size` rows of
    logits of either model (masked positions are skipped entirely).

    Args:
        student_hidden: [B, L, H]; gets gradients.
        student_weight: [V_s, H] LM head (rows past vocab_size are padding: zero gradient).
        teacher: LinearHead(hidden [B, L, H_t], weight [V_t, H_t], bias) or a
            TeacherLogitsFn; never receives gradients.
        mask, kind, temperature, **params: as in `kd_loss` (T² rule included).
        student_bias: [V_s] or None.
        vocab_size: compare the first vocab_size logits; required when V_s != V_t.
        chunk_size: positions per chunk (default 1024).
    """
    kd, _ = _chunked(student_hidden, student_weight, teacher, mask, None, kind, student_bias, vocab_size,
                     temperature, chunk_size, -100, params)
    return kd


def chunked_kd_and_ce(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher: LinearHead | TeacherLogitsFn,
    mask: Tensor | None,
    labels: Tensor,
    kind: Divergence = "fkl",
    *,
    student_bias: Tensor | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    ignore_index: int = -100,
    **params: float,
) -> tuple[Tensor, Tensor]:
    """(kd, ce): `chunked_kd_loss` plus the student's token cross-entropy from the same chunks.

    labels: [B, L] long, already aligned with the positions (labels[b, l] is the
    token position l predicts); ignore_index marks positions without a target. CE is
    the mean over positions with a target, at temperature 1, over the first
    vocab_size logits; 0 (zero gradient) if there is none. Both outputs are
    differentiable, so any mix like (1-λ)·ce + λ·kd can be backpropagated.
    """
    return _chunked(student_hidden, student_weight, teacher, mask, labels, kind, student_bias, vocab_size,
                    temperature, chunk_size, ignore_index, params)


def chunked_kd_ce_objective(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher: LinearHead | TeacherLogitsFn,
    mask: Tensor | None,
    labels: Tensor,
    kind: Divergence = "fkl",
    *,
    weights: tuple[float, float],
    student_bias: Tensor | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    ignore_index: int = -100,
    **params: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(w_kd·kd + w_ce·ce, kd, ce) with weights = (w_kd, w_ce): `chunked_kd_and_ce` for a mix fixed up
    front (a training step), about one LM-head gradient pass cheaper per chunk; only the first output
    is differentiable (see `fused_head_objective`)."""
    return _chunked(student_hidden, student_weight, teacher, mask, labels, kind, student_bias, vocab_size,
                    temperature, chunk_size, ignore_index, params, weights)


def _chunked(student_hidden, student_weight, teacher, mask, labels, kind, student_bias, vocab_size,
             temperature, chunk_size, ignore_index, params, weights=None) -> tuple[Tensor, ...]:
    params_ = resolve_params(kind, params)
    temperature = check_temperature(temperature)
    hidden, lead = _flat_hidden(student_hidden)
    vocab = common_vocab(student_weight.shape[0], _check_teacher(teacher, lead), vocab_size)
    kd_keep = flat_mask(mask, lead, hidden.device)
    flat_labels = None
    if labels is not None:
        if tuple(labels.shape) != lead:
            raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {lead}")
        flat_labels = labels.reshape(-1).to(device=hidden.device, dtype=torch.long)
        targets = flat_labels[flat_labels != ignore_index]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
            raise ValueError(
                f"labels must be in [0, {vocab}) or ignore_index={ignore_index}; "
                f"found {int(targets.min())}..{int(targets.max())}"
            )
    teacher_logits = teacher_rows_source(teacher, vocab)

    def kd_rows(z: Tensor, pos: Tensor) -> Tensor:
        return tempered_rows(z, teacher_logits(pos), kind, temperature, params_)

    def fkl_grad(z: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        return fkl_rows_and_grad(z, teacher_logits(pos), temperature)

    rows_grad = fkl_grad if kind == "fkl" else None  # the default divergence: closed-form gradient
    if weights is not None:
        return fused_head_objective(hidden, student_weight, student_bias, kd_keep, kd_rows, weights=weights,
                                    vocab_size=vocab, chunk_size=chunk_size, labels=flat_labels,
                                    ignore_index=ignore_index, kd_rows_grad=rows_grad)
    return fused_head_losses(hidden, student_weight, student_bias, kd_keep, kd_rows, vocab_size=vocab,
                             chunk_size=chunk_size, labels=flat_labels, ignore_index=ignore_index,
                             kd_rows_grad=rows_grad)
