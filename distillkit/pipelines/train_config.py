"""`distillkit train`'s options (`TrainConfig`, with the checks that span several of them) and the part of
them that is the artifact's identity (`identity`): what a finished train artifact must match to be reused."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from distillkit.choices import TEACHER_MODE, TeacherMode
from distillkit.config import opt, to_dict
from distillkit.losses.registry import Divergence, choices_help, option_problems


def _on_policy_run(c: "TrainConfig") -> bool:
    """Generation settings change nothing while on_policy = 0: they count only for on-policy runs, so off-policy
    artifacts made before the options existed are still recognised as complete."""
    return c.on_policy != 0


def _gen_engine_counts(c: "TrainConfig") -> bool:
    """The answer source counts on on-policy runs away from its default (transformers generate), so on-policy
    artifacts made before vLLM generation existed are still recognised as complete."""
    return c.on_policy != 0 and c.gen_engine != "hf"


def _gen_refresh_counts(c: "TrainConfig") -> bool:
    return c.on_policy != 0 and c.gen_refresh_every != 1


@dataclass(frozen=True)
class TrainConfig:
    plan: str = opt(None, "Plan artifact directory (from `distillkit plan`); it names its scores and, through them, the data.", panel="inputs")
    teacher: str = opt(None, "Teacher model: HF directory, .gguf file, or alias (smollm2-135m).", panel="models")
    student: str = opt(None, "Student model to train (HF directory, .gguf, alias), e.g. from `distillkit prune`.", panel="models")
    out: str = opt(None, "Output artifact directory.", panel="output", identity=False)
    loss: Divergence = opt("fkl", f"Divergence D: {choices_help()}.", panel="loss")
    loss_form: Literal["pocl", "additive"] = opt("pocl", "pocl: (1-λ)·CE + λ·D with λ, T from the plan's stage; additive: CE + λ·D (DDK Eq. 3 with λ = γ).", panel="loss")
    kd_weight: float | None = opt(None, "Fixed λ (or γ for additive) instead of the plan's per-stage value; DDK's Eq. 3: 0.2 with loss_form = additive.", panel="loss")
    temperature: float | None = opt(None, "Fixed temperature T instead of the plan's per-stage value.", panel="loss")
    jsd_beta: float = opt(0.5, "β of jsd: β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q; 0 = forward KL, 1 = reverse KL (GKD's convention).", panel="loss")
    skew_alpha: float = opt(0.1, "α of the skew KLs skl / srkl (DistiLLM).", panel="loss")
    akl_mu: float = opt(0.5, "Head mass μ of akl (adaptive KL).", panel="loss")
    taid_t_start: float = opt(0.4, "TAID: initial interpolation t.", panel="loss")
    taid_t_end: float = opt(1.0, "TAID: final interpolation t.", panel="loss")
    teacher_mode: TeacherMode = opt(TEACHER_MODE, "online: teacher forward each step; offline: the score stage's stored top-k log-probs (score --top-k); none: no teacher, plain cross-entropy on the data (an SFT baseline, or teacher correction: fine-tune the teacher itself on the distillation data, then pass its student/ directory as --teacher).", panel="loss")
    sparse_tail: Literal["bucket", "renorm"] = opt("bucket", "Offline top-k: keep the teacher's tail mass as one bucket, or renormalise over the top-k.", panel="loss")
    loss_impl: Literal["chunked", "plain"] = opt("chunked", "chunked: LM head fused with the loss, chunk_size positions of logits at a time; plain: full logits (for comparison).", panel="loss")
    chunk_size: int = opt(1024, "Positions per loss chunk (chunked path).", panel="loss")
    steps: int | None = opt(None, "Optimizer steps (default: the plan's stages, each stage_length long).", panel="optimizer")
    batch_size: int = opt(8, "Global batch: sequences per optimizer step over all processes and accumulation steps.", panel="optimizer")
    grad_accum: int = opt(1, "Micro-batches per process per step (micro-batch = batch_size / (processes × grad_accum)).", panel="optimizer")
    pack: bool = opt(False, "Pack each micro-batch's samples into as few rows as fit its longest sample (positions restart per sample, attention stays inside it): the same losses and gradients on fewer padded positions; pays off on data of uneven lengths (prompt/response). Also the held-out passes and the on-policy batches of the student's answers. Needs transformers >= 4.54.", panel="optimizer", identity="non-default")
    seq_len: int = opt(256, "Train on the first seq_len tokens of each sample as the score stage tokenized it (so at most its max_length).", panel="optimizer")
    lr: float | None = opt(None, "Peak learning rate (AdamW). Default by the student's scored gap to the teacher: 1e-4 for a student far from it (perplexity ratio >= 2, e.g. freshly pruned), 1e-5 for one already close (a trained student); printed before training.", panel="optimizer")
    min_lr_ratio: float = opt(0.1, "Cosine schedule ends at min_lr_ratio × lr.", panel="optimizer")
    warmup_fraction: float = opt(0.05, "Linear warmup over this fraction of the run (of each stage with restart_optimizer).", panel="optimizer")
    weight_decay: float = opt(0.0, "AdamW weight decay.", panel="optimizer")
    max_grad_norm: float = opt(1.0, "Clip the gradient norm to this (0: no clipping).", panel="optimizer")
    restart_optimizer: bool | None = opt(None, "Restart optimizer + LR schedule at each stage (default: the plan's setting).", panel="optimizer")
    mixture: Literal["ddk", "static", "uniform"] = opt("ddk", "ddk: start from the plan's weights, re-weight every ddk_interval steps (Eq. 2); static: the plan's weights; uniform.", panel="mixture")
    ddk_interval: int | None = opt(None, "DDK re-measurement interval K in steps (default: the plan's).", panel="mixture")
    ddk_alpha: float | None = opt(None, "DDK Eq. 2 smoothing α (default: the plan's).", panel="mixture")
    ddk_smoothing: bool | None = opt(None, "DDK factor smoothing (default: the plan's); false re-applies Eq. 1.", panel="mixture")
    ddk_factor: Literal["ratio", "log-ratio"] | None = opt(None, "DDK factor of the re-weighting: ratio (the paper's Eq. 2, ψ = r·exp(ppl_S/ppl_T)) or log-ratio (ψ = r·(ppl_S/ppl_T)^(1/τ)) (default: the plan's).", panel="mixture", identity="non-default")
    ddk_tau: float | None = opt(None, "Temperature τ > 0 of the log-ratio factor (default: the plan's; unused by ratio).", panel="mixture", identity="non-default")
    heldout_docs: int | None = opt(None, "Use at most this many held-out documents per domain for DDK and the before/after report.", panel="held-out")
    on_policy: float = opt(0.0, "On-policy share λ (GKD's lmbda): this share of steps trains on the student's own answers, scored by the online teacher; 0 = off-policy only, 1 = every step.", panel="on-policy", identity=_on_policy_run)
    gen_max_new_tokens: int = opt(64, "On-policy: new tokens the student generates per prompt (prompt + these must fit seq_len).", panel="on-policy", identity=_on_policy_run)
    gen_temperature: float = opt(1.0, "On-policy: sampling temperature of the student's answers (0 = greedy).", panel="on-policy", identity=_on_policy_run)
    gen_top_p: float = opt(1.0, "On-policy: nucleus top-p of the student's answers (1 = off).", panel="on-policy", identity=_on_policy_run)
    gen_engine: Literal["hf", "vllm"] = opt("hf", "On-policy: who generates the student's answers. hf: transformers generate on the training model (always current weights); vllm: a vLLM engine holding a copy of the student, its weights replaced in place every gen_refresh_every steps (needs vllm; single process).", panel="on-policy", identity=_gen_engine_counts)
    gen_refresh_every: int = opt(1, "On-policy with gen_engine = vllm: push the student's weights into vLLM when they are this many optimizer steps old (1: every step, exactly on-policy; resume is exact only at 1).", panel="on-policy", identity=_gen_refresh_counts)
    prefix_tokens: int | None = opt(None, "On-policy on plain text: the student continues the first N tokens of each document (prompt/response data uses the prompt).", panel="on-policy", identity=_on_policy_run)
    eval_heldout: bool = opt(True, "Measure held-out perplexity and KL to the teacher per domain before and after training.", panel="held-out")
    eval_batch_size: int = opt(8, "Sequences per batch in held-out measurements.", panel="held-out")
    early_check: int = opt(10, "After this many steps, re-measure the held-out 'before' rows and warn if the KL to the teacher (else the student NLL) rose: the student may already be trained (0: off; needs eval_heldout; a shorter run compares before and after).", panel="held-out", identity=False)
    early_check_stop: bool = opt(False, "Stop the run (exit 1, checkpoint kept) when the early held-out check finds a rise.", panel="held-out", identity=False)
    seed: int = opt(0, "Seed for sampling, initialisation of anything random, and dropout.", panel="optimizer")
    save_every: int = opt(100, "Checkpoint every N steps (0: only at the end).", panel="output", identity=False)
    keep_checkpoints: int = opt(1, "Keep the newest N checkpoints.", panel="output", identity=False)
    log_every: int = opt(10, "Print a log line every N steps when stderr is not a terminal.", panel="output", identity=False)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto: cuda:LOCAL_RANK when a GPU is present, else cpu.", panel="runtime")
    teacher_dtype: Literal["auto", "float32", "bfloat16"] = opt("auto", "Teacher weights dtype (auto: bf16 where the hardware runs it fast).", panel="runtime")
    precision: Literal["auto", "fp32", "bf16"] = opt("auto", "Student forward: bf16 autocast or fp32 (auto: bf16 where the GPU or CPU runs it natively, avx512_bf16/amx_bf16; fp32 elsewhere); weights stay fp32.", panel="runtime")
    strategy: Literal["ddp", "fsdp2"] = opt("ddp", "Under torchrun: ddp (replicated student) or fsdp2 (sharded, for students that do not fit one GPU).", panel="runtime")
    tensorboard: bool = opt(False, "Also write TensorBoard scalars to <out>.partial/tensorboard (needs the tensorboard package).", panel="output", identity=False)
    record_batches: bool = opt(True, "Record which samples each step drew (batches.arrow).", panel="output")

    def validate(self) -> list[str]:
        needed = ("plan", "student", "out") if self.teacher_mode == "none" else ("plan", "teacher", "student", "out")
        problems = [f"{n} is required (--{n})" for n in needed if not getattr(self, n)]
        if self.teacher_mode == "none" and self.on_policy > 0:
            problems.append("on_policy > 0 needs a teacher to score the student's answers: use --teacher-mode online")
        positive = ("batch_size", "grad_accum", "seq_len", "chunk_size", "eval_batch_size", "keep_checkpoints", "log_every")
        problems += [f"{n} must be >= 1, got {getattr(self, n)}" for n in positive if getattr(self, n) < 1]
        if self.seq_len < 2:
            problems.append("seq_len must be >= 2")
        if self.steps is not None and self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        for n in ("min_lr_ratio", "warmup_fraction"):
            if not 0.0 <= getattr(self, n) <= 1.0:
                problems.append(f"{n} must be in [0, 1], got {getattr(self, n)}")
        problems += option_problems(self)  # the options of the divergences' parameters (distillkit.losses.registry)
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
        if self.ddk_tau is not None and not self.ddk_tau > 0:
            problems.append(f"ddk_tau must be > 0, got {self.ddk_tau} (1 = weights proportional to the perplexity ratio)")
        elif self.ddk_factor == "ratio" and self.ddk_tau not in (None, 1.0):
            problems.append(f"ddk_tau = {self.ddk_tau} applies only to ddk_factor = 'log-ratio' (the paper's ratio factor has "
                            "no temperature): use --ddk-factor log-ratio or drop --ddk-tau")
        if self.save_every < 0 or self.max_grad_norm < 0 or self.weight_decay < 0:
            problems.append("save_every, max_grad_norm and weight_decay must be >= 0")
        if self.heldout_docs is not None and self.heldout_docs < 1:
            problems.append(f"heldout_docs must be >= 1 or unset, got {self.heldout_docs}")
        if self.early_check < 0:
            problems.append(f"early_check must be >= 0 (steps before the held-out check; 0 = off), got {self.early_check}")
        elif self.early_check_stop and not (self.early_check and self.eval_heldout):
            problems.append("early_check_stop needs the early held-out check: early_check >= 1 and eval_heldout = true "
                            f"(got early_check = {self.early_check}, eval_heldout = {str(self.eval_heldout).lower()})")
        problems += self._on_policy_problems()
        return problems

    def _on_policy_problems(self) -> list[str]:
        if not 0.0 <= self.on_policy <= 1.0:
            return [f"on_policy must be in [0, 1] (the share of on-policy steps), got {self.on_policy}"]
        problems = []
        if self.gen_max_new_tokens < 1 or self.gen_temperature < 0 or not 0.0 < self.gen_top_p <= 1.0:
            problems.append("need gen_max_new_tokens >= 1, gen_temperature >= 0 and 0 < gen_top_p <= 1, got "
                            f"{self.gen_max_new_tokens}, {self.gen_temperature}, {self.gen_top_p}")
        if self.prefix_tokens is not None and self.prefix_tokens < 1:
            problems.append(f"prefix_tokens must be >= 1 or unset, got {self.prefix_tokens}")
        if self.gen_refresh_every < 1:
            problems.append(f"gen_refresh_every must be >= 1 (optimizer steps between weight pushes to vLLM), got {self.gen_refresh_every}")
        if self.on_policy == 0 or problems:
            return problems
        if self.gen_max_new_tokens >= self.seq_len:
            problems.append(f"gen_max_new_tokens ({self.gen_max_new_tokens}) must be below seq_len ({self.seq_len}) to leave "
                            "room for the prompt: lower --gen-max-new-tokens or raise --seq-len")
        elif self.prefix_tokens is not None and self.prefix_tokens + self.gen_max_new_tokens > self.seq_len:
            problems.append(f"prefix_tokens + gen_max_new_tokens ({self.prefix_tokens} + {self.gen_max_new_tokens}) must fit "
                            f"seq_len ({self.seq_len}): lower one of them or raise --seq-len")
        if self.teacher_mode != "online":
            problems.append("on_policy > 0 needs teacher_mode = 'online': stored top-k cannot score the student's own "
                            "samples; use --teacher-mode online or on_policy = 0")
        if self.gen_engine == "vllm" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            problems.append("gen_engine = 'vllm' runs in one process (one vLLM engine beside the trainer); under torchrun "
                            "use --gen-engine hf")
        if self.strategy == "fsdp2":
            problems.append("on_policy > 0 runs with strategy = 'ddp' (FSDP2 would need every rank to generate in "
                            "lockstep); use --strategy ddp")
        return problems


def identity(cfg: TrainConfig) -> dict:
    """The config keys that decide the result, each as its option declares (`opt(identity=...)`); the inputs' own
    identity is added by the caller."""
    from distillkit.config import identity as declared

    return declared(cfg)


__all__ = ["Divergence", "TrainConfig", "identity"]
