"""`distillkit score`: offline teacher/student inference -> per-sample difficulty, per-domain gap.

Reads a data set, scores every sample with the teacher and the student
(mean NLL over target tokens), adds POCL difficulty measures, and computes the
DDK per-domain perplexities on each domain's held-out slice. With ``top_k``
it also stores the teacher's top-k log-probs for offline KD; with
``teacher_store = "sampled"`` it stores instead ``sample_count`` tokens drawn per
position from the teacher (unbiased forward-KL / skew-KL estimates; docs/losses.md). With
``responses = "teacher"`` (sequence-level KD) the teacher first answers every training prompt and those
answers replace the data's responses (``responses.arrow``; `distillkit.seqkd`).

Work is done in chunks of ``chunk_size`` samples, each written atomically to
``<out>.partial/chunks/``; ``--resume`` redoes only the missing chunks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distillkit.config import group, identity, opt, to_dict
from distillkit.data_options import DataOptions
from distillkit.pipelines.stage import StageResult, result
from distillkit.errors import ConfigError
from distillkit.records import ScoreRecord, TopKInfo

KIND = "score"


def _stores_topk(c: "ScoreConfig") -> bool:
    """topk_format counts only when a top-k is stored."""
    return bool(c.top_k)


def _uses_sampled_store(c: "ScoreConfig") -> bool:
    """The sampled store's keys count only with teacher_store = sampled (older top-k artifacts keep their identity)."""
    return c.teacher_store == "sampled"


def _teacher_responses(c: "ScoreConfig") -> bool:
    """Sequence-level KD's keys count only with responses = teacher."""
    return c.responses == "teacher"


@dataclass(frozen=True)
class ScoreConfig:
    data: str = opt(None, "Data set: JSONL/Parquet/Arrow/CSV file, save_to_disk dir, or a folder of text files.", panel="data")
    teacher: str = opt(None, "Teacher model: HF directory, .gguf file, or alias (smollm2-135m).", panel="models")
    student: str = opt(None, "Student model: HF directory, .gguf file, or alias.", panel="models")
    out: str = opt(None, "Output artifact directory.", panel="output", identity=False)
    engine: Literal["auto", "hf", "vllm"] = opt("auto", "Inference engine: vllm when it imports and a GPU is present, else hf.", panel="runtime", identity=False)
    dtype: Literal["auto", "float32", "bfloat16"] = opt("auto", "Model dtype for scoring (auto: bf16 where the hardware runs it fast).",
                                                        panel="runtime")
    # text_field ... seed: shared with eval, which must split the data the same way.
    data_opts: DataOptions = group(DataOptions)
    max_length: int = opt(1024, "Truncate each sample to this many tokens.", panel="data")
    batch_tokens: int = opt(8192, "Padded tokens per forward batch (hf engine).", panel="runtime", identity=False)
    chunk_size: int = opt(256, "Samples per resumable chunk.", panel="runtime")
    top_k: int = opt(0, "Store the teacher's top-k log-probs per position (0: off).", panel="scoring")
    topk_format: Literal["uint8", "float16"] = opt("uint8", "Stored top-k log-probs: uint8 codes on a per-position log grid (~3x smaller), or float16.",
                                                   panel="scoring", identity=_stores_topk)
    teacher_store: Literal["topk", "sampled"] = opt("topk", "What is stored of the teacher for offline KD: topk (with --top-k K), or sampled: --sample-count tokens drawn per position from the T = 1 teacher (unbiased for fkl/skl at T = 1; hf engine).",
                                                    panel="scoring", identity=_uses_sampled_store)
    sample_count: int = opt(12, "teacher_store = sampled: draws per position (1..255); the distinct ids, their counts and log-probs are stored.",
                            panel="scoring", identity=_uses_sampled_store)
    sample_scheme: Literal["stratified", "iid"] = opt("stratified", "teacher_store = sampled: stratified (one draw per 1/n slice of the CDF: lower variance) or iid (independent draws, as in the paper).",
                                                      panel="scoring", identity=_uses_sampled_store)
    sample_seed: int = opt(0, "teacher_store = sampled: seed of the draws (with the sample id, so a sample's draws do not depend on chunk, shard or batch).",
                           panel="scoring", identity=_uses_sampled_store)
    rouge: Literal["auto", "on", "off"] = opt("auto", "ROUGE-L of the student's greedy answer (auto: on for prompt/response data).",
                                              panel="scoring")
    gen_max_new_tokens: int = opt(64, "Longest student generation for ROUGE-L.", panel="scoring")
    responses: Literal["data", "teacher"] = opt("data", "Training responses: the data's own, or teacher: the teacher's greedy answer to each training prompt replaces it (sequence-level KD; prompt/response data; written to responses.arrow, which train reads back). Held-out rows keep the data's answers.",
                                                panel="scoring", identity=_teacher_responses)
    response_max_new_tokens: int = opt(256, "responses = teacher: longest teacher answer (also capped at max_length minus the prompt).",
                                       panel="scoring", identity=_teacher_responses)
    shard: str = opt("0/1", "Score slice i of n of the data ('i/n'); join the shards with --merge.", panel="shards")

    def validate(self) -> list[str]:
        problems = []
        for name in ("data", "teacher", "student", "out"):
            if not getattr(self, name):
                problems.append(f"{name} is required (--{name})")
        if self.max_length < 2:
            problems.append("max_length must be >= 2")
        if self.top_k < 0:
            problems.append("top_k must be >= 0")
        if self.topk_format not in ("uint8", "float16"):
            problems.append(f"topk_format must be uint8 or float16, got {self.topk_format!r}")
        if self.teacher_store == "sampled":
            from distillkit.sampled_store import MAX_SAMPLE_COUNT

            if self.top_k:
                problems.append(f"top_k = {self.top_k} applies to teacher_store = 'topk'; teacher_store = 'sampled' stores "
                                "--sample-count draws instead: drop --top-k, or use --teacher-store topk")
            if not 1 <= self.sample_count <= MAX_SAMPLE_COUNT:
                problems.append(f"sample_count must be in 1..{MAX_SAMPLE_COUNT} (counts are stored as uint8), got {self.sample_count}")
            if self.engine == "vllm":
                problems.append("teacher_store = 'sampled' draws from the teacher's full distribution, which only the hf engine "
                                "computes (vLLM returns its top-k): use --engine hf or auto")
        if self.responses == "teacher" and self.response_max_new_tokens < 1:
            problems.append(f"response_max_new_tokens must be >= 1, got {self.response_max_new_tokens}")
        if self.chunk_size < 1 or self.batch_tokens < 1:
            problems.append("chunk_size and batch_tokens must be >= 1")
        try:
            parse_shard(self.shard)
        except ConfigError as e:
            problems.append(str(e))
        return problems


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return i, n




def run(cfg: ScoreConfig, *, resume: bool = False, overwrite: bool = False) -> StageResult:
    from distillkit import scoring
    from distillkit.artifacts import ArtifactWriter
    from distillkit.assets import resolve_data
    from distillkit.data import load_data, shard_rows, tokenize, uses_chat_template
    from distillkit.models import (check_same_tokenizer, check_top_k, corrected_teacher, load_tokenizer, model_fingerprint,
                                   resolve_model)

    t0 = time.time()
    shard, num_shards = parse_shard(cfg.shard)
    # Everything that can be wrong with the inputs is checked before --out is touched.
    ds = load_data(cfg.data_opts.spec(resolve_data(cfg.data)))
    if ds.dropped_empty or ds.dropped_duplicates:
        from distillkit.progress import console

        console.print(f"[yellow]note[/]: {ds.dropped_duplicates} repeated record(s) dropped"
                      + (f", {ds.dropped_empty} with an empty text dropped (--on-bad-rows skip)" if ds.dropped_empty else "")
                      + " (recorded in the manifest's figures)", highlight=False)
    if cfg.responses == "teacher" and ds.format != "instruction":
        raise ConfigError(f"responses = 'teacher' has the teacher answer each prompt, and {cfg.data} is plain text (no prompt "
                          "column): give prompt/response data (--prompt-field/--response-field) or drop --responses")
    teacher_dir, student_dir = resolve_model(cfg.teacher, role="teacher"), resolve_model(cfg.student, role="student")
    tok = load_tokenizer(str(teacher_dir))
    check_same_tokenizer(tok, load_tokenizer(str(student_dir)), cfg.teacher, cfg.student)
    check_top_k(cfg.top_k, teacher_dir, tok)  # before any model loads or --out is touched

    ident = identity(cfg)  # each option says whether it counts (opt(identity=...))
    if uses_chat_template(cfg.data_opts.chat_template, tok, ds.format):
        ident["chat_template"] = cfg.data_opts.chat_template  # prompts were wrapped: other tokens than before the option
    ident["data_fingerprint"] = ds.fingerprint
    ident["teacher_fingerprint"] = model_fingerprint(teacher_dir)
    ident["student_fingerprint"] = model_fingerprint(student_dir)
    writer = ArtifactWriter(cfg.out, KIND, ident, resume=resume, overwrite=overwrite)
    if writer.done:
        return result(writer)

    rows = ds.table.slice(*_slice(shard_rows(ds.table.num_rows, shard, num_shards)))
    use_rouge = cfg.rouge == "on" or (cfg.rouge == "auto" and ds.format == "instruction")
    if use_rouge and ds.format != "instruction":
        raise ConfigError("rouge = 'on' needs prompt/response data; this data set is plain text (set rouge = 'off')")
    answers = None
    chat = uses_chat_template(cfg.data_opts.chat_template, tok, ds.format)
    if cfg.responses == "teacher":  # sequence-level KD: the teacher's answers become the training responses
        from distillkit import seqkd

        answers, gen_figures = seqkd.teacher_responses(
            rows, tok, writer, teacher_dir=str(teacher_dir), engine=cfg.engine, dtype=cfg.dtype, max_length=cfg.max_length,
            batch_tokens=cfg.batch_tokens, max_new_tokens=cfg.response_max_new_tokens, chunk_size=cfg.chunk_size, chat=chat)
        rows = seqkd.apply_responses(rows, answers)
    samples = tokenize(rows, ds.format, tok, cfg.max_length, chat)
    figures = scoring.score_chunks(
        samples,
        writer,
        teacher_dir=str(teacher_dir),
        student_dir=str(student_dir),
        engine=cfg.engine,
        dtype=cfg.dtype,
        batch_tokens=cfg.batch_tokens,
        chunk_size=cfg.chunk_size,
        top_k=cfg.top_k,
        use_rouge=use_rouge,
        gen_max_new_tokens=cfg.gen_max_new_tokens,
        tokenizer=tok,
        max_length=cfg.max_length,
        topk_format=cfg.topk_format,
        sampling=_sampling(cfg),
    )
    table = scoring.concat_chunks(writer)
    samples_t, domains_t = scoring.finalize(table)
    writer.write("samples.arrow", samples_t)
    writer.write("domains.arrow", domains_t)
    writer.remove("chunks")
    if answers is not None:
        writer.write(seqkd.RESPONSES_FILE, answers)
        writer.remove(seqkd.PARTS_DIR)
        figures.update(gen_figures)
    figures["wall_s"] = round(time.time() - t0, 2)
    figures["dropped_short"] = samples.dropped
    figures["dropped_empty"], figures["dropped_duplicates"] = ds.dropped_empty, ds.dropped_duplicates
    store_files = sorted(p for d in scoring.STORE_DIRS for p in writer.path(d).glob("*.arrow"))
    if store_files:  # on disk, as bench/bench_topk.py counts it: one position per predicted token
        from distillkit.sampled_store import store_figures

        figures.update(store_figures(store_files, sum(len(x) - 1 for x in samples.ids)))
    writer.finish(
        figures,
        extra=ScoreRecord(shard=(shard, num_shards), format=ds.format, data_sources=tuple(ds.sources), teacher_dir=str(teacher_dir),
                          student_dir=str(student_dir), topk=_topk_info(cfg, len(tok)), teacher=corrected_teacher(teacher_dir),
                          chat_template=chat).to_manifest(),
    )
    return result(writer)


def _sampling(cfg: ScoreConfig):
    """The draws of teacher_store = 'sampled' (None for the top-k store)."""
    if cfg.teacher_store != "sampled":
        return None
    from distillkit.sampled_store import SampleSpec

    return SampleSpec(count=cfg.sample_count, scheme=cfg.sample_scheme, seed=cfg.sample_seed)


def _topk_info(cfg: ScoreConfig, vocab: int) -> TopKInfo | None:
    """The manifest's description of the stored top-k (docs/artifacts.md)."""
    if not cfg.top_k:
        return None
    from distillkit.topk import ROWS_PER_BATCH, ids_type

    return TopKInfo(k=cfg.top_k, format=cfg.topk_format, ids=str(ids_type(vocab)), rows_per_batch=ROWS_PER_BATCH)


def _slice(r: range) -> tuple[int, int]:
    return r.start, len(r)


def merge(shard_dirs: list[str], out: str, *, overwrite: bool = False) -> Path:
    """Join `--shard i/n` score artifacts into one, recomputing difficulty and domain perplexities."""
    from distillkit import scoring

    return scoring.merge_shards([Path(d) for d in shard_dirs], Path(out), overwrite=overwrite)


__all__ = ["ScoreConfig", "run", "merge", "parse_shard", "KIND"]
