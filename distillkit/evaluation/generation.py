"""Instruction data: each model answers the held-out prompts; ROUGE-L against the references.

POCL (and DistiLLM, whose evaluation it follows) reports ROUGE-L F (rouge_score, stemming) of answers
*sampled* at temperature 1 with top-k and top-p off, averaged over several seeds (10, 20, 30, 40, 50).
Here each seed is one run over all prompts; a run's score is the mean over prompts, and the
result is the mean over runs with their sample standard deviation as the spread. Temperature 0 is
greedy decoding: one run, the seeds are irrelevant. Prompts are the token ids the score stage made (in the
tokenizer's chat template unless the score said chat_template = off): the same text the model was scored and
trained on. Each answer also records its length, whether it stopped at EOS, and, where the reference ends in a
checkable answer ("The answer is N."), whether the answer's final number matches it (exact match).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from distillkit.schemas import GENERATION_COLUMNS


def sample_answers(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    seed: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    pad_id: int = 0,
    eos_ids: Sequence[int] = (),
    keep_eos: bool = False,
    on_batch: Callable[[int], None] | None = None,
    stopped: list[bool] | None = None,
) -> list[list[int]]:
    """New tokens per prompt, cut at the first EOS (kept with `keep_eos`); left-padded batches, longest first.
    `stopped`, when given, is filled with one flag per prompt: whether its answer ended at an EOS (else it ran
    into `max_new_tokens`).

    Each batch reseeds torch with (seed, batch index), so a run is reproducible for a given batch size.
    """
    import torch

    device = next(model.parameters()).device
    eos = set(eos_ids)
    results: list[list[int]] = [[] for _ in prompts]
    flags = [False] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    sampling = temperature > 0
    kwargs = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if sampling else {"do_sample": False}
    for b, start in enumerate(range(0, len(order), batch_size)):
        batch = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            p = torch.as_tensor(list(prompts[i]), dtype=torch.long)
            ids[r, width - len(p) :] = p
            mask[r, width - len(p) :] = 1
        torch.manual_seed(seed * 1_000_003 + b)
        # Under autocast, no_grad rather than inference_mode: inference mode turns off autocast's cache of the
        # bf16 weight casts, so every decode step re-casts every weight (2.8x slower decode measured on a CPU
        # with amx_bf16, 203 vs 72 ms per step of the 23-layer demo student). Same tokens either way.
        fast_cast = torch.is_autocast_enabled(device.type)
        with torch.no_grad() if fast_cast else torch.inference_mode():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                 pad_token_id=pad_id, **kwargs)
        for r, i in enumerate(batch):
            new = gen[r, width:].tolist()
            at = next((j for j, t in enumerate(new) if t in eos), None)
            results[i] = new[: len(new) if at is None else at + keep_eos]
            flags[i] = at is not None
        if on_batch is not None:
            on_batch(len(batch))  # e.g. a progress bar's advance
    if stopped is not None:
        stopped[:] = flags
    return results


def rouge_runs(
    model,
    tokenizer,
    samples,
    seeds: Sequence[int],
    *,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> pa.Table:
    """One row per (seed, sample): the decoded answer and its ROUGE-L F against the reference response."""
    from distillkit.difficulty import rouge_l

    if samples.responses is None:
        raise ValueError("rouge_runs needs prompt/response samples")
    prompts = [ids[:st] for ids, st in zip(samples.ids, samples.target_start)]
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos) if eos else 0)
    cols: dict[str, list] = {k: [] for k in GENERATION_COLUMNS}
    for seed in (seeds if temperature > 0 else seeds[:1]):
        stopped: list[bool] = []
        gen = sample_answers(model, prompts, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, batch_size=batch_size, pad_id=pad, eos_ids=eos, on_batch=on_batch, stopped=stopped)
        preds = tokenizer.batch_decode(gen, skip_special_tokens=True)
        cols["num_tokens"] += [len(g) for g in gen]
        cols["stopped"] += stopped
        cols["exact_match"] += [exact_match(p, r) for p, r in zip(preds, samples.responses)]
        cols["seed"] += [seed] * len(preds)
        cols["sample_id"] += list(samples.sample_id)
        cols["domain"] += list(samples.domain)
        cols["rouge_l"] += rouge_l(preds, samples.responses).tolist()
        cols["prediction"] += preds
    return pa.table({k: pa.array(v, GENERATION_COLUMNS[k]) for k, v in cols.items()})


_ANSWER = re.compile(r"answer is[:\s]*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_GSM8K_MARK = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def final_answer(text: str, *, fallback_last_number: bool = False) -> str | None:
    """The checkable answer a text ends in: the number after "The answer is" (or GSM8K's "#### N"), commas
    dropped and a trailing ".0" removed; with `fallback_last_number`, else the text's last number. None if none."""
    m = _ANSWER.findall(text) or _GSM8K_MARK.findall(text)
    if not m and fallback_last_number:
        m = [x for x in _NUMBER.findall(text) if any(c.isdigit() for c in x)]
    if not m:
        return None
    v = m[-1].replace(",", "")
    if "." in v:
        v = v.rstrip("0").rstrip(".") or "0"
    return v.lstrip("+") or None


def exact_match(prediction: str, reference: str) -> float | None:
    """1.0 / 0.0: whether the prediction's final answer equals the reference's ("The answer is N."; for the
    prediction, else its last number); None when the reference ends in no checkable answer."""
    ref = final_answer(reference)
    if ref is None:
        return None
    return float(final_answer(prediction, fallback_last_number=True) == ref)


def summarize(runs: pa.Table) -> dict:
    """Mean over seeds of each run's mean ROUGE-L, the spread (sample std over seeds; 0 for one run), and beside
    it the answers' mean length in tokens, the share that stopped at EOS and (where the references end in a
    checkable answer) the exact-match accuracy, each a mean over seeds of the per-run mean."""
    seeds = runs.column("seed").to_numpy()
    scores = runs.column("rouge_l").to_numpy().astype(np.float64)
    per_seed = {int(s): float(scores[seeds == s].mean()) for s in sorted(set(seeds.tolist()))}
    vals = np.array(list(per_seed.values()))
    out = {
        "mean": float(vals.mean()) if len(vals) else float("nan"),
        "spread": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
        "per_seed": per_seed,
        "num_samples": int((seeds == seeds[0]).sum()) if len(seeds) else 0,
    }
    for name in ("num_tokens", "stopped", "exact_match"):
        if name not in runs.column_names:
            continue  # generation tables made before these columns
        col = np.array([np.nan if v is None else float(v) for v in runs.column(name).to_pylist()], dtype=np.float64)
        if np.isnan(col).all():
            continue
        runs_means = [float(np.nanmean(col[seeds == s])) for s in per_seed]
        out[{"num_tokens": "answer_tokens", "stopped": "eos_rate", "exact_match": "exact_match"}[name]] = float(np.mean(runs_means))
    return out


def eos_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        ids.update(e if isinstance(e, (list, tuple)) else ([e] if e is not None else []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)
