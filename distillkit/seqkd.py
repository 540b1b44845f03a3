"""Sequence-level KD (Kim & Rush, 2016): train on the teacher's own answers instead of the data's.

``score --responses teacher`` has the teacher answer every *training* prompt of prompt/response data
(greedy decoding through the scoring engine, hf or vLLM), replaces each training row's response with its
answer, and scores and stores the result like any data: the artifact's ``responses.arrow`` (``sample_id``,
``response``, ``response_tokens``) is the data artifact, and every later stage that re-reads the scored data
(`train`, the study, the benches) reads it through :func:`scored_dataset`, which puts those answers back in.
Held-out rows keep the data's own responses, so held-out perplexities, DDK's per-domain ratios and `eval`
still measure against the real answers, never against the teacher's.

Generation is written in resumable parts (``responses-parts/part-NNNNN.arrow``, one per ``chunk_size``
training prompts) that ``--resume`` does not redo; the parts are joined into ``responses.arrow`` at the end.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from distillkit.artifacts import Artifact, ArtifactWriter
    from distillkit.data import Dataset

RESPONSES_FILE = "responses.arrow"
PARTS_DIR = "responses-parts"
RESPONSE_COLUMNS = {"sample_id": pa.string(), "response": pa.string(), "response_tokens": pa.int32()}


def prompt_ids(prompts: list[str], tok, max_length: int, chat: bool = False) -> list[list[int]]:
    """Each prompt's token ids as `distillkit.data.tokenize` cuts them (its last ``max_length // 2`` tokens)."""
    from distillkit.data import prompt_token_ids

    half = max_length // 2
    return [p[-half:] if len(p) > half else p for p in prompt_token_ids(prompts, tok, chat)]


def teacher_responses(rows: pa.Table, tok, writer: ArtifactWriter, *, teacher_dir: str, engine: str, dtype: str,
                      max_length: int, batch_tokens: int, max_new_tokens: int, chunk_size: int,
                      chat: bool = False) -> tuple[pa.Table, dict[str, Any]]:
    """The teacher's greedy answers to the prompts of the training rows of `rows` (prompt/response data),
    written part by part into `writer` (parts already there are kept); returns (sample_id, response,
    response_tokens) in row order and throughput figures."""
    import time

    from distillkit.engines import make_engine
    from distillkit.progress import progress_bar

    train = rows.filter(pc.equal(rows.column("split"), "train"))  # dev and test rows keep their references
    ids = train.column("sample_id").to_pylist()
    chunks = [range(b, min(len(ids), b + chunk_size)) for b in range(0, len(ids), chunk_size)]
    todo = [(c, r) for c, r in enumerate(chunks) if not writer.has(_part(c))]
    figures: dict[str, Any] = {"responses": len(ids), "response_chunks_resumed": len(chunks) - len(todo)}
    if todo:
        prompts = prompt_ids(train.column("prompt").to_pylist(), tok, max_length, chat)
        model = make_engine(engine, teacher_dir, dtype, max_length, batch_tokens, 1, vocab_size=len(tok))
        t0, new_tokens = time.perf_counter(), 0
        with progress_bar("teacher answers", total=sum(len(r) for _, r in todo), unit="answer") as bar:
            for c, r in todo:
                budget = [min(max_new_tokens, max_length - len(prompts[i])) for i in r]
                gen = model.generate([prompts[i] for i in r], max(budget))
                gen = [g[:b] for g, b in zip(gen, budget)]  # every answer fits max_length after its prompt
                new_tokens += sum(len(g) for g in gen)
                writer.write(_part(c), pa.table({
                    "sample_id": pa.array([ids[i] for i in r], pa.string()),
                    "response": pa.array(tok.batch_decode(gen, skip_special_tokens=True), pa.string()),
                    "response_tokens": pa.array([len(g) for g in gen], pa.int32()),
                }))
                bar.advance(len(r))
        model.close()
        figures["response_tokens_per_s"] = round(new_tokens / max(time.perf_counter() - t0, 1e-9), 1)
    from distillkit.artifacts import read_arrow

    parts = [read_arrow(writer.path(_part(c))) for c in range(len(chunks))]
    table = pa.concat_tables(parts) if parts else pa.table({k: pa.array([], t) for k, t in RESPONSE_COLUMNS.items()})
    if table.num_rows:
        figures["response_tokens_mean"] = round(float(np.mean(table.column("response_tokens").to_numpy())), 1)
    return table, figures


def apply_responses(table: pa.Table, responses: pa.Table) -> pa.Table:
    """`table` (data rows) with the response of every row named in `responses` replaced by its answer."""
    answer = dict(zip(responses.column("sample_id").to_pylist(), responses.column("response").to_pylist()))
    if not answer:
        return table
    old = table.column("response").to_pylist()
    new = [answer.get(s, o) for s, o in zip(table.column("sample_id").to_pylist(), old)]
    i = table.column_names.index("response")
    return table.set_column(i, "response", pa.array(new, pa.string()))


def scored_dataset(scores: Artifact) -> Dataset:
    """The data a score artifact was made on, re-read with its data spec (the same split and subsample),
    refused if it changed since, and with the teacher's answers of ``score --responses teacher`` put back."""
    from distillkit.assets import resolve_data
    from distillkit.data import load_data
    from distillkit.data_options import DataOptions
    from distillkit.errors import DataError

    sc = scores.config
    data_path = resolve_data(sc["data"])
    ds = load_data(DataOptions.from_config(sc).spec(data_path))
    if sc.get("data_fingerprint") and ds.fingerprint != sc["data_fingerprint"]:
        raise DataError(f"the data at {data_path} changed since it was scored into {scores.path} (fingerprint "
                        f"{ds.fingerprint[:12]} vs {sc['data_fingerprint'][:12]}); rescore it and rebuild the plan")
    if RESPONSES_FILE in scores.files():
        ds = dataclasses.replace(ds, table=apply_responses(ds.table, scores.table(RESPONSES_FILE, RESPONSE_COLUMNS)))
    return ds


def _part(c: int) -> str:
    return f"{PARTS_DIR}/part-{c:05d}.arrow"


__all__ = ["RESPONSES_FILE", "RESPONSE_COLUMNS", "apply_responses", "prompt_ids", "scored_dataset", "teacher_responses"]
