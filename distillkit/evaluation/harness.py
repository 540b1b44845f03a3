"""lm-evaluation-harness in-process: one loaded model, generated and user task YAMLs, flat rows out.

The model is wrapped as ``HFLM(pretrained=model, tokenizer=tok)`` and evaluated with
``lm_eval.simple_evaluate`` against a ``TaskManager`` that indexes only the generated offline tasks and
the user's ``--include-path`` folders (lm-eval's own catalogue needs hub data and takes ~25 s to index).
Log-softmax runs in fp32 whatever the model dtype, so bf16 models do not tie choices by rounding.
lm-eval is imported here only, inside the function: importing it costs seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

# Metrics whose value is not a score in [0, 1] where higher is better; kept out of plots.
NOT_SCORES = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")
# Which metric stands for a task in plots and the terminal, first found wins.
PRIMARY = ("acc_norm", "acc", "exact_match,strict-match", "exact_match,flexible-extract", "exact_match", "f1", "mcc")


@dataclass(slots=True)
class BenchResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # task, metric, value, stderr, num_samples
    info: dict[str, Any] = field(default_factory=dict)  # versions, n-shot, n-samples, task configs (JSON-safe)


def run_benchmarks(
    model,
    tokenizer,
    tasks: Sequence[str],
    task_dirs: Sequence[str | Path],
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    bootstrap_iters: int = 1000,
) -> BenchResult:
    """Evaluate `model` on `tasks` (names defined in `task_dirs`); one row per task and metric."""
    if not tasks:
        return BenchResult()
    # Bootstrap stderrs (perplexity metrics) in-process: a worker pool per metric costs more than it
    # saves on a small machine, and forked workers would inherit the model.
    os.environ.setdefault("DISABLE_MULTIPROC", "1")
    import torch

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _quiet()
    tm = TaskManager(include_path=[str(d) for d in task_dirs], include_defaults=False)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, softmax_dtype=torch.float32)
    with _quiet_git_probe():
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=tm,
            limit=limit,
            num_fewshot=num_fewshot,
            log_samples=False,
            bootstrap_iters=bootstrap_iters,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if out is None:  # not rank 0 of a distributed run
        return BenchResult()
    return BenchResult(rows=result_rows(out), info=_info(out))


def result_rows(out: dict[str, Any]) -> list[dict[str, Any]]:
    """lm-eval's ``results`` as rows; metric names drop the default ",none" filter suffix."""
    n_samples = out.get("n-samples", {})
    rows = []
    for task, res in out.get("results", {}).items():
        n = n_samples.get(task, {}).get("effective", res.get("sample_len"))
        for key, value in res.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            se = res.get(f"{metric}_stderr,{filt}")
            se = float(se) if isinstance(se, (int, float)) and not isinstance(se, bool) and math.isfinite(se) else None
            rows.append({"task": task, "metric": metric if filt == "none" else f"{metric},{filt}", "value": float(value),
                         "stderr": se, "num_samples": int(n) if isinstance(n, (int, float)) else None})
    return rows


def primary_metric(metrics: Sequence[str]) -> str | None:
    """The metric that stands for a task (acc_norm, then acc, ...); None when only perplexities exist."""
    for m in PRIMARY:
        if m in metrics:
            return m
    rest = [m for m in metrics if m.split(",")[0] not in NOT_SCORES]
    return rest[0] if rest else None


def _info(out: dict[str, Any]) -> dict[str, Any]:
    keep = ("versions", "n-shot", "n-samples", "higher_is_better", "group_subtasks", "configs", "lm_eval_version",
            "transformers_version", "max_length", "tokenizer_eos_token", "tokenizer_bos_token")
    info = {k: out[k] for k in keep if k in out}
    cfg = out.get("config", {})
    info["config"] = {k: cfg.get(k) for k in ("limit", "bootstrap_iters", "random_seed", "numpy_seed", "torch_seed",
                                               "fewshot_seed", "batch_size") if k in cfg}
    # task configs can hold functions (process_docs): their names are what matters
    return json.loads(json.dumps(info, default=str))


def _git_describe() -> str | None:
    """What lm-eval records as ``git_hash`` (``git describe --always`` in the working directory), without letting
    git print "fatal: not a git repository" to the terminal outside a checkout."""
    import subprocess

    try:
        r = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


@contextlib.contextmanager
def _quiet_git_probe() -> Iterator[None]:
    """lm-eval's own probe runs git with its stderr on the terminal; swap in `_git_describe` for the call."""
    import lm_eval.evaluator as evaluator

    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:
        yield
        return
    evaluator.get_git_commit_hash = _git_describe
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def _quiet() -> None:
    """lm-eval and datasets log every step at INFO and warn that a model object skips its loader: expected here."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass
