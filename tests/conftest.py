"""Shared fixtures: a tiny BPE tokenizer and tiny Llama teacher/student built in-process.

Nothing is downloaded. The tokenizer is trained on a fixed corpus, so it is
identical on every run; models are random with fixed seeds.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    "the a of and to in is was for on with as by at from that this it be are or not have "
    "model teacher student data train loss token text domain code python def return class import "
    "king lord god said unto house people land day light water earth heaven "
    "quote life love time man world never always good bad"
).split()


def make_texts(n: int, seed: int = 0, min_words: int = 8, max_words: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) + "." for _ in range(n)]


def build_tokenizer(out: Path, vocab_size: int = 300, extra_corpus: list[str] | None = None) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(make_texts(400, seed=123) + (extra_corpus or []), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def build_model(out: Path, tok_dir: Path, layers: int, hidden: int, seed: int, vocab_size: int | None = None) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size or len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    # Larger-than-default init spreads the output distribution, so the models differ clearly.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_tok_dir(tmp_path_factory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tiny_tok_dir) -> Path:
    return build_model(tmp_path_factory.mktemp("teacher"), tiny_tok_dir, layers=2, hidden=64, seed=1)


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory, tiny_tok_dir) -> Path:
    return build_model(tmp_path_factory.mktemp("student"), tiny_tok_dir, layers=1, hidden=32, seed=2)


@pytest.fixture(scope="session")
def other_tok_model_dir(tmp_path_factory) -> Path:
    """A model whose tokenizer differs from the tiny one (for mismatch tests)."""
    tok = build_tokenizer(tmp_path_factory.mktemp("tok2"), vocab_size=280, extra_corpus=["zebra quartz " * 50] * 20)
    return build_model(tmp_path_factory.mktemp("other"), tok, layers=1, hidden=32, seed=3)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


@pytest.fixture
def text_jsonl(tmp_path) -> Path:
    """60 pretraining-style records over 3 domains."""
    rows = []
    for d, seed in (("alpha", 10), ("beta", 11), ("gamma", 12)):
        rows += [{"text": t, "domain": d} for t in make_texts(20, seed=seed)]
    return write_jsonl(tmp_path / "data" / "corpus.jsonl", rows)


@pytest.fixture
def one_thread():
    """torch at one thread for the test (tiny models: one thread beats two busy ones), restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def three_domain_data(root: Path) -> Path:
    """root/data.jsonl: 30 texts of 15-35 words in each of the domains alpha, beta, gamma (fixed seeds)."""
    rows = []
    for d, seed in (("alpha", 20), ("beta", 21), ("gamma", 22)):
        rows += [{"text": t, "domain": d} for t in make_texts(30, seed=seed, min_words=15, max_words=35)]
    return write_jsonl(root / "data.jsonl", rows)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, tiny_teacher_dir, tiny_student_dir):
    """Scores (with top-8 log-probs) and a 4-stage plan of 3 steps per stage, over 3 domains (train's tests and
    the DDK-factor tests share it)."""
    import torch

    from distillkit.pipelines.plan import PlanConfig
    from distillkit.pipelines.plan import run as run_plan
    from distillkit.pipelines.score import ScoreConfig
    from distillkit.pipelines.score import run as run_score

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train")
    data = three_domain_data(root)
    run_score(ScoreConfig(data=str(data), teacher=str(tiny_teacher_dir), student=str(tiny_student_dir), out=str(root / "score"),
                          dtype="float32", max_length=48, top_k=8))
    run_plan(PlanConfig(scores=str(root / "score"), out=str(root / "plan"), stage_unit="steps", stage_length=3))
    torch.set_num_threads(n)
    return {"root": root, "plan": root / "plan", "scores": root / "score", "teacher": tiny_teacher_dir, "student": tiny_student_dir}


def kill_when(args: list, ready, *, env: dict, cwd=None, timeout: float = 120, stdout=None):
    """Run ``python -m distillkit.cli.main *args``; SIGKILL it as soon as ``ready()`` holds (polled every 5 ms) and
    assert that the kill, not the end of the run, stopped it. Returns the finished process."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "distillkit.cli.main", *map(str, args)], env=env, cwd=cwd,
                            stdout=stdout or subprocess.DEVNULL, stderr=subprocess.STDOUT if stdout else subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return proc


# The reliability tests' shared inputs (test_locks, test_damaged_inputs, test_disk_full, test_messages).


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_teacher_dir, tiny_student_dir):
    """Score data and one uninterrupted single-writer run over it: what every other run must equal."""
    import torch

    from distillkit.pipelines.score import run as run_score
    from tests.reliability_support import _score_cfg

    root = tmp_path_factory.mktemp("ref")
    rows = []
    for d, seed in (("alpha", 10), ("beta", 11), ("gamma", 12)):
        rows += [{"text": t, "domain": d} for t in make_texts(20, seed=seed)]
    data = write_jsonl(root / "corpus.jsonl", rows)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = _score_cfg(data, tiny_teacher_dir, tiny_student_dir, root / "score")
    run_score(cfg)
    torch.set_num_threads(n)
    return {"data": data, "cfg": cfg, "out": root / "score"}


@pytest.fixture(scope="module")
def plan(tmp_path_factory, reference):
    from distillkit.pipelines.plan import PlanConfig
    from distillkit.pipelines.plan import run as run_plan

    out = tmp_path_factory.mktemp("plan") / "plan"
    run_plan(PlanConfig(scores=str(reference["out"]), out=str(out), stage_unit="steps", stage_length=1))
    return out
