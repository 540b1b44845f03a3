"""The work behind `distillkit score`: score tokenized samples in resumable chunks, summarise per domain.

Tokenization (`distillkit.data.tokenize`), the column types (`distillkit.schemas`) and the per-domain
table (`distillkit.domains.domain_table`) live where train and eval share them without this module.

Column contract of ``samples.arrow`` (pinned by tests; types in `distillkit.schemas`): sample_id, domain, split,
num_tokens (target tokens), teacher_nll and student_nll (mean NLL per target
token, nats), student_ce (= student_nll, POCL's CE measure), nll_gap
(student - teacher), ppl_ratio (exp of the gap), difficulty (higher = harder),
and rouge_l for prompt/response data.

``domains.arrow``: per domain, perplexities over the held-out slice's target
tokens (token-weighted): num_samples, num_tokens, teacher_nll, student_nll,
teacher_ppl, student_ppl, ppl_ratio = student_ppl / teacher_ppl, and `heldout`
(False when a domain had no held-out document and its training rows were used).

``topk/part-*.arrow`` (``--top-k``): sample_id, token_ids (the scored sequence),
topk_ids, the quantised log-probs and the tail mass (`distillkit.topk` has the
format) — row t of a sample's lists is the teacher's top-k for the distribution
that predicts token_ids[t + 1].

``sampled/part-*.arrow`` (``--teacher-store sampled``): instead of the top-k, n
tokens drawn per position from the teacher's T = 1 distribution, as distinct ids,
counts and log-probs (`distillkit.sampled_store` has the format and the draws). The draws
need the full distribution at every position, so the teacher runs on the hf engine
(`sample_teacher`); vLLM returns only the top of it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from distillkit.domains import domain_table
from distillkit.schemas import CHUNK_COLUMNS, SAMPLE_COLUMNS

if TYPE_CHECKING:
    from distillkit.data import Samples
    from distillkit.sampled_store import SampleSpec

STORE_DIRS = ("topk", "sampled")  # where score keeps what it stores of the teacher for offline KD


def _chunk_name(c: int) -> str:
    return f"chunks/part-{c:05d}.arrow"


def score_chunks(
    s: Samples,
    writer,
    *,
    teacher_dir: str,
    student_dir: str,
    engine: str,
    dtype: str,
    batch_tokens: int,
    chunk_size: int,
    top_k: int,
    use_rouge: bool,
    gen_max_new_tokens: int,
    tokenizer,
    max_length: int,
    topk_format: str = "uint8",
    sampling: SampleSpec | None = None,
) -> dict[str, Any]:
    """Score every missing chunk with both models; returns throughput figures.

    With `sampling`, the teacher's stored signal is `sampling.count` draws per position (`sampled/`)
    instead of its top-k; `top_k` must then be 0."""
    from distillkit.engines import make_engine
    from distillkit.progress import progress_bar
    from distillkit.sampled_store import sampled_table
    from distillkit.topk import topk_table

    assert not (top_k and sampling), "one teacher store"
    store = "topk" if top_k else "sampled" if sampling else None
    chunks = [(c, range(b, min(len(s), b + chunk_size))) for c, b in enumerate(range(0, len(s), chunk_size))]
    todo = [(c, r) for c, r in chunks if not writer.has(_chunk_name(c)) or (store and not writer.has(f"{store}/part-{c:05d}.arrow"))]
    figures: dict[str, Any] = {"samples": len(s), "chunks": len(chunks), "chunks_resumed": len(chunks) - len(todo)}
    if not todo:
        return figures
    vocab = len(tokenizer)
    # The draws need every position's full distribution: only the hf engine computes it.
    teacher = make_engine("hf" if sampling else engine, teacher_dir, dtype, max_length, batch_tokens, max(top_k, 1),
                          vocab_size=vocab)
    student = make_engine(engine, student_dir, dtype, max_length, batch_tokens, 1, vocab_size=vocab)
    figures["engine"] = teacher.name
    timings = {"teacher": [0.0, 0], "student": [0.0, 0], "generate": [0.0, 0]}
    total = sum(len(s.ids[i]) for _, r in todo for i in r) * 2

    def timed(key: str, fn, seqs, *args):
        t = time.perf_counter()
        res = fn(seqs, *args)
        timings[key][0] += time.perf_counter() - t
        timings[key][1] += sum(len(x) for x in seqs)
        return res

    with progress_bar("score", total=total) as bar:
        for c, r in todo:
            bar.describe(f"score chunk {c + 1}/{len(chunks)}")
            seqs = [s.ids[i] for i in r]
            kw = {"on_batch": bar.advance} if teacher.name == "hf" else {}
            s_kw = {"on_batch": bar.advance} if student.name == "hf" else {}
            keys = [s.sample_id[i] for i in r]
            if sampling:
                t_scores, draws = timed("teacher", lambda x, _: sample_teacher(teacher, x, keys, sampling, **kw), seqs, None)
            else:
                t_scores = timed("teacher", lambda x, k: teacher.score(x, k, **kw), seqs, top_k)
            s_scores = timed("student", lambda x, k: student.score(x, k, **s_kw), seqs, 0)
            bar.advance((0 if kw else 1) * sum(len(x) for x in seqs) + (0 if s_kw else 1) * sum(len(x) for x in seqs))
            cols: dict[str, Any] = {
                "sample_id": [s.sample_id[i] for i in r],
                "domain": [s.domain[i] for i in r],
                "split": [s.split[i] for i in r],
                "num_tokens": np.array([len(s.ids[i]) - s.target_start[i] for i in r], dtype=np.int32),
                "teacher_nll": _mean_nll(t_scores, [s.target_start[i] for i in r]),
                "student_nll": _mean_nll(s_scores, [s.target_start[i] for i in r]),
            }
            if use_rouge:
                from distillkit.difficulty import rouge_l

                prompts = [s.ids[i][: s.target_start[i]] for i in r]
                gen = timed("generate", lambda x, n: student.generate(x, n), prompts, gen_max_new_tokens)
                preds = tokenizer.batch_decode(gen, skip_special_tokens=True)
                cols["rouge_l"] = rouge_l(preds, [s.responses[i] for i in r])  # type: ignore[index]
            if top_k:
                table = topk_table(cols["sample_id"], seqs, t_scores, topk_format, vocab)
                writer.write(f"topk/part-{c:05d}.arrow", table, compression="zstd")
            elif sampling:
                writer.write(f"sampled/part-{c:05d}.arrow", sampled_table(keys, seqs, draws, sampling, vocab), compression="zstd")
            writer.write(_chunk_name(c), pa.table(cols))
    teacher.close()
    student.close()
    for key, (secs, toks) in timings.items():
        if toks:
            figures[f"{key}_tokens_per_s"] = round(toks / secs, 1)
            figures[f"{key}_s"] = round(secs, 2)
    return figures


def sample_teacher(engine, sequences, keys: list[str], spec: SampleSpec, on_batch=None):
    """The hf teacher's scores plus `spec.count` draws per position from its T = 1 distribution.

    Returns (SequenceScores per sequence, (draws [L-1, n] ascending, their log-probs [L-1, n]) per sequence).
    Batching as `HFEngine.score` does (length-sorted, `position_chunk` positions of logits at a time); the
    uniforms of sequence i come from the stream of (spec.seed, keys[i]) (`distillkit.sampled_store.uniforms`), so
    the draws do not depend on the batch a sequence lands in.
    """
    import torch

    from distillkit.engines.base import SequenceScores
    from distillkit.engines.hf import length_sorted_batches, right_padded
    from distillkit.sampled_store import draw, uniforms

    if getattr(engine, "name", None) != "hf":
        raise ValueError("drawing teacher samples needs the hf engine (the full distribution at every position)")
    n = spec.count
    lengths = [len(x) for x in sequences]
    scores: list[Any] = [None] * len(sequences)
    draws: list[Any] = [None] * len(sequences)
    decoder = engine.model.get_decoder()
    for batch in length_sorted_batches(lengths, engine.batch_tokens):
        ids, mask = right_padded(sequences, batch, engine.pad_id)
        u = np.concatenate([uniforms(spec.seed, keys[i], lengths[i] - 1, n, spec.scheme) for i in batch])
        with torch.inference_mode():
            hidden = decoder(input_ids=ids.to(engine.device), attention_mask=mask.to(engine.device)).last_hidden_state
            valid = mask[:, 1:].bool().to(hidden.device)
            h, t = hidden[:, :-1][valid], ids[:, 1:].to(hidden.device)[valid]
            tgt = torch.empty(t.shape[0], dtype=torch.float32, device=h.device)
            d_ids = torch.empty((t.shape[0], n), dtype=torch.long, device=h.device)
            d_lp = torch.empty((t.shape[0], n), dtype=torch.float32, device=h.device)
            for a in range(0, t.shape[0], engine.position_chunk):
                e = min(t.shape[0], a + engine.position_chunk)
                logits = engine._logits(h[a:e])  # fp32, softcapped and sliced to the vocabulary as the engine scores
                lp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
                tgt[a:e] = lp.gather(-1, t[a:e, None]).squeeze(-1)
                d_ids[a:e] = draw(lp, u[a:e])
                d_lp[a:e] = lp.gather(-1, d_ids[a:e])
            tgt_np, ids_np, lp_np = tgt.cpu().numpy(), d_ids.cpu().numpy(), d_lp.cpu().numpy()
        starts = np.concatenate([[0], np.cumsum([lengths[i] - 1 for i in batch])])
        for r, i in enumerate(batch):
            a, b = int(starts[r]), int(starts[r + 1])
            scores[i] = SequenceScores(tgt_np[a:b])
            draws[i] = (ids_np[a:b], lp_np[a:b])
        if on_batch is not None:
            on_batch(sum(lengths[i] for i in batch))
    return scores, draws


def _mean_nll(scores, starts: list[int]) -> np.ndarray:
    return np.array([-float(np.mean(sc.target_logprobs[st - 1 :])) for sc, st in zip(scores, starts)], dtype=np.float32)


def concat_chunks(writer) -> pa.Table:
    from distillkit.artifacts import read_arrow

    parts = sorted(writer.path("chunks").glob("part-*.arrow"))
    return pa.concat_tables([read_arrow(p) for p in parts]) if parts else pa.table({c: pa.array([], t) for c, t in SAMPLE_COLUMNS.items() if c in CHUNK_COLUMNS})


def finalize(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Add the derived per-sample measures and build the per-domain table."""
    from distillkit.difficulty import rrf_difficulty

    t_nll = table.column("teacher_nll").to_numpy().astype(np.float64)
    s_nll = table.column("student_nll").to_numpy().astype(np.float64)
    ids = table.column("sample_id").to_pylist()
    cols = {c: table.column(c) for c in CHUNK_COLUMNS}
    cols["num_tokens"] = table.column("num_tokens").cast(pa.int32())
    cols["student_ce"] = pa.array(s_nll, pa.float32())
    cols["nll_gap"] = pa.array(s_nll - t_nll, pa.float32())
    cols["ppl_ratio"] = pa.array(np.exp(np.clip(s_nll - t_nll, -80, 80)), pa.float32())
    if "rouge_l" in table.column_names:
        rouge = table.column("rouge_l").to_numpy()
        cols["rouge_l"] = pa.array(rouge, pa.float32())
        cols["difficulty"] = pa.array(rrf_difficulty(rouge, s_nll, ids), pa.float32())
    else:
        cols["difficulty"] = pa.array(s_nll, pa.float32())
    samples = pa.table(cols)
    return samples, domain_table(samples)


def merge_shards(dirs: list[Path], out: Path, *, overwrite: bool = False) -> Path:
    """Join complete shard artifacts (all i of one n, same config) into one score artifact."""
    import shutil

    from distillkit.artifacts import ArtifactWriter, read_artifact
    from distillkit.errors import ArtifactError

    from distillkit.records import ScoreRecord

    arts = [read_artifact(d, "score") for d in dirs]
    records = {a.path: ScoreRecord.from_manifest(a.manifest, f"{a.path}/manifest.json") for a in arts}
    shards = sorted(arts, key=lambda a: records[a.path].shard[0])
    n = records[shards[0].path].shard[1]
    got = [records[a.path].shard for a in shards]
    if got != [(i, n) for i in range(n)]:
        have = ", ".join(f"{i}/{m}" for i, m in got)
        raise ArtifactError(f"--merge needs every shard 0..{n - 1} of {n} exactly once, got {have}")
    base = {k: v for k, v in shards[0].config.items() if k != "shard"}
    for a in shards[1:]:
        other = {k: v for k, v in a.config.items() if k != "shard"}
        if other != base:
            diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
            raise ArtifactError(f"shard {a.path} was scored with another config (differs in: {', '.join(diff)}); rescore it")
    writer = ArtifactWriter(out, "score", {**base, "shard": f"merged/{n}"}, inputs=shards, overwrite=overwrite)
    if writer.done:
        return out
    table = pa.concat_tables([a.table("samples.arrow").select(CHUNK_COLUMNS + (["rouge_l"] if "rouge_l" in a.table("samples.arrow").column_names else [])) for a in shards])
    samples, domains = finalize(table)
    writer.write("samples.arrow", samples)
    writer.write("domains.arrow", domains)
    for a in shards:
        i = records[a.path].shard[0]
        for store in STORE_DIRS:
            for name in a.files(f"{store}/"):
                dst = writer.path(f"{store}/shard{i:04d}-{Path(name).name}")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(a.file(name), dst)
    from distillkit.seqkd import RESPONSE_COLUMNS, RESPONSES_FILE

    if all(RESPONSES_FILE in a.files() for a in shards):  # score --responses teacher: the shards' answers, joined
        writer.write(RESPONSES_FILE, pa.concat_tables([a.table(RESPONSES_FILE, RESPONSE_COLUMNS) for a in shards]))
    figures = {"samples": samples.num_rows, "merged_shards": n}
    store_files = sorted(p for d in STORE_DIRS for p in writer.path(d).glob("*.arrow"))
    if store_files and all("store_positions" in a.manifest["figures"] for a in shards):
        from distillkit.sampled_store import store_figures

        figures.update(store_figures(store_files, sum(int(a.manifest["figures"]["store_positions"]) for a in shards)))
    for key in ("teacher_tokens_per_s", "student_tokens_per_s"):
        vals = [a.manifest["figures"].get(key) for a in shards if a.manifest["figures"].get(key)]
        if vals:
            figures[key] = round(float(np.mean(vals)), 1)
    import dataclasses

    whole = dataclasses.replace(records[shards[0].path], shard=(0, 1))
    writer.finish(figures, extra={**whole.to_manifest(), "merged_from": n})
    return out
