"""Three splits (train / dev / test), the chat template, teacher correction (train --teacher-mode none) and the
answers' stop / exact-match figures: issue 32's guarantees on tiny in-process models."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch

from tests.conftest import make_texts, write_jsonl


def _data(root: Path, *, test_text: str | None = None) -> Path:
    """30 texts in each of 3 domains with stable ids; `test_text` replaces the content of every record whose id
    the split puts in the test slice (the ids, so the split, stay the same)."""
    from distillkit.data import load_data
    from distillkit.data_options import DataSpec

    rows = []
    for d, seed in (("alpha", 20), ("beta", 21), ("gamma", 22)):
        rows += [{"id": f"{d}-{i}", "text": t, "domain": d} for i, t in enumerate(make_texts(30, seed=seed, min_words=15, max_words=35))]
    path = write_jsonl(root / "data.jsonl", rows)
    if test_text is None:
        return path
    ds = load_data(DataSpec(path=str(path), val_size=4, val_fraction=0.2, dev_size=4))
    t = ds.table
    test_ids = set(t.filter(pc.equal(t.column("split"), "validation")).column("sample_id").to_pylist())
    assert len(test_ids) == 12
    for r in rows:
        if r["id"] in test_ids:
            r["text"] = test_text + " " + r["text"][::-1]
    return write_jsonl(path, rows)


def test_dev_split_comes_after_the_test_slice_and_zero_keeps_the_old_split(tmp_path):
    from distillkit.data import load_data
    from distillkit.data_options import DataSpec

    path = _data(tmp_path)
    old = load_data(DataSpec(path=str(path), val_size=4, val_fraction=0.2))
    new = load_data(DataSpec(path=str(path), val_size=4, val_fraction=0.2, dev_size=5))
    assert old.fingerprint == load_data(DataSpec(path=str(path), val_size=4, val_fraction=0.2, dev_size=0)).fingerprint
    assert set(old.table.column("split").to_pylist()) == {"train", "validation"} and not old.has_dev
    o, n = (dict(zip(t.table.column("sample_id").to_pylist(), t.table.column("split").to_pylist())) for t in (old, new))
    assert {k for k, v in o.items() if v == "validation"} == {k for k, v in n.items() if v == "validation"}  # test unchanged
    dev = {k for k, v in n.items() if v == "dev"}
    assert len(dev) == 15 and all(o[k] == "train" for k in dev) and new.has_dev  # 5 per domain, taken from training rows
    assert [r.num_rows for r in (new.heldout("alpha", split="dev"), new.heldout("alpha"))] == [5, 4]
    # never more than a domain can give: at least one training row stays
    tiny = load_data(DataSpec(path=str(path), val_size=4, val_fraction=0.2, dev_size=100))
    assert tiny.table.filter(pc.equal(tiny.table.column("split"), "train")).num_rows == 3


def _score_plan_train(root: Path, data: Path, teacher: Path, student: Path, *, dev_size: int, **train_kw):
    from distillkit.data_options import DataOptions
    from distillkit.pipelines.plan import PlanConfig
    from distillkit.pipelines.plan import run as run_plan
    from distillkit.pipelines.score import ScoreConfig
    from distillkit.pipelines.score import run as run_score
    from distillkit.pipelines.train import TrainConfig
    from distillkit.pipelines.train import run as run_train

    run_score(ScoreConfig(data=str(data), teacher=str(teacher), student=str(student), out=str(root / "score"), dtype="float32",
                          max_length=48, top_k=8, data_opts=DataOptions(val_size=4, val_fraction=0.2, dev_size=dev_size)))
    run_plan(PlanConfig(scores=str(root / "score"), out=str(root / "plan"), stage_unit="steps", stage_length=2, ddk_interval=2))
    kw = dict(plan=str(root / "plan"), teacher=str(teacher), student=str(student), out=str(root / "train"), steps=8,
              batch_size=4, seq_len=48, lr=1e-3, mixture="ddk", ddk_interval=2, early_check=3, save_every=0,
              teacher_mode="offline", teacher_dtype="float32", precision="fp32", seed=0)
    run_train(TrainConfig(**{**kw, **train_kw}))
    return root / "train"


def _weights(train_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(train_dir / "student" / "model.safetensors"))


def test_runs_whose_test_documents_differ_train_the_same_student(tmp_path, tiny_teacher_dir, tiny_student_dir, one_thread):
    """The split guard: DDK's re-measurement and the early check read dev, so changing every test document changes
    the report but not one bit of the trained student; without a dev split (the fallback) it changes the student."""
    a, b = tmp_path / "a", tmp_path / "b"
    runs = {}
    for name, root, text in (("a", a, None), ("b", b, "zebra quartz")):
        root.mkdir()
        runs[name] = _score_plan_train(root, _data(root, test_text=text), tiny_teacher_dir, tiny_student_dir, dev_size=4)
    wa, wb = _weights(runs["a"]), _weights(runs["b"])
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((r / "manifest.json").read_text()) for r in (runs["a"], runs["b"]))
    assert ma["figures"]["early_check"] == mb["figures"]["early_check"]  # the check read the same (dev) rows
    from distillkit.artifacts import read_arrow

    ha, hb = (read_arrow(r / "heldout.arrow") for r in (runs["a"], runs["b"]))
    assert ha.column("student_ppl_after").to_pylist() != hb.column("student_ppl_after").to_pylist()  # the report read test
    mixa, mixb = (read_arrow(r / "mixture.arrow") for r in (runs["a"], runs["b"]))
    assert mixa.column("weight").to_pylist() == mixb.column("weight").to_pylist()
    assert len(set(mixa.column("step").to_pylist())) > 2  # DDK did re-weight during the run

    # Control: without a dev split DDK falls back to the test slice, and the same change moves its weights.
    c, d = tmp_path / "c", tmp_path / "d"
    for root, text in ((c, None), (d, "zebra quartz")):
        root.mkdir()
        _score_plan_train(root, _data(root, test_text=text), tiny_teacher_dir, tiny_student_dir, dev_size=0)
    mixc, mixd = (read_arrow(r / "train" / "mixture.arrow").column("weight").to_pylist() for r in (c, d))
    assert mixc != mixd


def _chat_tokenizer(src: Path, dst: Path) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    tok.save_pretrained(dst)
    return dst


def _instruction_rows(n: int = 24) -> list[dict]:
    texts = make_texts(2 * n, seed=5, min_words=4, max_words=10)
    return [{"id": f"q{i}", "prompt": texts[2 * i], "response": " " + texts[2 * i + 1] + f" The answer is {i}.",
             "domain": "qa"} for i in range(n)]


def test_chat_template_wraps_prompts_and_off_keeps_them(tmp_path, tiny_tok_dir):
    import pyarrow as pa
    from transformers import AutoTokenizer

    from distillkit.data import tokenize, uses_chat_template

    chat_tok = AutoTokenizer.from_pretrained(_chat_tokenizer(tiny_tok_dir, tmp_path / "chat"))
    plain_tok = AutoTokenizer.from_pretrained(tiny_tok_dir)
    rows = pa.table({"sample_id": ["a"], "domain": ["d"], "split": ["train"], "prompt": ["the model said"],
                     "response": [" the data."]})
    assert uses_chat_template("auto", chat_tok, "instruction")
    assert not uses_chat_template("off", chat_tok, "instruction") and not uses_chat_template("auto", plain_tok, "instruction")
    assert not uses_chat_template("auto", chat_tok, "text")
    on = tokenize(rows, "instruction", chat_tok, 64, chat=True)
    off = tokenize(rows, "instruction", chat_tok, 64, chat=False)
    want_prompt = chat_tok("<s>user: the model said</s><s>assistant: ", add_special_tokens=False)["input_ids"]
    assert on.ids[0][: on.target_start[0]] == want_prompt
    eos = chat_tok.eos_token_id
    assert on.ids[0][on.target_start[0]:] == chat_tok("the data.", add_special_tokens=False)["input_ids"] + [eos]
    assert off.ids[0][: off.target_start[0]] == chat_tok("the model said")["input_ids"]
    assert off.ids[0][off.target_start[0]:] == chat_tok(" the data.", add_special_tokens=False)["input_ids"] + [eos]


def test_score_records_the_chat_template_and_old_artifacts_read_as_off(tmp_path, tiny_tok_dir, tiny_teacher_dir):
    from distillkit.artifacts import read_artifact
    from distillkit.data_options import DataOptions
    from distillkit.pipelines.score import ScoreConfig
    from distillkit.pipelines.score import run as run_score
    from tests.conftest import build_model

    model = build_model(tmp_path / "m", _chat_tokenizer(tiny_tok_dir, tmp_path / "chat"), layers=1, hidden=32, seed=4)
    data = write_jsonl(tmp_path / "qa.jsonl", _instruction_rows())
    outs = {}
    for mode in ("auto", "off"):
        run_score(ScoreConfig(data=str(data), teacher=str(model), student=str(model), out=str(tmp_path / mode), dtype="float32",
                              max_length=64, data_opts=DataOptions(val_size=4, val_fraction=0.3, chat_template=mode), rouge="off"))
        outs[mode] = read_artifact(tmp_path / mode, "score")
    assert outs["auto"].manifest.get("chat_template") is True and "chat_template" not in outs["off"].manifest
    assert outs["auto"].table("samples.arrow").num_rows == outs["off"].table("samples.arrow").num_rows == 24
    assert "chat_template" not in outs["off"].config or outs["off"].config["chat_template"] == "off"
    assert DataOptions.from_config({"data": "x"}).chat_template == "off"  # a manifest from before the key: no template
    assert DataOptions.from_config({"data": "x"}).dev_size == 0


def test_teacher_correction_is_plain_ce_and_its_output_is_recorded_as_a_corrected_teacher(
        tmp_path, tiny_teacher_dir, tiny_student_dir, one_thread):
    from distillkit.artifacts import read_artifact
    from distillkit.pipelines.eval import EvalConfig
    from distillkit.pipelines.eval import run as run_eval
    from distillkit.pipelines.plan import PlanConfig
    from distillkit.pipelines.plan import run as run_plan
    from distillkit.pipelines.score import ScoreConfig
    from distillkit.pipelines.score import run as run_score
    from distillkit.pipelines.train import TrainConfig
    from distillkit.pipelines.train import run as run_train

    data = _data(tmp_path)
    from distillkit.data_options import DataOptions

    common = dict(dtype="float32", max_length=48, data_opts=DataOptions(val_size=4, val_fraction=0.2, dev_size=4))
    run_score(ScoreConfig(data=str(data), teacher=str(tiny_teacher_dir), student=str(tiny_student_dir), out=str(tmp_path / "s0"), **common))
    run_plan(PlanConfig(scores=str(tmp_path / "s0"), out=str(tmp_path / "p0"), curriculum=False, stage_unit="steps", stage_length=6))
    # the teacher fine-tuned on the training split, no teacher of its own (no --teacher needed)
    fix = run_train(TrainConfig(plan=str(tmp_path / "p0"), student=str(tiny_teacher_dir), out=str(tmp_path / "fix"), teacher_mode="none",
                                steps=6, batch_size=4, seq_len=48, lr=1e-3, mixture="uniform", save_every=0, precision="fp32"))
    m = fix.manifest
    assert m["train"]["objective"] == "sft" and m["train"]["loss"]["teacher_mode"] == "none"
    metrics = read_artifact(tmp_path / "fix", "train").table("metrics.arrow")
    assert all(v == 0.0 for v in metrics.column("kd_loss").to_pylist())
    assert metrics.column("loss").to_pylist() == metrics.column("ce_loss").to_pylist()
    held = read_artifact(tmp_path / "fix", "train").table("heldout.arrow")
    assert held.column("student_ppl_after")[0].as_py() < held.column("student_ppl_before")[0].as_py()
    corrected = tmp_path / "fix" / "student"

    run_score(ScoreConfig(data=str(data), teacher=str(corrected), student=str(tiny_student_dir), out=str(tmp_path / "s1"), **common))
    srec = read_artifact(tmp_path / "s1", "score").manifest["teacher"]
    assert srec["corrected"] is True and srec["objective"] == "sft" and srec["trained_from"] == str(tiny_teacher_dir)
    assert srec["manifest_sha256"] == read_artifact(tmp_path / "fix", "train").sha256
    run_plan(PlanConfig(scores=str(tmp_path / "s1"), out=str(tmp_path / "p1"), stage_unit="steps", stage_length=2))
    kd = run_train(TrainConfig(plan=str(tmp_path / "p1"), teacher=str(corrected), student=str(tiny_student_dir), out=str(tmp_path / "kd"),
                               steps=4, batch_size=4, seq_len=48, lr=1e-3, mixture="uniform", save_every=0, precision="fp32",
                               teacher_dtype="float32"))
    assert kd.manifest["train"]["teacher"]["corrected"] is True and kd.manifest["train"]["objective"] == "distill"
    run_eval(EvalConfig(teacher=str(corrected), models=(f"after={tmp_path / 'kd' / 'student'}",), data=str(tmp_path / "s1"),
                        out=str(tmp_path / "ev"), tasks=("none",), dtype="float32", max_length=48, plot=False))
    models = read_artifact(tmp_path / "ev", "eval").manifest["eval"]["models"]
    teacher_entry = next(e for e in models if e["role"] == "teacher")
    assert teacher_entry["provenance"]["corrected"] is True
    # an untouched model directory has no provenance
    plain = next(e for e in models if e["label"] == "after")
    assert plain["provenance"]["corrected"] is False  # a distilled student is a train artifact too, but not a correction


def test_teacher_mode_none_refuses_on_policy_and_needs_no_teacher():
    from distillkit.pipelines.train import TrainConfig

    ok = TrainConfig(plan="p", student="s", out="o", teacher_mode="none")
    assert ok.validate() == []
    bad = TrainConfig(plan="p", student="s", out="o", teacher_mode="none", on_policy=0.5)
    assert any("needs a teacher" in p for p in bad.validate())
    assert any("teacher is required" in p for p in TrainConfig(plan="p", student="s", out="o").validate())


def test_exact_match_eos_rate_and_length_on_hand_made_answers():
    import pyarrow as pa

    from distillkit.evaluation.generation import exact_match, final_answer, summarize
    from distillkit.schemas import GENERATION_COLUMNS

    assert final_answer("so 3 + 4 = 7.\nThe answer is 1,234.") == "1234"
    assert final_answer("#### 72") == "72" and final_answer("The answer is 5.50") == "5.5"
    assert final_answer("no number here") is None and final_answer("then 3 and 9", fallback_last_number=True) == "9"
    assert exact_match("She pays 9 * 2 = 18. The answer is 18.", " 9 * 2 = $18.\nThe answer is 18.") == 1.0
    assert exact_match("The answer is 17.", "The answer is 18.") == 0.0
    assert exact_match("... so 18 in all", "The answer is 18.") == 1.0  # no marker: the last number
    assert exact_match("The answer is 18.", "a reference without a final answer") is None
    rows = {"seed": [1, 1, 2, 2], "sample_id": ["a", "b", "a", "b"], "domain": ["d"] * 4, "rouge_l": [0.5, 0.1, 0.3, 0.3],
            "prediction": ["x"] * 4, "num_tokens": [10, 20, 30, 40], "stopped": [True, False, True, True],
            "exact_match": [1.0, 0.0, 1.0, None]}
    s = summarize(pa.table({k: pa.array(v, GENERATION_COLUMNS[k]) for k, v in rows.items()}))
    # per seed: eos 0.5 and 1.0, length 15 and 35, exact match 0.5 and 1.0 (b has no checkable reference in seed 2)
    assert s["eos_rate"] == pytest.approx(0.75) and s["answer_tokens"] == pytest.approx(25.0)
    assert s["exact_match"] == pytest.approx(0.75) and s["mean"] == pytest.approx(0.3)


def test_sample_answers_reports_which_answers_stopped(tiny_teacher_dir):
    from transformers import AutoModelForCausalLM

    from distillkit.evaluation.generation import sample_answers

    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).eval()
    prompts = [[5, 6, 7], [8, 9]]
    greedy = sample_answers(model, prompts, seed=0, max_new_tokens=6, temperature=0.0, pad_id=0)
    first = greedy[0][1]  # make the second greedy token of prompt 0 the "EOS"
    stopped: list[bool] = []
    cut = sample_answers(model, prompts, seed=0, max_new_tokens=6, temperature=0.0, pad_id=0, eos_ids=[first], stopped=stopped)
    assert cut[0] == greedy[0][: greedy[0].index(first)] and stopped[0] is True
    assert stopped[1] == (first in greedy[1]) and len(stopped) == 2


def test_full_pools_keep_the_stage_schedule_without_the_curriculum(pipeline, tmp_path):
    """plan --pools full (the fkl-schedule ablation): 4 stages, T and λ rising, every stage on all training data;
    the study's budget gives each stage epochs/S so the sample passes equal the flat arm's."""
    from distillkit.artifacts import read_artifact
    from distillkit.pipelines.plan import PlanConfig
    from distillkit.pipelines.plan import run as run_plan
    from distillkit.study import Budget

    run_plan(PlanConfig(scores=str(pipeline["scores"]), out=str(tmp_path / "full"), pools="full", stage_length=0.5))
    run_plan(PlanConfig(scores=str(pipeline["scores"]), out=str(tmp_path / "grow"), stage_length=0.5))
    full, grow = (read_artifact(tmp_path / n, "plan") for n in ("full", "grow"))
    stages = full.manifest["plan"]["stages"]
    n = full.manifest["plan"]["train_samples"]
    assert [s["num_samples"] for s in stages] == [n] * 4 and [s["temperature"] for s in stages] == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0])
    assert set(full.table("curriculum.arrow").column("stage").to_pylist()) == {0}
    assert [s["num_samples"] for s in grow.manifest["plan"]["stages"]][-1] == n and grow.manifest["plan"]["stages"][0]["num_samples"] < n
    assert full.sha256 != grow.sha256
    b = Budget("epochs", 2.0)
    assert b.stage_length(4, full_pools=True) * 4 == 2.0 and b.stage_length(4) * (1 + 2 + 3 + 4) / 4 == pytest.approx(2.0)


def test_ddk_and_the_early_check_measure_dev_rows_only(tmp_path, tiny_teacher_dir, tiny_student_dir, one_thread, monkeypatch):
    """Every in-run measurement reads the dev rows; the before/after report reads the test rows."""
    import distillkit.training.ddk as ddk
    import distillkit.training.loop as loop

    seen: list[set[str]] = []
    real = ddk.measure_heldout

    def spy(model, seqs, rows_by_domain, *a, **kw):
        seen.append({seqs.sample_id[i] for rows in rows_by_domain for i in rows})
        return real(model, seqs, rows_by_domain, *a, **kw)

    monkeypatch.setattr(ddk, "measure_heldout", spy)
    monkeypatch.setattr(loop, "measure_heldout", spy)
    train = _score_plan_train(tmp_path, _data(tmp_path), tiny_teacher_dir, tiny_student_dir, dev_size=4)
    from distillkit.data import load_data
    from distillkit.data_options import DataSpec

    t = load_data(DataSpec(path=str(tmp_path / "data.jsonl"), val_size=4, val_fraction=0.2, dev_size=4)).table
    split = dict(zip(t.column("sample_id").to_pylist(), t.column("split").to_pylist()))
    kinds = [{split[s] for s in ids} for ids in seen]
    # before (test), before (dev, for the early check), 3 DDK updates (dev), the early check (dev), after (test)
    assert kinds[0] == {"validation"} and kinds[-1] == {"validation"}
    assert all(k == {"dev"} for k in kinds[1:-1]) and len(kinds) >= 5
    assert (train / "manifest.json").is_file()


def test_a_trained_student_has_a_model_card_that_loads(pipeline, tmp_path, one_thread):
    from huggingface_hub import ModelCard

    from distillkit.pipelines.train import TrainConfig
    from distillkit.pipelines.train import run as run_train

    run_train(TrainConfig(plan=str(pipeline["plan"]), teacher=str(pipeline["teacher"]), student=str(pipeline["student"]),
                          out=str(tmp_path / "t"), steps=4, batch_size=4, seq_len=48, lr=1e-3, save_every=0,
                          teacher_dtype="float32", precision="fp32"))
    card = ModelCard.load(str(tmp_path / "t" / "student" / "README.md"))
    assert card.data.base_model == str(pipeline["student"]) and set(card.data.tags) == {"distillation", "distillkit"}
    assert card.data.library_name == "transformers"
    assert f"distilled from `{pipeline['teacher']}`" in card.text and "steps: 4" in card.text
    assert "| alpha |" in card.text  # the held-out before/after table
    from distillkit.models import model_fingerprint

    before = model_fingerprint(tmp_path / "t" / "student")
    (tmp_path / "t" / "student" / "README.md").write_text("changed", encoding="utf-8")
    assert model_fingerprint(tmp_path / "t" / "student") == before  # the card is not the model
