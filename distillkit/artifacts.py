"""Artifacts: a directory of Arrow IPC files plus `manifest.json`, written last.

A stage writes into ``<out>.partial/`` (files replaced atomically one by one, so a
killed run leaves only whole files), writes the manifest there last, and then
swaps the directory into ``<out>``. So ``<out>`` only ever holds a complete
artifact, a failed or refused run never damages an earlier one, and
``<out>.partial`` is what ``--resume`` continues.

Readers refuse a directory without a manifest, of another kind or schema
version, with missing/resized/tampered files, or with the wrong columns.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import weakref
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.ipc as ipc

from distillkit import __version__
from distillkit.config import config_sha256
from distillkit.errors import ArtifactError, DamagedOutput, DiskFull, OutputExists, is_disk_full
from distillkit.locks import output_dir  # noqa: F401  (re-exported: where a stage really writes --out)

# 2: score top-k parts in the compact format (uint16 ids, uint8 log-prob codes, tail mass; distillkit.topk).
SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
RUN_STATE = "run.json"  # inside <out>.partial: the config of the interrupted run

_LIBS = ("torch", "transformers", "pyarrow", "numpy", "datasets", "vllm", "lm_eval")


def partial_dir(out: str | Path) -> Path:
    """Where a stage writing `out` keeps its unfinished work (``<out>.partial``, beside `out`, or beside the target
    of a symlinked `out`: `output_dir`): what ``--resume`` continues, and what readers and recipes look for to tell
    interrupted from absent."""
    out = output_dir(out)
    return out.with_name(out.name + ".partial")


def artifact_file(root: str | Path, name: Any, manifest: str | Path | None = None) -> Path:
    """The path of the file called `name` in the manifest of the artifact at `root`: the one check that every
    reader of a manifest's file names goes through (`read_artifact`, `Artifact.file` / `table`, `verify_files`).
    A name is a relative path inside the artifact: an absolute one, one with a '..' part, or one that resolves
    outside `root` (through a symbolic link) is refused with an `ArtifactError` naming the manifest and the name,
    so no reader ever opens, hashes or copies a file outside the artifact because a manifest says so."""
    root = Path(root)
    where = Path(manifest) if manifest is not None else root / MANIFEST
    ok = isinstance(name, str) and name not in ("", ".") and "\x00" not in name
    if ok:
        rel = PurePosixPath(name)
        ok = not rel.is_absolute() and ".." not in rel.parts
    if ok:
        path = root / name
        ok = path.resolve().is_relative_to(root.resolve())
    if not ok:
        raise ArtifactError(f"{where} lists a file named {name!r}, which is outside the artifact {root} (an absolute path, "
                            "a '..' or a link out of it): that manifest was edited or not written by distillkit; rerun the "
                            f"stage that wrote {root} with --overwrite")
    return path


def sha256_file(path: str | Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def temp_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: a hidden name beside it, with this pid."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _is_temp(p: Path) -> bool:
    """A write's temp copy (``.NAME.tmp<pid>``) or a replaced copy renamed aside to be deleted (``.NAME.old<pid>``)."""
    return p.name.startswith(".") and any(tag in p.name and p.name.rsplit(tag, 1)[-1].isdigit() for tag in (".tmp", ".old"))


def remove_path(p: Path) -> None:
    """Delete `p` whatever it is: a directory tree, a file, or a symbolic link (the link only, never what it
    points to; `shutil.rmtree` refuses a link and, with ignore_errors, would silently leave it). Never raises."""
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(path: Path, *cleanup: Path, kept: str = "the files written before it are kept", label: str | None = None,
            unfinished: str = "file") -> Iterator[None]:
    """Around a write of `path`: on any failure remove the unfinished `cleanup` paths; a full disk becomes one
    `DiskFull` line naming `label` (default: `path`), the `unfinished` thing removed, and what was `kept`."""
    try:
        yield
    except BaseException as e:
        full = isinstance(e, Exception) and not isinstance(e, DiskFull) and is_disk_full(e, path)  # before the cleanup frees space
        for c in cleanup:
            if c.is_dir():
                shutil.rmtree(c, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    c.unlink()
        if full:
            raise DiskFull(f"no space left on device while writing {label or path}; the unfinished {unfinished} was "
                           f"removed and {kept}; free space on that disk and rerun with --resume") from e
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name beside `path`, fsync, then rename over it: readers see old or new, never half."""
    tmp = temp_name(path)
    with writing(path, tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def write_arrow(path: str | Path, table: pa.Table, compression: str | None = None) -> None:
    """Write an Arrow IPC *file* atomically (temp name, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    opts = ipc.IpcWriteOptions(compression=compression)
    with writing(path, tmp):
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, table.schema, options=opts) as w:
            w.write_table(table)
        os.replace(tmp, path)


def read_arrow(path: str | Path) -> pa.Table:
    with pa.memory_map(str(path), "r") as src:
        return ipc.open_file(src).read_all()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    vers = {"python": sys.version.split()[0], "distillkit": __version__}
    for lib in _LIBS:
        try:
            vers[lib] = metadata.version(lib.replace("_", "-"))
        except metadata.PackageNotFoundError:
            pass
    return vers


def manifest_sha256(artifact_dir: str | Path) -> str:
    return sha256_file(Path(artifact_dir) / MANIFEST)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class Artifact:
    """A complete, verified artifact directory."""

    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def sha256(self) -> str:
        return manifest_sha256(self.path)

    def files(self, prefix: str = "") -> list[str]:
        return sorted(f["name"] for f in self.manifest["files"] if f["name"].startswith(prefix))

    def file(self, name: str) -> Path:
        """Where the manifest's file `name` is: inside the artifact, or an `ArtifactError` (`artifact_file`)."""
        return artifact_file(self.path, name)

    def table(self, name: str, columns: dict[str, pa.DataType] | None = None, verify: bool = True) -> pa.Table:
        """Read one Arrow file, checking its hash, row count and (optionally) column types."""
        entry = next((f for f in self.manifest["files"] if f["name"] == name), None)
        if entry is None:
            raise ArtifactError(f"{self.path} has no {name} (it holds: {', '.join(self.files()) or 'nothing'})")
        p = self.file(name)
        if verify and sha256_file(p) != entry["sha256"]:
            raise ArtifactError(f"{p} was modified after it was written (sha256 differs from manifest.json); rerun the stage with --overwrite")
        try:
            t = read_arrow(p)
        except (pa.ArrowInvalid, OSError) as e:
            raise ArtifactError(f"{p} is not a readable Arrow file ({e}); rerun the stage with --overwrite") from e
        if t.num_rows != entry["rows"]:
            raise ArtifactError(f"{p} has {t.num_rows} rows but manifest.json records {entry['rows']}")
        if columns:
            check_columns(t, columns, str(p))
        return t


def check_columns(table: pa.Table, columns: dict[str, pa.DataType], where: str) -> None:
    problems = []
    for name, typ in columns.items():
        if name not in table.column_names:
            problems.append(f"missing column {name!r}")
        elif not table.schema.field(name).type.equals(typ):
            problems.append(f"column {name!r} is {table.schema.field(name).type}, expected {typ}")
    if problems:
        raise ArtifactError(f"{where}: {'; '.join(problems)}")


def read_artifact(path: str | Path, kind: str | tuple[str, ...] | None = None) -> Artifact:
    """Open an artifact directory, refusing incomplete, foreign or damaged ones."""
    p = Path(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    want = f"a {' or '.join(kinds)} artifact" if kinds else "an artifact"
    if not p.exists():
        partial = partial_dir(p)
        hint = f"; an interrupted run is in {partial}: rerun its stage with --resume" if partial.exists() else ""
        from distillkit.locks import live_holder, lock_path

        holder = live_holder(lock_path(p))
        if holder is not None and holder.pid != os.getpid():
            hint = f"; it is being written right now ({holder.describe()}): wait for that run to finish"
        raise ArtifactError(f"{p} does not exist (expected {want}){hint}")
    if not p.is_dir():
        raise ArtifactError(f"{p} is a file, expected {want} directory")
    mpath = p / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{p} is incomplete: no {MANIFEST} (the stage that writes it did not finish; rerun it with --resume)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); rerun the stage with --overwrite") from e
    for key in ("kind", "schema_version", "files", "config", "config_sha256"):
        if key not in manifest:
            raise ArtifactError(f"{mpath} lacks {key!r}: not a distillkit manifest")
    if kinds and manifest["kind"] not in kinds:
        raise ArtifactError(f"{p} is a {manifest['kind']} artifact, expected {want}")
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise ArtifactError(
            f"{p} has schema version {manifest['schema_version']}, this distillkit reads up to {SCHEMA_VERSION}: upgrade distillkit"
        )
    for f in manifest["files"]:
        fp = artifact_file(p, f.get("name") if isinstance(f, dict) else None, mpath)
        if not fp.is_file():
            raise ArtifactError(f"{p} is damaged: {f['name']} is missing; rerun the stage with --overwrite")
        if fp.stat().st_size != f["bytes"]:
            raise ArtifactError(f"{p} is damaged: {f['name']} has {fp.stat().st_size} bytes, manifest records {f['bytes']} (truncated?)")
    return Artifact(p, manifest)


def check_input(artifact: Artifact, recorded: list[dict[str, Any]], role: str) -> None:
    """Refuse to combine `artifact` with an artifact built from a different one."""
    for inp in recorded:
        if inp.get("kind") == artifact.kind:
            if inp["manifest_sha256"] != artifact.sha256:
                raise ArtifactError(
                    f"{role} {artifact.path} (manifest sha256 {artifact.sha256[:12]}) is not the one this artifact was built "
                    f"from ({inp['path']}, sha256 {inp['manifest_sha256'][:12]}); rebuild it from the current {artifact.kind}"
                )
            return


# ---------------------------------------------------------------- writing


class ArtifactWriter:
    """Writes one artifact into ``<out>.partial`` and swaps it into ``<out>`` at `finish`.

    The writer holds ``<out>``'s lock (`distillkit.locks`) from the start until `finish` or `close`: a
    second writer of the same output (plain, resumed or overwriting) is refused with `ArtifactLocked`
    before it reads or touches anything; a lock left by a killed process is taken over.

    ``done`` is True when ``<out>`` already holds this kind made with the same config, and its files
    still match its manifest: the stage has nothing to do (idempotent re-run).
    """

    def __init__(
        self,
        out: str | Path,
        kind: str,
        config: dict[str, Any],
        inputs: list[Artifact] | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        from distillkit import locks

        self.out = output_dir(out)  # a symlinked --out: its target (the link stays)
        self.kind = kind
        self.config = config
        self.config_sha = config_sha256(config)
        self.inputs = [
            {"path": str(a.path), "kind": a.kind, "manifest_sha256": a.sha256} for a in (inputs or [])
        ]
        self.partial = partial_dir(self.out)
        self.done = False
        self.resumed = False
        self.out.parent.mkdir(parents=True, exist_ok=True)
        locks.acquire(self.out)
        # A writer dropped without finish/close (an exception in its stage) gives its hold back when collected.
        self._unlock = weakref.finalize(self, locks.release_lock, self.out)
        try:
            self._recover()
            self._check_out(overwrite)
            if not self.done:
                self._prepare_partial(resume, overwrite)
        except BaseException:
            self.close()
            raise
        if self.done:
            self.close()

    def close(self) -> None:
        """Give back the output's lock (idempotent); `finish` does it after the swap."""
        self._unlock()

    def __enter__(self) -> "ArtifactWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recover(self) -> None:
        """Undo what a killed writer of this output left (the lock says none runs): a finished artifact whose
        swap into place was cut short is swapped in; the old copy a swap was replacing is removed."""
        for old in self.out.parent.glob(f".{self.out.name}.old*"):
            pid = old.name.rsplit(".old", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid():
                remove_path(old)
        if not self.out.exists() and (self.partial / MANIFEST).is_file():
            (self.partial / RUN_STATE).unlink(missing_ok=True)
            os.replace(self.partial, self.out)

    def _check_out(self, overwrite: bool) -> None:
        if not self.out.exists():
            return
        if not self.out.is_dir():
            raise OutputExists(f"--out {self.out} is a file; choose a directory path")
        mpath = self.out / MANIFEST
        if mpath.is_file():
            try:
                m = json.loads(mpath.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                m = {}
            if not isinstance(m, dict):
                m = {}
            if overwrite:
                return
            if m.get("kind") == self.kind and m.get("config_sha256") == self.config_sha:
                damage = verify_files(self.out, m.get("files", []))
                if damage:
                    raise DamagedOutput(
                        f"{self.out} holds a {self.kind} artifact made with this config, but it is damaged ({damage}); "
                        "pass --overwrite to redo it"
                    )
                self.done = True
                return
            raise OutputExists(f"{self.out} {self._why_different(m)}; pass --overwrite to replace it or choose another --out")
        elif any(self.out.iterdir()) and not overwrite:
            raise OutputExists(f"--out {self.out} is a non-empty directory that is not a distillkit artifact; choose another --out")

    def _why_different(self, m: dict[str, Any]) -> str:
        """Why the artifact in ``out`` (manifest `m`) is not the one this writer would make: the real reason."""
        kind = m.get("kind")
        if not kind or "config" not in m:
            return f"holds a {MANIFEST} that is not a distillkit manifest"
        if kind != self.kind:
            return f"holds a {kind} artifact, not a {self.kind} one"
        old = m.get("config") if isinstance(m.get("config"), dict) else {}
        diff = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
        derived = [k for k in diff if k.endswith(("_sha256", "_fingerprint"))]
        settings = [k for k in diff if k not in derived]
        reasons = []
        if settings:
            shown = ", ".join(f"{k} {_short(old.get(k))} -> {_short(self.config.get(k))}" for k in settings[:4])
            reasons.append(f"made with another config (differs in: {shown}{', ...' if len(settings) > 4 else ''})")
        recorded = {i.get("kind"): i for i in m.get("inputs", []) if isinstance(i, dict)}
        changed = [(recorded[i["kind"]], i) for i in self.inputs
                   if i["kind"] in recorded and recorded[i["kind"]].get("manifest_sha256") != i["manifest_sha256"]]
        for was, now in changed:
            same = was.get("path") == now["path"]
            where = f"{now['path']}" if same else f"{was.get('path')} (now {now['path']})"
            reasons.append(f"made from another {now['kind']} artifact: {where} had manifest sha256 "
                           f"{str(was.get('manifest_sha256'))[:12]} then and has {now['manifest_sha256'][:12]} now "
                           f"({'rebuilt or edited since' if same else 'a different artifact'})")
        # a recorded input's manifest hash in the config says the same as `changed`
        other = [k for k in derived if not (changed and k.endswith("manifest_sha256"))]
        if other:
            names = ", ".join(k.removesuffix("_fingerprint").removesuffix("_sha256") for k in other)
            reasons.append(f"made from other inputs ({names} changed since)")
        if not reasons:
            reasons.append(f"made with another config (sha256 {str(m.get('config_sha256', '?'))[:12]} vs {self.config_sha[:12]})")
        return f"holds a {self.kind} artifact " + " and ".join(reasons)

    def _prepare_partial(self, resume: bool, overwrite: bool) -> None:
        state = self.partial / RUN_STATE
        if self.partial.exists():
            prev, prev_cfg = None, {}
            if state.is_file():
                try:
                    st = json.loads(state.read_text(encoding="utf-8"))
                    prev, prev_cfg = st.get("config_sha256"), st.get("config", {})
                except json.JSONDecodeError:
                    pass
            leftover = prev is None and not any(not _is_temp(p) for p in self.partial.rglob("*"))
            if overwrite or leftover:  # leftover: a run that failed before it wrote anything (e.g. a full disk)
                shutil.rmtree(self.partial)
            elif prev != self.config_sha:
                diff = sorted(k for k in set(prev_cfg) | set(self.config) if prev_cfg.get(k) != self.config.get(k))
                raise OutputExists(
                    f"an interrupted run with another config is in {self.partial} (differs in: {', '.join(diff) or 'unknown'}); "
                    "pass --overwrite to discard it"
                )
            elif not resume:
                raise OutputExists(
                    f"an interrupted run of this config is in {self.partial}; pass --resume to continue it or --overwrite to start over"
                )
            else:
                self.resumed = True
                self._remove_temp_files()  # the killed run's unfinished files: nobody else writes here (the lock)
        with writing(self.partial, kept=f"{self.out} is unchanged"):
            self.partial.mkdir(parents=True, exist_ok=True)
        if not state.is_file():
            atomic_write_bytes(state, json.dumps({"kind": self.kind, "config_sha256": self.config_sha, "config": self.config}).encode())

    def _remove_temp_files(self) -> None:
        for p in list(self.partial.rglob(".*")):
            if _is_temp(p):
                remove_path(p)

    # --- parts
    def path(self, name: str) -> Path:
        return self.partial / name

    def has(self, name: str) -> bool:
        return (self.partial / name).is_file()

    def write(self, name: str, table: pa.Table, compression: str | None = None) -> None:
        write_arrow(self.partial / name, table, compression)

    def remove(self, name: str) -> None:
        p = self.partial / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    def finish(self, figures: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
        """Write manifest.json last and swap the finished directory into place."""
        self._remove_temp_files()
        files = []
        for fp in sorted(self.partial.rglob("*")):
            parts = fp.relative_to(self.partial).parts
            # hidden files and everything in a hidden directory (a temp or renamed-aside copy) are no part of it
            if not fp.is_file() or fp.name in (RUN_STATE, MANIFEST) or any(p.startswith(".") for p in parts):
                continue
            rel = fp.relative_to(self.partial).as_posix()
            rows = None
            if fp.suffix == ".arrow":
                with pa.memory_map(str(fp), "r") as src:  # one column: row counts without decompressing the rest
                    r = ipc.open_file(src, options=ipc.IpcReadOptions(included_fields=[0]))
                    rows = sum(r.get_batch(i).num_rows for i in range(r.num_record_batches))
            files.append({"name": rel, "rows": rows, "bytes": fp.stat().st_size, "sha256": sha256_file(fp)})
        manifest = {
            "kind": self.kind,
            "schema_version": SCHEMA_VERSION,
            "distillkit_version": __version__,
            "git_commit": git_commit(),
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": self.config,
            "config_sha256": self.config_sha,
            "inputs": self.inputs,
            "files": files,
            "libraries": library_versions(),
            "figures": figures or {},
            **(extra or {}),
        }
        atomic_write_bytes(self.partial / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode())
        (self.partial / RUN_STATE).unlink(missing_ok=True)
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.partial, self.out)
        if old is not None:
            remove_path(old)
        self.close()
        return self.out


# Files up to this size are re-hashed when a complete artifact is about to be reused; larger ones (model weights,
# top-k parts) only have their size checked, so that an idempotent re-run stays cheap. Readers hash what they read.
VERIFY_SHA_MAX_BYTES = 64 << 20


def verify_files(path: Path, files: list[dict[str, Any]]) -> str | None:
    """What is wrong with the files of the artifact at `path` against its manifest's `files`: None when nothing."""
    for f in files:
        try:
            name, size = f["name"], f["bytes"]
        except (KeyError, TypeError):
            return f"{MANIFEST} has a malformed files entry"
        fp = artifact_file(path, name)
        if not fp.is_file():
            return f"{name} is missing"
        actual = fp.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes, {MANIFEST} records {size}"
        if actual <= VERIFY_SHA_MAX_BYTES and f.get("sha256") and sha256_file(fp) != f["sha256"]:
            return f"{name} was modified after it was written: its sha256 differs from {MANIFEST}"
    return None


def _short(v: Any, n: int = 40) -> str:
    text = json.dumps(v, ensure_ascii=False, default=str) if not isinstance(v, str) else v
    return text if len(text) <= n else text[: n - 3] + "..."
