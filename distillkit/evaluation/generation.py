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

from distillkit.sampling import eos_ids, sample_answers  # noqa: F401  (answer sampling lives below training and evaluation)
from distillkit.schemas import GENERATION_COLUMNS


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
