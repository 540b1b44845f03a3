"""The hf engine against an unbatched plain forward: batching, padding, chunking across rows, top-k."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("position_chunk", [3, 256])
def test_hf_engine_scores_equal_unbatched_plain_forward(tiny_teacher_dir, position_chunk):
    """Rows of very different lengths (1, 2 and 40 tokens) share batches; a 3-position chunk crosses rows."""
    import torch

    from distillkit.engines.hf import HFEngine
    from distillkit.models import load_model

    g = torch.Generator().manual_seed(0)
    model = load_model(str(tiny_teacher_dir), dtype="float32")
    vocab = model.get_output_embeddings().weight.shape[0]
    lengths = [40, 1, 2, 17, 5, 33, 2, 9]
    seqs = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]
    engine = HFEngine(str(tiny_teacher_dir), model=model, batch_tokens=64, position_chunk=position_chunk, device="cpu")
    got = engine.score(seqs, top_k=5)
    for seq, s in zip(seqs, got):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([seq])).logits[0, :-1].float(), -1)
        want = lp.gather(-1, torch.tensor(seq[1:])[:, None]).squeeze(-1).numpy()
        assert s.target_logprobs.shape == (len(seq) - 1,)
        np.testing.assert_allclose(s.target_logprobs, want, rtol=1e-5, atol=1e-5)
        vals, idx = lp.topk(5, dim=-1)
        assert s.topk_ids.shape == (len(seq) - 1, 5) and s.topk_ids.dtype == np.int32
        np.testing.assert_array_equal(s.topk_ids, idx.numpy())
        np.testing.assert_allclose(s.topk_logprobs, vals.numpy(), rtol=1e-5, atol=1e-5)
