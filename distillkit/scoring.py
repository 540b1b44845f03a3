"""The work behind `distillkit score`: tokenize, score in resumable chunks, summarise per domain.

Column contract of ``samples.arrow`` (pinned by tests): sample_id, domain, split,
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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SAMPLE_COLUMNS = {
    "sample_id": pa.string(),
    "domain": pa.string(),
    "split": pa.string(),
    "num_tokens": pa.int32(),
    "teacher_nll": pa.float32(),
    "student_nll": pa.float32(),
    "student_ce": pa.float32(),
    "nll_gap": pa.float32(),
    "ppl_ratio": pa.float32(),
    "difficulty": pa.float32(),
}
DOMAIN_COLUMNS = {
    "domain": pa.string(),
    "num_samples": pa.int64(),
    "num_tokens": pa.int64(),
    "teacher_ppl": pa.float64(),
    "student_ppl": pa.float64(),
    "ppl_ratio": pa.float64(),
}
_BASE = ["sample_id", "domain", "split", "num_tokens", "teacher_nll", "student_nll"]


@dataclass
class Samples:
    """Tokenized samples: targets are ids[target_start:] (predicted from the tokens before them)."""

    sample_id: list[str]
    domain: list[str]
    split: list[str]
    ids: list[list[int]]
    target_start: list[int]
    responses: list[str] | None
    dropped: int

    def __len__(self) -> int:
        return len(self.ids)


def tokenize(rows: pa.Table, fmt: str, tok, max_length: int) -> Samples:
    sid, dom, spl = (rows.column(c).to_pylist() for c in ("sample_id", "domain", "split"))
    keep: list[int] = []
    ids: list[list[int]] = []
    starts: list[int] = []
    if fmt == "instruction":
        prompts = tok(rows.column("prompt").to_pylist())["input_ids"]
        resp_text = rows.column("response").to_pylist()
        resps = tok(resp_text, add_special_tokens=False)["input_ids"]
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        for i, (p, r) in enumerate(zip(prompts, resps)):
            p = p[-(max_length // 2) :] if len(p) > max_length // 2 else p  # keep room for the answer
            seq = (p + r + eos)[:max_length]
            if len(p) == 0 or len(seq) <= len(p):
                continue
            keep.append(i)
            ids.append(seq)
            starts.append(len(p))
    else:
        enc = tok(rows.column("text").to_pylist())["input_ids"]
        for i, seq in enumerate(enc):
            seq = seq[:max_length]
            if len(seq) < 2:
                continue
            keep.append(i)
            ids.append(seq)
            starts.append(1)
    return Samples(
        sample_id=[sid[i] for i in keep],
        domain=[dom[i] for i in keep],
        split=[spl[i] for i in keep],
        ids=ids,
        target_start=starts,
        responses=[resp_text[i] for i in keep] if fmt == "instruction" else None,
        dropped=rows.num_rows - len(keep),
    )


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
) -> dict[str, Any]:
    """Score every missing chunk with both models; returns throughput figures."""
    from distillkit.engines import make_engine
    from distillkit.progress import progress_bar
    from distillkit.topk import topk_table

    chunks = [(c, range(b, min(len(s), b + chunk_size))) for c, b in enumerate(range(0, len(s), chunk_size))]
    todo = [(c, r) for c, r in chunks if not writer.has(_chunk_name(c)) or (top_k and not writer.has(f"topk/part-{c:05d}.arrow"))]
    figures: dict[str, Any] = {"samples": len(s), "chunks": len(chunks), "chunks_resumed": len(chunks) - len(todo)}
    if not todo:
        return figures
    vocab = len(tokenizer)
    teacher = make_engine(engine, teacher_dir, dtype, max_length, batch_tokens, max(top_k, 1), vocab_size=vocab)
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
            t_scores = timed("teacher", lambda x, k: teacher.score(x, k, **kw), seqs, top_k)
            s_scores = timed("student", lambda x, k: student.score(x, k, **kw), seqs, 0)
            if not kw:
                bar.advance(2 * sum(len(x) for x in seqs))
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
            writer.write(_chunk_name(c), pa.table(cols))
    teacher.close()
    student.close()
    for key, (secs, toks) in timings.items():
        if toks:
            figures[f"{key}_tokens_per_s"] = round(toks / secs, 1)
            figures[f"{key}_s"] = round(secs, 2)
    return figures


def _mean_nll(scores, starts: list[int]) -> np.ndarray:
    return np.array([-float(np.mean(sc.target_logprobs[st - 1 :])) for sc, st in zip(scores, starts)], dtype=np.float32)


def concat_chunks(writer) -> pa.Table:
    from distillkit.artifacts import read_arrow

    parts = sorted(writer.path("chunks").glob("part-*.arrow"))
    return pa.concat_tables([read_arrow(p) for p in parts]) if parts else pa.table({c: pa.array([], t) for c, t in SAMPLE_COLUMNS.items() if c in _BASE})


def finalize(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Add the derived per-sample measures and build the per-domain table."""
    from distillkit.difficulty import rrf_difficulty

    t_nll = table.column("teacher_nll").to_numpy().astype(np.float64)
    s_nll = table.column("student_nll").to_numpy().astype(np.float64)
    ids = table.column("sample_id").to_pylist()
    cols = {c: table.column(c) for c in _BASE}
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


def difficulty_measure(samples: pa.Table) -> str:
    return "rrf" if "rouge_l" in samples.column_names else "student_ce"


def domain_table(samples: pa.Table) -> pa.Table:
    """Token-weighted per-domain perplexities on the held-out slice (training rows if a domain has none)."""
    out: dict[str, list] = {k: [] for k in ("domain", "num_samples", "num_tokens", "teacher_nll", "student_nll", "teacher_ppl", "student_ppl", "ppl_ratio", "heldout", "num_train_samples")}
    domains = sorted(set(samples.column("domain").to_pylist()))
    for d in domains:
        in_d = samples.filter(pc.equal(samples.column("domain"), d))
        val = in_d.filter(pc.equal(in_d.column("split"), "validation"))
        heldout = val.num_rows > 0
        use = val if heldout else in_d
        n = use.column("num_tokens").to_numpy().astype(np.float64)
        t = float(np.sum(use.column("teacher_nll").to_numpy() * n) / n.sum())
        s = float(np.sum(use.column("student_nll").to_numpy() * n) / n.sum())
        out["domain"].append(d)
        out["num_samples"].append(use.num_rows)
        out["num_tokens"].append(int(n.sum()))
        out["teacher_nll"].append(t)
        out["student_nll"].append(s)
        out["teacher_ppl"].append(math.exp(t))
        out["student_ppl"].append(math.exp(s))
        out["ppl_ratio"].append(math.exp(s - t))
        out["heldout"].append(heldout)
        out["num_train_samples"].append(in_d.num_rows - val.num_rows)
    types = {**DOMAIN_COLUMNS, "teacher_nll": pa.float64(), "student_nll": pa.float64(), "heldout": pa.bool_(), "num_train_samples": pa.int64()}
    return pa.table({k: pa.array(v, types[k]) for k, v in out.items()})


def merge_shards(dirs: list[Path], out: Path, *, overwrite: bool = False) -> Path:
    """Join complete shard artifacts (all i of one n, same config) into one score artifact."""
    import shutil

    from distillkit.artifacts import ArtifactWriter, read_artifact
    from distillkit.errors import ArtifactError

    arts = [read_artifact(d, "score") for d in dirs]
    shards = sorted(arts, key=lambda a: a.manifest.get("shard", [0, 1])[0])
    n = shards[0].manifest.get("shard", [0, 1])[1]
    got = [a.manifest.get("shard", [0, 1]) for a in shards]
    if got != [[i, n] for i in range(n)]:
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
    table = pa.concat_tables([a.table("samples.arrow").select(_BASE + (["rouge_l"] if "rouge_l" in a.table("samples.arrow").column_names else [])) for a in shards])
    samples, domains = finalize(table)
    writer.write("samples.arrow", samples)
    writer.write("domains.arrow", domains)
    for a in shards:
        i = a.manifest["shard"][0]
        for name in a.files("topk/"):
            dst = writer.path(f"topk/shard{i:04d}-{Path(name).name}")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(a.path / name, dst)
    figures = {"samples": samples.num_rows, "merged_shards": n}
    for key in ("teacher_tokens_per_s", "student_tokens_per_s"):
        vals = [a.manifest["figures"].get(key) for a in shards if a.manifest["figures"].get(key)]
        if vals:
            figures[key] = round(float(np.mean(vals)), 1)
    m0 = shards[0].manifest
    writer.finish(figures, extra={"shard": [0, 1], "merged_from": n, "format": m0.get("format"), "data_sources": m0.get("data_sources"),
                                  "teacher_dir": m0.get("teacher_dir"), "student_dir": m0.get("student_dir"),
                                  **({"topk": m0["topk"]} if "topk" in m0 else {})})
    return out
