"""Instruction data: each model answers the held-out prompts; ROUGE-L against the references.

POCL (and DistiLLM, whose evaluation it follows) reports ROUGE-L F (rouge_score, stemming) of answers
*sampled* at temperature 1 with top-k and top-p off, averaged over several seeds (10, 20, 30, 40, 50).
Here each seed is one run over all prompts; a run's score is the mean over prompts, and the
result is the mean over runs with their sample standard deviation as the spread. Temperature 0 is
greedy decoding: one run, the seeds are irrelevant. Prompts are used as the data gives them (no
chat template): the same text the model was scored and trained on.
"""

from __future__ import annotations

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
) -> list[list[int]]:
    """New tokens per prompt, cut at the first EOS (kept with `keep_eos`); left-padded batches, longest first.

    Each batch reseeds torch with (seed, batch index), so a run is reproducible for a given batch size.
    """
    import torch

    device = next(model.parameters()).device
    eos = set(eos_ids)
    results: list[list[int]] = [[] for _ in prompts]
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
            cut = next((j + keep_eos for j, t in enumerate(new) if t in eos), len(new))
            results[i] = new[:cut]
        if on_batch is not None:
            on_batch(len(batch))  # e.g. a progress bar's advance
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
        gen = sample_answers(model, prompts, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, batch_size=batch_size, pad_id=pad, eos_ids=eos, on_batch=on_batch)
        preds = tokenizer.batch_decode(gen, skip_special_tokens=True)
        cols["seed"] += [seed] * len(preds)
        cols["sample_id"] += list(samples.sample_id)
        cols["domain"] += list(samples.domain)
        cols["rouge_l"] += rouge_l(preds, samples.responses).tolist()
        cols["prediction"] += preds
    return pa.table({k: pa.array(v, GENERATION_COLUMNS[k]) for k, v in cols.items()})


def summarize(runs: pa.Table) -> dict:
    """Mean over seeds of each run's mean ROUGE-L, the spread (sample std over seeds; 0 for one run)."""
    seeds = runs.column("seed").to_numpy()
    scores = runs.column("rouge_l").to_numpy().astype(np.float64)
    per_seed = {int(s): float(scores[seeds == s].mean()) for s in sorted(set(seeds.tolist()))}
    vals = np.array(list(per_seed.values()))
    return {
        "mean": float(vals.mean()) if len(vals) else float("nan"),
        "spread": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
        "per_seed": per_seed,
        "num_samples": int((seeds == seeds[0]).sum()) if len(seeds) else 0,
    }


def eos_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        ids.update(e if isinstance(e, (list, tuple)) else ([e] if e is not None else []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)
