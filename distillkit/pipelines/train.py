"""`distillkit train`: distil the teacher into the student, following a plan (POCL curriculum + DDK mixture).

Reads the plan artifact, the score artifact it was built from (refused if it is not the recorded
one) and the data the scores were computed on (re-loaded with the score stage's data spec and
checked against its fingerprint), tokenizes exactly as the score stage did, and trains. `run` is
the recipe, top to bottom: `prepare` (inputs) -> `make_settings` (frozen hyper-parameters) ->
`make_components` (wrapped student and loss, teacher source, schedules) -> `initial_state`
(`TrainState`, or the checkpoint's) -> `distillkit.training.loop.train` -> `finish`. Writes, into
``<out>.partial`` and swapped into ``<out>`` at the end:

- ``student/``: the trained student (``save_pretrained`` + tokenizer: plain transformers / vLLM load it);
- ``metrics.arrow``: one row per optimizer step (step, loss, kd_loss, ce_loss, temperature, stage, lr,
  tokens_per_s, kd_weight, tokens, grad_norm, taid_t, on_policy);
- ``mixture.arrow``: the domain weights at step 0 and after every DDK update
  (step, domain, weight, student_ppl, teacher_ppl);
- ``heldout.arrow``: per domain, held-out student perplexity and KL to the teacher before and after;
- ``batches.arrow``: which samples each step drew (step, sample_id, domain, stage);
- ``checkpoints/step-N/``: the last checkpoint (model, optimizer, trainer state incl. RNG).

Checkpoints are written to ``<out>.partial/checkpoints`` every ``save_every`` steps; ``--resume``
continues from the newest. See docs/train.md.
The options, their checks and the artifact's identity are in ``train_config.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from distillkit.pipelines.stage import StageResult, Status
from distillkit.pipelines.train_config import TrainConfig, identity

if TYPE_CHECKING:
    from distillkit.artifacts import ArtifactWriter
    from distillkit.training.distributed import DistInfo
    from distillkit.training.components import Components, Settings
    from distillkit.training.setup import Inputs
    from distillkit.training.state import TrainState

KIND = "train"


def run(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> StageResult:
    """The recipe, top to bottom: inputs -> settings -> components -> state -> loop -> write."""
    import torch

    from distillkit.artifacts import partial_dir
    from distillkit.config import check
    from distillkit.training import distributed as D
    from distillkit.training.loop import train
    from distillkit.training.setup import checkpoint_to_resume, heldout_report
    from distillkit.training.stop import graceful_stop

    check(cfg)  # a config made in code gets the checks the CLI's gets (non-finite numbers included), before any work
    t0 = time.time()
    dist = D.init_from_env(cfg.device)
    writer = parts = None
    try:
        torch.manual_seed(cfg.seed)
        inputs = prepare(cfg, dist)  # every input check happens here, before --out is touched
        found, writer = _open_output(cfg, inputs, dist, resume, overwrite)
        if found == "done":
            if dist.is_main:
                from distillkit.progress import console

                console.print(f"[green]train[/] {cfg.out} is complete for this config: nothing to do")
            return _result(cfg, "skipped")
        settings = make_settings(cfg, inputs, dist, partial_dir(cfg.out), resumed=found == "resumed")
        parts = make_components(cfg, inputs, settings, dist)
        state = initial_state(cfg, inputs)
        # An interrupted run continues from its newest checkpoint (the loop loads it into `state`); one
        # killed before its first checkpoint starts over.
        resume_from = checkpoint_to_resume(settings) if found == "resumed" else None
        # SIGTERM/SIGINT: finish the step, checkpoint, exit 128 + signal (distillkit.training.stop).
        with graceful_stop(say=_say if dist.is_main else None):
            if resume_from is None and cfg.eval_heldout:
                state.before = heldout_report(parts, settings, state, inputs.with_kl)
                if settings.early_check and inputs.dev_rows is not inputs.heldout_rows:  # the early check reads dev
                    state.before["dev"] = heldout_report(parts, settings, state, inputs.with_kl, split="dev")
            train(parts, settings, state, resume_from)
        finish(cfg, inputs, parts, settings, state, writer, wall_s=time.time() - t0)
        D.barrier(dist)
        return _result(cfg, "resumed" if found == "resumed" else "ran")
    finally:
        if parts is not None and hasattr(parts.answers, "close"):
            parts.answers.close()  # a vLLM engine's memory
        if writer is not None:
            writer.close()  # rank 0's hold on the output's lock (finish gives it back on success)
        D.shutdown(dist)


def _say(message: str) -> None:
    from distillkit.progress import console

    console.print(f"[yellow]train[/]: {message}")


def _result(cfg: TrainConfig, status: Status) -> StageResult:
    """Every rank's result; the manifest is on disk once rank 0 has finished (the barrier before this)."""
    import json

    from distillkit.artifacts import MANIFEST

    path = Path(cfg.out)
    return StageResult(KIND, status, path, json.loads((path / MANIFEST).read_text(encoding="utf-8")))


def _open_output(cfg: TrainConfig, inputs: Inputs, dist: DistInfo, resume: bool,
                 overwrite: bool) -> tuple[str, ArtifactWriter | None]:
    """("done" | "fresh" | "resumed", rank 0's writer): rank 0 owns the output; the others learn what it found."""
    from distillkit.training import distributed as D

    ident = identity(cfg) | inputs.identity
    writer, found = None, None
    if dist.is_main:
        from distillkit.artifacts import ArtifactWriter
        from distillkit.errors import DistillkitError

        try:
            writer = ArtifactWriter(cfg.out, KIND, ident, inputs=[inputs.plan, inputs.scores], resume=resume, overwrite=overwrite)
            found = "done" if writer.done else "resumed" if writer.resumed else "fresh"
        except DistillkitError as e:
            found = e
    found = D.broadcast_object(found, dist)
    if isinstance(found, Exception):
        raise found
    return found, writer


def prepare(cfg: TrainConfig, dist: DistInfo) -> Inputs:
    """Read and check every input (plan, its scores, the data, both models) and tokenize; touches no output."""
    import numpy as np
    import pyarrow as pa

    from distillkit.artifacts import check_input, read_artifact
    from distillkit.data import uses_chat_template
    from distillkit.data_options import DataOptions
    from distillkit.errors import DataError
    from distillkit.models import corrected_teacher, model_fingerprint
    from distillkit.records import PlanRecord
    from distillkit.seqkd import scored_dataset
    from distillkit.training.batches import TopKStore, tokenize_rows
    from distillkit.training.setup import Inputs

    # 1. The plan, its scores and the data they were made on; the options checked against them.
    plan = read_artifact(cfg.plan, "plan")
    schedule = PlanRecord.from_manifest(plan.manifest, f"{plan.path}/manifest.json")  # the one read of the plan's table
    scores = read_artifact(schedule.scores, "score")
    check_input(scores, plan.manifest.get("inputs", []), "scores")
    sc = scores.config
    ds = scored_dataset(scores)  # the split and subsample the scores were made on (and score --responses teacher's answers)
    _check_against_inputs(cfg, plan, schedule, scores, ds)

    # 2. Models: a tokenizer or vocabulary mismatch is refused here, before any training.
    no_teacher = cfg.teacher_mode == "none"  # CE only: an SFT baseline or teacher correction
    student_dir, teacher_dir, tok, student, teacher, vocab = _models(cfg, dist)

    # 3. The rows: the plan's training rows in curriculum order, then the test and dev rows.
    cur, mix, domains, codes, train_rows = _planned_rows(plan, ds)
    held_parts, heldout_rows, dev_rows, source = _heldout_rows(cfg, ds, domains, codes, len(train_rows), scores.path, dist)
    rows = pa.concat_tables([train_rows, *held_parts]) if held_parts else train_rows
    chat = uses_chat_template(DataOptions.from_config(sc).chat_template, tok, ds.format)
    seqs = tokenize_rows(rows, ds.format, tok, int(sc.get("max_length", cfg.seq_len)), cfg.seq_len, chat)
    topk = TopKStore(scores.path, seqs, int(sc.get("max_length", cfg.seq_len))) if cfg.teacher_mode == "offline" else None
    if topk is not None and topk.max_id >= vocab:
        raise DataError(f"the stored top-k holds token id {topk.max_id}, outside the {vocab}-token vocabulary: the scores "
                        "were made with another tokenizer")

    # 4. What joins the artifact's identity.
    identity = {"plan_manifest_sha256": plan.sha256, "student_fingerprint": model_fingerprint(student_dir)}
    if not no_teacher:
        identity["teacher_fingerprint"] = model_fingerprint(teacher_dir)  # sha256 of sorted keys: order is no part of it
        if dist.is_main and sc.get("teacher_fingerprint") not in (None, identity["teacher_fingerprint"]):
            from distillkit.progress import console

            console.print(f"[yellow]note[/]: --teacher {cfg.teacher} is not the teacher the scores were computed with; "
                          "DDK uses the scored teacher perplexities")
    return Inputs(plan=plan, scores=scores, schedule=schedule, tokenizer=tok, student=student, teacher=teacher, vocab_size=vocab,
                  seqs=seqs, domain_codes=codes, stages=cur.column("stage").to_numpy().astype(np.int64),
                  domains=domains, plan_weights=mix.column("weight").to_numpy(), teacher_ppl=mix.column("teacher_ppl").to_numpy(),
                  student_ppl=mix.column("student_ppl").to_numpy(), heldout_rows=heldout_rows, heldout_source=source, topk=topk,
                  dev_rows=dev_rows, test_teacher_ppl=_test_teacher_ppl(scores, domains, mix.column("teacher_ppl").to_numpy()),
                  teacher_provenance=None if no_teacher else corrected_teacher(teacher_dir),
                  pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0, identity=identity, data_format=ds.format,
                  student_dir=str(student_dir))


def _check_against_inputs(cfg: TrainConfig, plan, schedule, scores, ds) -> None:
    """The option checks that need the plan, the scores or the data (the rest are TrainConfig.validate)."""
    from distillkit.errors import ConfigError

    if cfg.on_policy > 0 and ds.format == "text" and cfg.prefix_tokens is None:
        raise ConfigError("on_policy > 0 on plain-text data needs --prefix-tokens N: the student continues the first N "
                          "tokens of each document")
    if cfg.on_policy > 0 and cfg.gen_engine == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            from distillkit.engines.vllm import _INSTALL_HINT
            from distillkit.errors import EngineUnavailable

            raise EngineUnavailable(f"gen_engine = 'vllm' needs the vllm package; {_INSTALL_HINT}, or use --gen-engine hf")
    if cfg.teacher_mode == "offline" and scores.files("sampled/"):  # score --teacher-store sampled: fkl / skl at T = 1
        from distillkit.losses.sparse import sampled_problem
        from distillkit.training.schedule import plan_stages

        run_stages = plan_stages(schedule, cfg.batch_size, cfg.steps, cfg.temperature, cfg.kd_weight)
        if problem := sampled_problem(cfg.loss, [st.temperature for st in run_stages]):
            raise ConfigError(problem)
    if (cfg.ddk_factor or schedule.mixture.factor) == "ratio" and cfg.ddk_tau not in (None, 1.0):
        raise ConfigError(f"ddk_tau = {cfg.ddk_tau} applies only to the log-ratio factor, and {plan.path} uses the paper's "
                          "ratio factor: add --ddk-factor log-ratio or drop --ddk-tau")


def _models(cfg: TrainConfig, dist: DistInfo):
    """(student_dir, teacher_dir, tokenizer, student, teacher or None, vocabulary size), checked against each other.
    Without a teacher (teacher_mode = none) the student's directory stands in for the teacher's tokenizer."""
    from distillkit.models import check_same_tokenizer, check_vocab_sizes, load_model, load_tokenizer, resolve_model

    no_teacher = cfg.teacher_mode == "none"
    student_dir = resolve_model(cfg.student, role="student")
    teacher_dir = student_dir if no_teacher else resolve_model(cfg.teacher, role="teacher")
    tok = load_tokenizer(str(teacher_dir))
    if not no_teacher:
        check_same_tokenizer(tok, load_tokenizer(str(student_dir)), cfg.teacher, cfg.student)
    student = load_model(student_dir, dtype="float32", device=dist.device, trainable=True, role="student")
    teacher = (load_model(teacher_dir, dtype=cfg.teacher_dtype, device=dist.device, role="teacher")
               if cfg.teacher_mode == "online" else None)
    vocab = check_vocab_sizes(teacher if teacher is not None else student, student, tok, cfg.teacher, cfg.student)
    for role, m in (("student", student), ("teacher", teacher)):
        _check_head(m, role)
    return student_dir, teacher_dir, tok, student, teacher, vocab


def _planned_rows(plan, ds):
    """(curriculum table, mixture table, domains, each planned row's domain code, the planned rows of the data)."""
    import numpy as np
    import pyarrow as pa

    from distillkit.errors import ArtifactError, DataError
    from distillkit.schemas import TRAIN_CURRICULUM_COLUMNS, TRAIN_MIXTURE_COLUMNS

    cur = plan.table("curriculum.arrow", TRAIN_CURRICULUM_COLUMNS)
    mix = plan.table("mixture.arrow", TRAIN_MIXTURE_COLUMNS)
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
    return cur, mix, domains, codes, ds.table.take(pa.array([index[s] for s in cur_ids], pa.int64()))


def _heldout_rows(cfg: TrainConfig, ds, domains: list[str], codes, n: int, scores_path, dist: DistInfo):
    """(held-out tables to append after the `n` training rows, per domain the test rows, per domain the dev rows,
    per domain where the test rows come from). The test rows are the before/after report's; the dev rows are what
    every decision made during the run reads (DDK's re-measurement, the early check), so the test documents cannot
    change what is trained. Scores without a dev split fall back to the test rows, with a note."""
    import numpy as np

    from distillkit.data import DEV, TEST
    from distillkit.errors import DataError

    held_parts = []
    split_rows: dict[str, list[list[int]]] = {TEST: [], DEV: []}
    source = []
    for split in (TEST, DEV):
        for i, d in enumerate(domains):
            val = ds.heldout(d, cfg.heldout_docs, split=split)
            if val.num_rows:
                split_rows[split].append(list(range(n, n + val.num_rows)))
                held_parts.append(val)
                n += val.num_rows
                if split == TEST:
                    source.append("validation")
            elif split == TEST:  # as the score stage does: a domain without held-out documents is measured on its training rows
                split_rows[split].append(np.flatnonzero(codes == i)[: cfg.heldout_docs or None].tolist())
                source.append("train")
            else:
                split_rows[split].append([])
    heldout_rows, dev_rows = split_rows[TEST], split_rows[DEV]
    if not ds.has_dev:
        dev_rows = heldout_rows
        if dist.is_main and (cfg.mixture == "ddk" or (cfg.early_check and cfg.eval_heldout)):
            from distillkit.progress import console

            console.print(f"[yellow]note[/]: {scores_path} has no dev split, so DDK's re-measurement and the early check read "
                          "the test slice the report reads; rescore with --dev-size N to keep decisions off the reported documents",
                          highlight=False)
    elif any(not r for r in dev_rows) and cfg.mixture == "ddk":
        raise DataError(f"domains {[d for d, r in zip(domains, dev_rows) if not r]} have no dev documents for DDK's "
                        "re-measurement: rescore with a larger --dev-size (or more data per domain), or use --mixture static")
    return held_parts, heldout_rows, dev_rows, source


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


def make_settings(cfg: TrainConfig, inputs: Inputs, dist: DistInfo, partial: Path, resumed: bool = False) -> Settings:
    """The loop's frozen hyper-parameters; refuses a batch that does not split over processes × accumulation.

    The student's precision is chosen once per run and kept in ``<out>.partial/precision.json``: an interrupted
    run resumed on a machine whose CPU flags would make `auto` choose otherwise keeps its precision, so resume
    stays bitwise."""
    from distillkit.errors import ConfigError
    from distillkit.training.components import Settings
    from distillkit.training.setup import precision_choice

    if cfg.batch_size % (dist.world_size * cfg.grad_accum):
        raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of processes × grad_accum "
                          f"({dist.world_size} × {cfg.grad_accum}); change --batch-size or --grad-accum")
    restart = inputs.schedule.restart_optimizer if cfg.restart_optimizer is None else cfg.restart_optimizer
    if cfg.pack:
        from distillkit.training.batches import packing_supported

        if not packing_supported():
            import transformers

            raise ConfigError(f"--pack needs transformers >= 4.54 (block-diagonal masks from packed position ids); this is "
                              f"{transformers.__version__}: pip install -U 'transformers>=4.54' or drop --pack")
    import json

    import torch

    kept = partial / "precision.json"
    if resumed and kept.is_file():
        rec = json.loads(kept.read_text(encoding="utf-8"))
        autocast, why = (torch.bfloat16 if rec["precision"] == "bf16" else None), f"{rec['reason']}, kept from the interrupted run"
    else:
        autocast, why = precision_choice(cfg.precision, dist.device)
        if dist.is_main:
            from distillkit.artifacts import atomic_write_bytes

            atomic_write_bytes(kept, json.dumps({"precision": "bf16" if autocast is not None else "fp32", "reason": why}).encode())
    if dist.is_main:
        from distillkit.progress import console

        console.print(f"train: student computes in {why}")
    return Settings(
        batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, max_grad_norm=cfg.max_grad_norm or float("inf"),
        weight_decay=cfg.weight_decay, restart_optimizer=restart, autocast=autocast, precision=why,
        save_every=cfg.save_every, keep_checkpoints=cfg.keep_checkpoints, log_every=cfg.log_every,
        eval_batch_size=cfg.eval_batch_size, record_batches=cfg.record_batches, strategy=cfg.strategy,
        checkpoint_root=partial / "checkpoints", tensorboard_dir=str(partial / "tensorboard") if cfg.tensorboard else None,
        on_policy=_on_policy(cfg, inputs),
        early_check=cfg.early_check if cfg.eval_heldout else 0, early_check_stop=cfg.early_check_stop, pack=cfg.pack,
    )


def _on_policy(cfg: TrainConfig, inputs: Inputs):
    """The on-policy generation settings, or None for an off-policy run."""
    if cfg.on_policy == 0:
        return None
    from distillkit.sampling import eos_ids
    from distillkit.training.onpolicy import OnPolicy

    return OnPolicy(fraction=cfg.on_policy, max_new_tokens=cfg.gen_max_new_tokens, temperature=cfg.gen_temperature,
                    top_p=cfg.gen_top_p, prompt_from="prefix" if inputs.data_format == "text" else "prompt",
                    prefix_tokens=cfg.prefix_tokens or 0, seq_len=cfg.seq_len, seed=cfg.seed, pad_id=inputs.pad_id,
                    eos_ids=tuple(eos_ids(inputs.student, inputs.tokenizer)))


def make_components(cfg: TrainConfig, inputs: Inputs, settings: Settings, dist: DistInfo) -> Components:
    """The wrapped student with its loss, the teacher source, the stages and LR schedule, the optimizer factory."""
    from distillkit.losses import LossSpec
    from distillkit.losses.registry import config_params
    from distillkit.training import distributed as D
    from distillkit.training.components import Components, Corpus
    from distillkit.training.schedule import LRSchedule, plan_stages
    from distillkit.training.setup import adamw, lr_choice
    from distillkit.training.student import StudentLoss, teacher_sources

    stages = tuple(plan_stages(inputs.schedule, cfg.batch_size, cfg.steps, cfg.temperature, cfg.kd_weight))
    peak, why = lr_choice(cfg.lr, inputs.student_ppl, inputs.teacher_ppl)
    if dist.is_main:
        from distillkit.progress import console

        console.print(f"train: lr {why}", highlight=False)
    lr = LRSchedule(peak, stages, cfg.warmup_fraction, cfg.min_lr_ratio, settings.restart_optimizer)
    spec = LossSpec(cfg.loss, config_params(cfg.loss, cfg), cfg.loss_form, cfg.loss_impl, inputs.vocab_size, cfg.chunk_size,
                    cfg.sparse_tail, store=inputs.topk.store if inputs.topk is not None else "topk")
    model = D.wrap(StudentLoss(inputs.student, spec), dist, cfg.strategy)
    teacher, eval_teacher = teacher_sources(inputs.teacher, cfg.loss_impl)
    return Components(model=model, teacher=teacher, eval_teacher=eval_teacher,
                      corpus=Corpus(inputs.seqs, inputs.pad_id, inputs.topk, inputs.heldout_rows, inputs.dev_rows), stages=stages, lr=lr,
                      loss=spec, make_optimizer=lambda: adamw(model, lr(0), settings.weight_decay), dist=dist,
                      answers=_answer_source(cfg, inputs, settings))


def _answer_source(cfg: TrainConfig, inputs: Inputs, settings: Settings):
    """Where on-policy answers come from: None (transformers generate on the training model) or a vLLM engine
    started on the student's directory, in the student's compute dtype."""
    if settings.on_policy is None or cfg.gen_engine == "hf":
        return None
    import torch

    from distillkit.engines.vllm import VllmEngine
    from distillkit.progress import console
    from distillkit.training.onpolicy import VllmAnswers

    dtype = "bfloat16" if settings.autocast == torch.bfloat16 else "float32"
    console.print(f"train: on-policy answers from vLLM ({dtype}), the student's weights pushed into it when "
                  f"{cfg.gen_refresh_every} step(s) old", highlight=False)
    # On a GPU the engine shares the device with training: a third of its memory for vLLM's weights and KV cache.
    engine = VllmEngine(inputs.student_dir, dtype=dtype, max_model_len=cfg.seq_len, max_top_k=1, gpu_memory_utilization=0.3,
                        max_num_seqs=cfg.batch_size)
    return VllmAnswers(engine, cfg.gen_refresh_every)


def initial_state(cfg: TrainConfig, inputs: Inputs) -> TrainState:
    """Step 0: the plan's (or a uniform) mixture, a sampler at the first stage, TAID at t_start."""
    from distillkit.losses import TaidSchedule
    from distillkit.training.ddk import DomainMixer
    from distillkit.training.sampler import CurriculumSampler
    from distillkit.training.state import TrainState

    mix = inputs.schedule.mixture
    mixer = DomainMixer.create(cfg.mixture, inputs.domains, inputs.plan_weights, inputs.teacher_ppl, inputs.student_ppl,
                               interval=cfg.ddk_interval or mix.interval,
                               alpha=mix.alpha if cfg.ddk_alpha is None else cfg.ddk_alpha,
                               smoothing=mix.smoothing if cfg.ddk_smoothing is None else cfg.ddk_smoothing,
                               factor=cfg.ddk_factor or mix.factor, tau=mix.tau if cfg.ddk_tau is None else cfg.ddk_tau)
    sampler = CurriculumSampler(inputs.domain_codes, inputs.stages, mixer.weights, cfg.seed)
    taid = TaidSchedule(cfg.taid_t_start, cfg.taid_t_end) if cfg.loss == "taid" else None
    return TrainState(sampler=sampler, mixer=mixer, taid=taid)


def finish(cfg: TrainConfig, inputs: Inputs, parts: Components, settings: Settings, state: TrainState,
           writer: ArtifactWriter | None, wall_s: float) -> None:
    """The after-report, the student in HF format, and the tables; rank 0 writes, then swaps the artifact in."""
    import numpy as np
    import pyarrow as pa

    from distillkit.training import distributed as D
    from distillkit.records import RunStage, TrainRecord
    from distillkit.training.monitor import metrics_table
    from distillkit.training.setup import heldout_report, lr_choice

    dist = parts.dist
    after = heldout_report(parts, settings, state, inputs.with_kl) if cfg.eval_heldout else None
    full = D.model_state(parts.model, dist, cfg.strategy) if dist.distributed and cfg.strategy == "fsdp2" else None
    if not dist.is_main:
        return
    from distillkit.progress import console

    from distillkit.artifacts import writing
    from distillkit.training.checkpoint import describe_latest

    student = D.unwrap(parts.model).student
    kw = {"state_dict": {k.removeprefix("student."): v for k, v in full.items()}} if full is not None else {}
    dest = writer.path("student")
    with writing(dest, dest, kept=describe_latest(settings.checkpoint_root) + " is kept"):
        student.save_pretrained(dest, **kw)
        inputs.tokenizer.save_pretrained(dest)
    writer.write("metrics.arrow", metrics_table(state.metrics))
    writer.write("mixture.arrow", state.mixer.table())
    if state.drawn:
        idx = np.concatenate(state.drawn)
        steps = np.repeat(np.arange(1, len(state.drawn) + 1), [len(x) for x in state.drawn])
        seqs = inputs.seqs
        writer.write("batches.arrow", pa.table({
            "step": pa.array(steps, pa.int64()), "sample_id": pa.array([seqs.sample_id[i] for i in idx], pa.string()),
            "domain": pa.array([seqs.domain[i] for i in idx], pa.string()),
            "stage": pa.array(inputs.stages[idx].astype(np.int32), pa.int32())}))
    before = state.before
    if before is not None and after is not None:
        cols = {"domain": pa.array(inputs.domains, pa.string()), "measured_on": pa.array(inputs.heldout_source, pa.string()),
                "tokens": pa.array(after["tokens"], pa.int64()), "teacher_ppl": pa.array(inputs.test_teacher_ppl, pa.float64()),
                "student_ppl_before": pa.array(before["student_ppl"], pa.float64()),
                "student_ppl_after": pa.array(after["student_ppl"], pa.float64())}
        if after["kl"] is not None and before["kl"] is not None:
            cols["kl_before"] = pa.array(before["kl"], pa.float64())
            cols["kl_after"] = pa.array(after["kl"], pa.float64())
        writer.write("heldout.arrow", pa.table(cols))
    m = state.metrics
    steps_done = len(m) - (state.resumed_from or 0)
    figures = {
        "steps": state.step, "wall_s": round(wall_s, 2), "world_size": dist.world_size, "strategy": cfg.strategy if dist.distributed else None,
        "device": str(dist.device), "resumed_from_step": state.resumed_from,
        "s_per_step": round(float(np.median([r["tokens"] / r["tokens_per_s"] for r in m[-steps_done:]])), 3) if steps_done else None,
        "tokens_per_s": round(float(np.median([r["tokens_per_s"] for r in m[-steps_done:]])), 1) if steps_done else None,
        "final_loss": m[-1]["loss"] if m else None, "first_loss": m[0]["loss"] if m else None,
        "precision": "bf16" if settings.autocast is not None else "fp32", "precision_reason": settings.precision,
    }
    if before is not None and after is not None:
        figures["heldout"] = {k: {"before": before[k], "after": after[k]} for k in ("overall_student_ppl", "overall_kl") if k in after}
        check = before.get("early_check")  # the loop's early held-out check, carried by the checkpoints
        if check is None and settings.early_check:  # a run no longer than early_check: its after-report is the check
            from distillkit.training.early_check import compare, message

            check = compare(before, after, state.mixer.domains, state.step)
            if check["rose"]:
                console.print(f"[yellow]warning[/]: {message(check, parts.lr.base_lr)}", highlight=False)
        if check is not None:
            figures["early_check"] = check
    mixer = state.mixer
    on_policy = None
    if settings.on_policy is not None:
        op = settings.on_policy
        on_policy = {"fraction": op.fraction, "max_new_tokens": op.max_new_tokens, "temperature": op.temperature,
                     "top_p": op.top_p, "prompt_from": op.prompt_from, "prefix_tokens": op.prefix_tokens,
                     "steps": int(sum(bool(r.get("on_policy")) for r in m)), "engine": cfg.gen_engine}
        if parts.answers is not None:
            on_policy |= {"refresh_every": cfg.gen_refresh_every, "refreshes": parts.answers.refreshes,
                          "refresh_s": round(parts.answers.refresh_s, 3)}
    record = TrainRecord(
        stages=tuple(RunStage(s.stage, s.start, s.end, s.temperature, s.kd_weight, s.num_samples) for s in parts.stages),
        total_steps=parts.total_steps, restart_optimizer=settings.restart_optimizer,
        mixture={"mode": mixer.mode, "interval": mixer.interval, "alpha": mixer.alpha, "smoothing": mixer.smoothing},
        loss={"kind": cfg.loss, "form": cfg.loss_form, "impl": cfg.loss_impl, "params": parts.loss.params,
              "teacher_mode": cfg.teacher_mode, "vocab_size": inputs.vocab_size},
        plan=str(inputs.plan.path), scores=str(inputs.scores.path),
        lr={"peak": parts.lr.base_lr, "why": lr_choice(cfg.lr, inputs.student_ppl, inputs.teacher_ppl)[1]},
        objective="sft" if cfg.teacher_mode == "none" else "distill", teacher=inputs.teacher_provenance, on_policy=on_policy)
    extra = {"train": record.to_manifest()}
    _write_card(cfg, inputs, record, figures, writer)
    writer.finish(figures, extra=extra)
    console.print(f"[green]wrote[/] {cfg.out}")


def _write_card(cfg: TrainConfig, inputs: Inputs, record, figures: dict, writer) -> None:
    """student/README.md: the Hugging Face model card (distillkit.model_card)."""
    import dataclasses
    import shlex
    import sys

    from distillkit.artifacts import read_arrow
    from distillkit.model_card import train_card

    held = read_arrow(writer.path("heldout.arrow")).to_pylist() if writer.has("heldout.arrow") else []
    argv = sys.argv[1:] if Path(sys.argv[0]).name in ("distillkit", "main.py", "-c") else []
    command = "distillkit " + " ".join(shlex.quote(a) for a in argv) if argv else f"distillkit train --plan {cfg.plan} ..."
    train_card(writer.path("student"), base_model=cfg.student, teacher=None if cfg.teacher_mode == "none" else cfg.teacher,
               teacher_provenance=inputs.teacher_provenance, data=str(inputs.scores.config.get("data", "")),
               data_format=inputs.data_format, train=dataclasses.asdict(record), figures=figures, heldout=held, command=command)


def _test_teacher_ppl(scores, domains: list[str], fallback):
    """Per domain, the scored teacher's perplexity on the test slice (what the before/after report compares
    with); the score's domain table (dev-based when the scores have a dev split) where a domain has no test rows."""
    import numpy as np
    import pyarrow.compute as pc

    from distillkit.data import TEST

    s = scores.table("samples.arrow").select(["domain", "split", "num_tokens", "teacher_nll"])
    s = s.filter(pc.equal(s.column("split"), TEST))
    out = np.asarray(fallback, dtype=np.float64).copy()
    for i, d in enumerate(domains):
        r = s.filter(pc.equal(s.column("domain"), d))
        if r.num_rows:
            n = r.column("num_tokens").to_numpy().astype(np.float64)
            out[i] = float(np.exp(np.sum(r.column("teacher_nll").to_numpy() * n) / n.sum()))
    return out


__all__ = ["TrainConfig", "run", "KIND"]
