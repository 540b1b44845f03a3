"""`distillkit train`: distil the teacher into the student, following a plan (POCL curriculum + DDK mixture).

Reads the plan artifact, the score artifact it was built from (refused if it is not the recorded
one) and the data the scores were computed on (re-loaded with the score stage's data spec and
checked against its fingerprint), tokenizes exactly as the score stage did, and trains
(`distillkit.training.loop`). Writes, into ``<out>.partial`` and swapped into ``<out>`` at the end:

- ``student/``: the trained student (``save_pretrained`` + tokenizer: plain transformers / vLLM load it);
- ``metrics.arrow``: one row per optimizer step (step, loss, kd_loss, ce_loss, temperature, stage, lr,
  tokens_per_s, kd_weight, tokens, grad_norm, taid_t);
- ``mixture.arrow``: the domain weights at step 0 and after every DDK update
  (step, domain, weight, student_ppl, teacher_ppl);
- ``heldout.arrow``: per domain, held-out student perplexity and KL to the teacher before and after;
- ``batches.arrow``: which samples each step drew (step, sample_id, domain, stage);
- ``checkpoints/step-N/``: the last checkpoint (model, optimizer, trainer state incl. RNG).

Checkpoints are written to ``<out>.partial/checkpoints`` every ``save_every`` steps; ``--resume``
continues from the newest. See docs/train.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distillkit.config import opt, to_dict

KIND = "train"
Divergence = Literal["fkl", "rkl", "jsd", "skl", "srkl", "tvd", "akl", "taid"]


@dataclass(frozen=True)
class TrainConfig:
    plan: str = opt(None, "Plan artifact directory (from `distillkit plan`); it names its scores and, through them, the data.")
    teacher: str = opt(None, "Teacher model: HF directory, .gguf file, or alias (smollm2-135m).")
    student: str = opt(None, "Student model to train (HF directory, .gguf, alias), e.g. from `distillkit prune`.")
    out: str = opt(None, "Output artifact directory.")
    loss: Divergence = opt("fkl", "Divergence D: fkl, rkl, jsd (jsd_beta), skl / srkl (skew_alpha), tvd, akl (akl_mu), taid.")
    loss_form: Literal["pocl", "additive"] = opt("pocl", "pocl: (1-λ)·CE + λ·D with λ, T from the plan's stage; additive: CE + λ·D (DDK Eq. 3 with λ = γ).")
    kd_weight: float | None = opt(None, "Fixed λ (or γ for additive) instead of the plan's per-stage value; DDK's Eq. 3: 0.2 with loss_form = additive.")
    temperature: float | None = opt(None, "Fixed temperature T instead of the plan's per-stage value.")
    jsd_beta: float = opt(0.5, "β of jsd: β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q.")
    skew_alpha: float = opt(0.1, "α of the skew KLs skl / srkl (DistiLLM).")
    akl_mu: float = opt(0.5, "Head mass μ of akl (adaptive KL).")
    taid_t_start: float = opt(0.4, "TAID: initial interpolation t.")
    taid_t_end: float = opt(1.0, "TAID: final interpolation t.")
    teacher_mode: Literal["online", "offline"] = opt("online", "online: teacher forward each step; offline: the score stage's stored top-k log-probs (score --top-k).")
    sparse_tail: Literal["bucket", "renorm"] = opt("bucket", "Offline top-k: keep the teacher's tail mass as one bucket, or renormalise over the top-k.")
    loss_impl: Literal["chunked", "plain"] = opt("chunked", "chunked: LM head fused with the loss, chunk_size positions of logits at a time; plain: full logits (for comparison).")
    chunk_size: int = opt(1024, "Positions per loss chunk (chunked path).")
    steps: int | None = opt(None, "Optimizer steps (default: the plan's stages, each stage_length long).")
    batch_size: int = opt(8, "Global batch: sequences per optimizer step over all processes and accumulation steps.")
    grad_accum: int = opt(1, "Micro-batches per process per step (micro-batch = batch_size / (processes × grad_accum)).")
    seq_len: int = opt(256, "Train on the first seq_len tokens of each sample as the score stage tokenized it (so at most its max_length).")
    lr: float = opt(1e-4, "Peak learning rate (AdamW).")
    min_lr_ratio: float = opt(0.1, "Cosine schedule ends at min_lr_ratio × lr.")
    warmup_fraction: float = opt(0.05, "Linear warmup over this fraction of the run (of each stage with restart_optimizer).")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = opt(1.0, "Clip the gradient norm to this (0: no clipping).")
    restart_optimizer: bool | None = opt(None, "Restart optimizer + LR schedule at each stage (default: the plan's setting).")
    mixture: Literal["ddk", "static", "uniform"] = opt("ddk", "ddk: start from the plan's weights, re-weight every ddk_interval steps (Eq. 2); static: the plan's weights; uniform.")
    ddk_interval: int | None = opt(None, "DDK re-measurement interval K in steps (default: the plan's).")
    ddk_alpha: float | None = opt(None, "DDK Eq. 2 smoothing α (default: the plan's).")
    ddk_smoothing: bool | None = opt(None, "DDK factor smoothing (default: the plan's); false re-applies Eq. 1.")
    heldout_docs: int | None = opt(None, "Use at most this many held-out documents per domain for DDK and the before/after report.")
    eval_heldout: bool = opt(True, "Measure held-out perplexity and KL to the teacher per domain before and after training.")
    eval_batch_size: int = opt(8, "Sequences per batch in held-out measurements.")
    seed: int = opt(0, "Seed for sampling, initialisation of anything random, and dropout.")
    save_every: int = opt(100, "Checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = opt(1, "Keep the newest N checkpoints.")
    log_every: int = opt(10, "Print a log line every N steps when stderr is not a terminal.")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto: cuda:LOCAL_RANK when a GPU is present, else cpu.")
    teacher_dtype: Literal["auto", "float32", "bfloat16"] = opt("auto", "Teacher weights dtype (auto: bf16 where the hardware runs it fast).")
    precision: Literal["auto", "fp32", "bf16"] = opt("auto", "Student forward: bf16 autocast (auto: on CUDA GPUs with bf16) or fp32; weights stay fp32.")
    strategy: Literal["ddp", "fsdp2"] = opt("ddp", "Under torchrun: ddp (replicated student) or fsdp2 (sharded, for students that do not fit one GPU).")
    tensorboard: bool = opt(False, "Also write TensorBoard scalars to <out>.partial/tensorboard (needs the tensorboard package).")
    record_batches: bool = opt(True, "Record which samples each step drew (batches.arrow).")

    def validate(self) -> list[str]:
        problems = [f"{n} is required (--{n})" for n in ("plan", "teacher", "student", "out") if not getattr(self, n)]
        positive = ("batch_size", "grad_accum", "seq_len", "chunk_size", "eval_batch_size", "keep_checkpoints", "log_every")
        problems += [f"{n} must be >= 1, got {getattr(self, n)}" for n in positive if getattr(self, n) < 1]
        if self.seq_len < 2:
            problems.append("seq_len must be >= 2")
        if self.steps is not None and self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        for n in ("min_lr_ratio", "warmup_fraction", "jsd_beta", "skew_alpha", "akl_mu"):
            if not 0.0 <= getattr(self, n) <= 1.0:
                problems.append(f"{n} must be in [0, 1], got {getattr(self, n)}")
        if not 0.0 <= self.taid_t_start <= self.taid_t_end <= 1.0:
            problems.append(f"need 0 <= taid_t_start <= taid_t_end <= 1, got {self.taid_t_start}, {self.taid_t_end}")
        if self.kd_weight is not None and (self.kd_weight < 0 or (self.loss_form == "pocl" and self.kd_weight > 1)):
            problems.append(f"kd_weight must be in [0, 1] for loss_form = 'pocl' (>= 0 for 'additive'), got {self.kd_weight}")
        if self.temperature is not None and not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if self.ddk_interval is not None and self.ddk_interval < 1:
            problems.append(f"ddk_interval must be >= 1, got {self.ddk_interval}")
        if self.ddk_alpha is not None and not 0.0 <= self.ddk_alpha <= 1.0:
            problems.append(f"ddk_alpha must be in [0, 1], got {self.ddk_alpha}")
        if self.save_every < 0 or self.max_grad_norm < 0 or self.weight_decay < 0:
            problems.append("save_every, max_grad_norm and weight_decay must be >= 0")
        if self.heldout_docs is not None and self.heldout_docs < 1:
            problems.append(f"heldout_docs must be >= 1 or unset, got {self.heldout_docs}")
        return problems


# Keys that change neither the result nor its identity: where it goes and how it is displayed/saved.
_NOT_IDENTITY = ("out", "save_every", "keep_checkpoints", "log_every", "tensorboard")


def run(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> Path:
    import torch

    from distillkit.training import distributed as D
    from distillkit.training.setup import build

    t0 = time.time()
    dist = D.init_from_env(cfg.device)
    try:
        torch.manual_seed(cfg.seed)
        inputs = prepare(cfg, dist)  # every input check happens here, before --out is touched
        ident = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IDENTITY} | inputs.identity
        writer, state = None, None
        if dist.is_main:  # rank 0 owns the output; the others learn what it found
            from distillkit.artifacts import ArtifactWriter
            from distillkit.errors import DistillkitError

            try:
                writer = ArtifactWriter(cfg.out, KIND, ident, inputs=[inputs.plan, inputs.scores], resume=resume, overwrite=overwrite)
                state = ("done", False) if writer.done else ("run", writer.resumed)
            except DistillkitError as e:
                state = ("error", e)
        state = D.broadcast_object(state, dist)
        if state[0] == "error":
            raise state[1]
        if state[0] == "done":
            if dist.is_main:
                from distillkit.progress import console

                console.print(f"[green]train[/] {cfg.out} is complete for this config: nothing to do")
            return Path(cfg.out)
        partial = Path(cfg.out).with_name(Path(cfg.out).name + ".partial")
        run_state, resume_from = build(cfg, inputs, dist, partial, resumed=bool(state[1]))
        from distillkit.training.loop import train

        train(run_state, resume_from)
        finish(cfg, inputs, run_state, writer, dist, wall_s=time.time() - t0)
        D.barrier(dist)
        return Path(cfg.out)
    finally:
        D.shutdown(dist)


def prepare(cfg: TrainConfig, dist):
    """Read and check every input (plan, its scores, the data, both models) and tokenize; touches no output."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from distillkit.artifacts import check_input, read_artifact
    from distillkit.assets import resolve_data
    from distillkit.data import DataSpec, load_data
    from distillkit.errors import ArtifactError, DataError
    from distillkit.models import (
        check_same_tokenizer,
        check_vocab_sizes,
        load_model,
        load_tokenizer,
        model_fingerprint,
        resolve_model,
    )
    from distillkit.training.batches import TopKStore, tokenize_rows
    from distillkit.training.setup import Inputs

    plan = read_artifact(cfg.plan, "plan")
    info = plan.manifest.get("plan")
    if not isinstance(info, dict) or "stages" not in info or "scores" not in info:
        raise ArtifactError(f"{plan.path}/manifest.json lacks the 'plan' schedule; rebuild it with `distillkit plan --overwrite`")
    scores = read_artifact(info["scores"], "score")
    check_input(scores, plan.manifest.get("inputs", []), "scores")
    sc = scores.config
    data_path = resolve_data(sc["data"])
    ds = load_data(DataSpec(path=data_path, text_field=sc.get("text_field", "text"), prompt_field=sc.get("prompt_field", "prompt"),
                            response_field=sc.get("response_field", "response"), domain_field=sc.get("domain_field"),
                            id_field=sc.get("id_field"), val_size=sc.get("val_size", 500), val_fraction=sc.get("val_fraction", 0.1),
                            max_per_domain=sc.get("max_per_domain"), seed=sc.get("seed", 0)))
    if sc.get("data_fingerprint") and ds.fingerprint != sc["data_fingerprint"]:
        raise DataError(f"the data at {data_path} changed since it was scored into {scores.path} (fingerprint "
                        f"{ds.fingerprint[:12]} vs {sc['data_fingerprint'][:12]}); rescore it and rebuild the plan")

    # Models: a tokenizer or vocabulary mismatch is refused here, before any training.
    teacher_dir, student_dir = resolve_model(cfg.teacher), resolve_model(cfg.student)
    tok = load_tokenizer(str(teacher_dir))
    check_same_tokenizer(tok, load_tokenizer(str(student_dir)), cfg.teacher, cfg.student)
    student = load_model(student_dir, dtype="float32", device=dist.device, trainable=True)
    teacher = load_model(teacher_dir, dtype=cfg.teacher_dtype, device=dist.device) if cfg.teacher_mode == "online" else None
    vocab = check_vocab_sizes(teacher if teacher is not None else student, student, tok, cfg.teacher, cfg.student)
    for role, m in (("student", student), ("teacher", teacher)):
        _check_head(m, role)

    cur = plan.table("curriculum.arrow", {"sample_id": pa.string(), "domain": pa.string(), "rank": pa.int64(), "stage": pa.int32()})
    mix = plan.table("mixture.arrow", {"domain": pa.string(), "weight": pa.float64(), "teacher_ppl": pa.float64(),
                                       "student_ppl": pa.float64()})
    domains = mix.column("domain").to_pylist()
    cur_domains = cur.column("domain").to_pylist()
    unknown = sorted(set(cur_domains) - set(domains))
    if unknown:
        raise ArtifactError(f"{plan.path}: curriculum domains {unknown} have no mixture weight; rebuild the plan")
    code_of = {d: i for i, d in enumerate(domains)}
    codes = np.array([code_of[d] for d in cur_domains], dtype=np.int64)

    index = {sid: i for i, sid in enumerate(ds.table.column("sample_id").to_pylist())}
    cur_ids = cur.column("sample_id").to_pylist()
    missing = [s for s in cur_ids if s not in index]
    if missing:
        raise DataError(f"{len(missing)} planned samples are not in the data (e.g. {missing[0]!r}); the data changed: rescore and replan")
    train_rows = ds.table.take(pa.array([index[s] for s in cur_ids], pa.int64()))
    held_parts, heldout_rows, source, n = [], [], [], len(cur_ids)
    is_val = pc.equal(ds.table.column("split"), "validation")
    for i, d in enumerate(domains):
        val = ds.table.filter(pc.and_(is_val, pc.equal(ds.table.column("domain"), d)))
        if cfg.heldout_docs is not None:
            val = val.slice(0, cfg.heldout_docs)
        if val.num_rows:
            heldout_rows.append(list(range(n, n + val.num_rows)))
            held_parts.append(val)
            n += val.num_rows
            source.append("validation")
        else:  # as the score stage does: a domain without held-out documents is measured on its training rows
            rows = np.flatnonzero(codes == i)[: cfg.heldout_docs or None]
            heldout_rows.append(rows.tolist())
            source.append("train")
    rows = pa.concat_tables([train_rows, *held_parts]) if held_parts else train_rows
    seqs = tokenize_rows(rows, ds.format, tok, int(sc.get("max_length", cfg.seq_len)), cfg.seq_len)
    topk = TopKStore(scores.path, seqs, int(sc.get("max_length", cfg.seq_len))) if cfg.teacher_mode == "offline" else None
    if topk is not None and topk.max_id >= vocab:
        raise DataError(f"the stored top-k holds token id {topk.max_id}, outside the {vocab}-token vocabulary: the scores "
                        "were made with another tokenizer")
    identity = {"plan_manifest_sha256": plan.sha256, "teacher_fingerprint": model_fingerprint(teacher_dir),
                "student_fingerprint": model_fingerprint(student_dir)}
    if dist.is_main and sc.get("teacher_fingerprint") not in (None, identity["teacher_fingerprint"]):
        from distillkit.progress import console

        console.print(f"[yellow]note[/]: --teacher {cfg.teacher} is not the teacher the scores were computed with; "
                      "DDK uses the scored teacher perplexities")
    return Inputs(plan=plan, scores=scores, plan_info=info, tokenizer=tok, student=student, teacher=teacher, vocab_size=vocab,
                  seqs=seqs, num_train=len(cur_ids), domain_codes=codes, stages=cur.column("stage").to_numpy().astype(np.int64),
                  domains=domains, plan_weights=mix.column("weight").to_numpy(), teacher_ppl=mix.column("teacher_ppl").to_numpy(),
                  student_ppl=mix.column("student_ppl").to_numpy(), heldout_rows=heldout_rows, heldout_source=source, topk=topk,
                  pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0, identity=identity)


def _check_head(model, role: str) -> None:
    import torch

    if model is None:
        return
    from distillkit.errors import ModelError

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(cfg, "final_logit_softcapping", None):
        raise ModelError(f"the {role} caps its logits (final_logit_softcapping), which train's losses do not model yet")
    if not isinstance(model.get_output_embeddings(), torch.nn.Linear) or not hasattr(model, "get_decoder"):
        raise ModelError(f"the {role} ({type(model).__name__}) has no plain linear LM head over a decoder; train supports "
                         "causal LMs like Llama, Qwen, Mistral, SmolLM, Gemma 3")


def finish(cfg: TrainConfig, inputs, run, writer, dist, wall_s: float) -> None:
    """The after-report, the student in HF format, and the tables; rank 0 writes, then swaps the artifact in."""
    import numpy as np
    import pyarrow as pa

    from distillkit.training import distributed as D
    from distillkit.training.monitor import metrics_table
    from distillkit.training.setup import heldout_report

    after = heldout_report(run, inputs) if cfg.eval_heldout else None
    state = D.model_state(run.model, dist, cfg.strategy) if dist.distributed and cfg.strategy == "fsdp2" else None
    if not dist.is_main:
        return
    from distillkit.progress import console

    student = D.unwrap(run.model).student
    kw = {"state_dict": {k.removeprefix("student."): v for k, v in state.items()}} if state is not None else {}
    student.save_pretrained(writer.path("student"), **kw)
    inputs.tokenizer.save_pretrained(writer.path("student"))
    writer.write("metrics.arrow", metrics_table(run.metrics))
    writer.write("mixture.arrow", run.mixer.table())
    if run.drawn:
        idx = np.concatenate(run.drawn)
        steps = np.repeat(np.arange(1, len(run.drawn) + 1), [len(x) for x in run.drawn])
        seqs = inputs.seqs
        writer.write("batches.arrow", pa.table({
            "step": pa.array(steps, pa.int64()), "sample_id": pa.array([seqs.sample_id[i] for i in idx], pa.string()),
            "domain": pa.array([seqs.domain[i] for i in idx], pa.string()),
            "stage": pa.array(inputs.stages[idx].astype(np.int32), pa.int32())}))
    before = run.extra.get("before")
    if before is not None and after is not None:
        cols = {"domain": pa.array(inputs.domains, pa.string()), "measured_on": pa.array(inputs.heldout_source, pa.string()),
                "tokens": pa.array(after["tokens"], pa.int64()), "teacher_ppl": pa.array(inputs.teacher_ppl, pa.float64()),
                "student_ppl_before": pa.array(before["student_ppl"], pa.float64()),
                "student_ppl_after": pa.array(after["student_ppl"], pa.float64())}
        if after["kl"] is not None and before["kl"] is not None:
            cols["kl_before"] = pa.array(before["kl"], pa.float64())
            cols["kl_after"] = pa.array(after["kl"], pa.float64())
        writer.write("heldout.arrow", pa.table(cols))
    m = run.metrics
    steps_done = len(m) - (run.resumed_from or 0)
    figures = {
        "steps": run.step, "wall_s": round(wall_s, 2), "world_size": dist.world_size, "strategy": cfg.strategy if dist.distributed else None,
        "device": str(dist.device), "resumed_from_step": run.resumed_from,
        "s_per_step": round(float(np.median([r["tokens"] / r["tokens_per_s"] for r in m[-steps_done:]])), 3) if steps_done else None,
        "tokens_per_s": round(float(np.median([r["tokens_per_s"] for r in m[-steps_done:]])), 1) if steps_done else None,
        "final_loss": m[-1]["loss"] if m else None, "first_loss": m[0]["loss"] if m else None,
    }
    if before is not None and after is not None:
        figures["heldout"] = {k: {"before": before[k], "after": after[k]} for k in ("overall_student_ppl", "overall_kl") if k in after}
    extra = {"train": {"stages": [_stage_dict(s) for s in run.stages],
                       "total_steps": run.stages[-1].end, "restart_optimizer": run.restart_optimizer,
                       "mixture": {"mode": run.mixer.mode, "interval": run.mixer.interval, "alpha": run.mixer.alpha,
                                   "smoothing": run.mixer.smoothing},
                       "loss": {"kind": cfg.loss, "form": cfg.loss_form, "impl": cfg.loss_impl, "params": run.spec.params,
                                "teacher_mode": cfg.teacher_mode, "vocab_size": inputs.vocab_size},
                       "plan": str(inputs.plan.path), "scores": str(inputs.scores.path)}}
    writer.finish(figures, extra=extra)
    console.print(f"[green]wrote[/] {cfg.out}")


def _stage_dict(s) -> dict:
    return {"stage": s.stage, "start": s.start, "end": s.end, "temperature": s.temperature, "kd_weight": s.kd_weight,
            "num_samples": s.num_samples}


__all__ = ["TrainConfig", "run", "KIND"]
