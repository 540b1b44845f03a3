"""`tiny-random`: a tiny random Llama with a byte-level BPE tokenizer, for CI smoke runs of the whole pipeline.

``resolve_model("tiny-random")`` builds it on first use and caches it under
``cache_dir()/tiny/<name>/`` (built in a temp directory and renamed, so a killed build leaves nothing
half-written). Everything is deterministic: the tokenizer is trained on the bundled demo corpus
(``distillkit.assets``) in a fixed order, and the weights come from a fixed torch seed. The model knows
nothing; it only exercises every stage fast (2 layers, hidden 64, 4 heads, 2 KV heads, 512-token vocab).
Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from distillkit.cache import build_cached_dir, cache_dir

TINY_FILE = "distillkit-tiny.json"  # written last into a built model: its presence marks the build complete
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


@dataclass(frozen=True, slots=True)
class TinySpec:
    """Shape of a tiny model; `version` changes whenever the build recipe changes (a new cache entry)."""

    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 512
    max_positions: int = 2048
    seed: int = 0
    head_std: float = 0.2  # LM-head init wider than the default, so models' distributions differ clearly
    version: int = 1


TINY_MODELS: dict[str, TinySpec] = {"tiny-random": TinySpec()}


def tiny_model(name: str = "tiny-random") -> Path:
    """The cached model directory of tiny model `name`, built (once, atomically) if missing."""
    spec = TINY_MODELS[name]
    dest = cache_dir() / "tiny" / f"{name}-v{spec.version}"
    if (dest / TINY_FILE).is_file():
        return dest

    def build(tmp: Path) -> None:
        build_tiny(tmp, spec)
        (tmp / TINY_FILE).write_text(json.dumps({"name": name, **asdict(spec)}, indent=2) + "\n", encoding="utf-8")

    return build_cached_dir(dest, TINY_FILE, build)


def _corpus() -> list[str]:
    import pyarrow.parquet as pq

    from distillkit.assets import resolve_data

    t = pq.read_table(resolve_data("demo"), columns=["id", "text"]).sort_by("id")
    return t.column("text").to_pylist()


def build_tiny(out: Path, spec: TinySpec = TinySpec()) -> Path:
    """Write tokenizer + random Llama weights for `spec` into `out` (a plain Hugging Face model directory)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=spec.max_positions)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=spec.hidden,
        intermediate_size=spec.hidden * 2,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(cfg)
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, spec.head_std)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


__all__ = ["TINY_MODELS", "TinySpec", "tiny_model", "build_tiny"]
