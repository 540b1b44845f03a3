"""Training data: read a file or directory into one normalized, split Arrow table.

Inputs. A file: ``.jsonl``/``.json`` (JSON lines or one JSON list of objects), ``.parquet``,
``.arrow``/``.feather``/``.ipc`` (Arrow IPC file or stream), ``.csv`` (read as strings, so an id
``007`` survives), ``.txt``/``.md``. A Hugging Face ``save_to_disk`` directory: a Dataset, or a
DatasetDict (its "train" split if it has one, else all splits). Any other directory, skipping names
that start with "." or "_": each top-level data file is a domain named by its stem (``news.jsonl``
-> "news"); each top-level ``.txt``/``.md`` file is a domain named by its stem whose documents are
separated by blank lines (lines holding only whitespace), each stripped; each sub-folder is a domain
named by the folder, in which every ``.txt``/``.md`` file (at any depth) is one whole document and
data files contribute their records; other files are ignored.

Records. A ``text`` column makes "text" data, ``prompt`` + ``response`` columns "instruction" data
(preferred when a file has both); names follow `DataSpec`; a data set has one format. The domain is
the ``domain_field`` column (or a column named "domain"), else (also for null/empty values and text
files) the file/folder name. ``sample_id`` is the id column (``id_field``, or a column named "id") as
a string, else the first 16 hex chars of sha256(content), content being the text or prompt + "\\x1f"
+ response, so the same records get the same ids in any format.

Cleaning, splits, order. Records with a null or blank text (or response) are dropped, and so are
records repeating an earlier one's content (read order, whole data set); both are counted. In each
domain, records are ranked by sha256(f"{seed}:{sample_id}"): `max_per_domain` keeps the first ones,
and the first min(val_size, ceil(val_fraction * n)) of those (at least 1, at most n - 1, when n >= 2)
are the "validation" split -- the *test* slice, which only reports read (the name is kept so that older
artifacts read the same). The next min(dev_size, n - n_validation - 1) records (at least one record stays
for training) are the "dev" split, which every decision made during a run reads (DDK's re-measurement, the
early check); the rest are "train". dev_size = 0 (the default) gives the two-way split of older versions, row
for row. Rows come out sorted by (domain, sample_id), whatever the read order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.json as pj
import pyarrow.parquet as pq

from distillkit.errors import ConfigError, DataError

from distillkit.data_options import DataOptions, DataSpec, Format  # noqa: F401  (re-exported)

DATA_EXTS = (".jsonl", ".json", ".parquet", ".arrow", ".feather", ".ipc", ".csv")
TEXT_EXTS = (".txt", ".md")
COLUMNS = ("sample_id", "domain", "split", "text", "prompt", "response")
TEST = "validation"  # the held-out slice reports read (named "validation" since the first schema)
DEV = "dev"  # the held-out slice in-run decisions read
TRAIN = "train"
SCHEMA = pa.schema([(c, pa.string()) for c in COLUMNS])
_SEP = "\x1f"  # joins prompt and response (and fingerprint fields): a control char real text lacks


@dataclass(frozen=True)
class Dataset:
    """A loaded data set. `table` has the string columns `COLUMNS`, sorted by (domain, sample_id)."""

    table: pa.Table
    format: Format
    fingerprint: str  # sha256 over (sample_id, domain, split, sha256(content)) of every row, in order
    sources: tuple[str, ...]  # files (and save_to_disk directories) read
    dropped_empty: int = 0  # records with a null or blank text (response, for instruction data)
    dropped_duplicates: int = 0  # records whose content repeats an earlier record's

    def heldout(self, domain: str, limit: int | None = None, split: str = TEST) -> pa.Table:
        """`domain`'s rows of `split` (the test slice by default) in the table's order (by sample_id), the first
        `limit` of them: test is what train's before/after report and eval read, dev what DDK's re-measurement
        and the early check read."""
        t = self.table
        rows = t.filter(pc.and_(pc.equal(t.column("split"), split), pc.equal(t.column("domain"), domain)))
        return rows if limit is None else rows.slice(0, limit)

    @property
    def has_dev(self) -> bool:
        """Whether any domain has dev rows (score --dev-size)."""
        return bool(pc.any(pc.equal(self.table.column("split"), DEV)).as_py())

    @property
    def heldout_domains(self) -> list[str]:
        """The domains that have validation rows, sorted."""
        t = self.table
        return sorted(set(t.filter(pc.equal(t.column("split"), "validation")).column("domain").to_pylist()))


@dataclass
class _Part:
    """Raw records from one source, before normalization."""

    sources: list[str]
    table: pa.Table
    domain: str  # the file/folder-derived domain
    text_files: bool = False  # documents from .txt/.md files: no id or domain columns

    @property
    def columns(self) -> list[str]:
        return self.table.column_names


def load_data(spec: DataSpec) -> Dataset:
    """Read `spec.path` into a cleaned, split `Dataset` (the rules are in the module docstring)."""
    _check_spec(spec)
    path = Path(spec.path)
    if not path.exists():
        hint = f"; {path.parent} holds: {_some(path.parent, 10)}" if path.parent.is_dir() else ""
        raise DataError(f"data path does not exist: {path} (pass an existing file or directory to --data{hint})")
    parts = _read_path(path)
    sources = tuple(s for p in parts for s in p.sources)
    # A part without columns is an empty file: it has no format to agree or disagree with.
    fmt = _detect_format([p for p in parts if p.columns], spec)
    if fmt is None:
        raise DataError(f"empty dataset: no records in {_some(sources, 5)} (check the files hold data)")
    t = pa.concat_tables([_normalize(p, spec, fmt) for p in parts if p.columns])
    stray = _stray_text(parts, spec, fmt)
    before = t
    t, digests, dropped_empty, dropped_dup = _drop_empty_and_duplicates(t, fmt)
    if t.num_rows == 0:
        raise DataError(
            f"empty dataset: 0 usable records in {_some(sources, 5)} ({dropped_empty} with an empty "
            f"{'text' if fmt == 'text' else 'response'}, {dropped_dup} duplicates; check --text-field/--response-field)"
        )
    if dropped_empty and spec.on_bad_rows == "error":
        raise DataError(_bad_rows_message(before, fmt, dropped_empty, stray, spec))
    digest_hex = _hex(digests)
    sample_id = pc.coalesce(t["id"], pc.utf8_slice_codeunits(digest_hex, 0, 16))
    _check_unique_ids(sample_id, spec)
    keys = _sha256(pc.binary_join_element_wise(f"{spec.seed}:", sample_id, ""))
    keep, val, dev = _subsample_and_split(t["domain"], keys, spec)
    t = t.drop_columns(["id"]).append_column("sample_id", sample_id).append_column("_digest", digest_hex)
    split = np.where(val, TEST, np.where(dev, DEV, TRAIN)).astype(object)
    t = t.append_column("split", pa.array(split, pa.string()))
    t = t if keep.all() else t.filter(pa.array(keep))
    # Arrow's take (in sort_by) is ~10x faster on one chunk; over 2 GiB of strings cannot be one chunk.
    t = (t.combine_chunks() if t.nbytes < 1 << 31 else t).sort_by([("domain", "ascending"), ("sample_id", "ascending")])
    table = t.select(list(COLUMNS)).cast(SCHEMA)
    return Dataset(table, fmt, _fingerprint(t, fmt), sources, dropped_empty, dropped_dup)


def shard_rows(n: int, shard: int, num_shards: int) -> range:
    """Rows of shard `shard` of `num_shards`: contiguous, sizes differ by at most one, union is range(n)."""
    if num_shards < 1 or not 0 <= shard < num_shards or n < 0:
        raise ConfigError(f"--shard i/n needs 0 <= i < n, got {shard}/{num_shards}")
    return range(shard * n // num_shards, (shard + 1) * n // num_shards)


def _check_spec(spec: DataSpec) -> None:
    problems = spec.validate()
    if problems:
        raise ConfigError("; ".join(problems))


def _detect_format(parts: list[_Part], spec: DataSpec) -> Format | None:
    """The one format all parts share; instruction wins within a part that has both."""
    found: dict[Format, str] = {}
    for p in parts:
        if spec.prompt_field in p.columns and spec.response_field in p.columns:
            found.setdefault("instruction", p.sources[0])
        elif spec.text_field in p.columns:
            found.setdefault("text", p.sources[0])
        else:
            raise DataError(
                f"no text column in {p.sources[0]}: expected {spec.text_field!r} (set --text-field) or "
                f"{spec.prompt_field!r} + {spec.response_field!r} (set --prompt-field/--response-field); "
                f"columns: {_some(p.columns)}"
            )
    if len(found) > 1:
        raise DataError(
            f"mixed record formats: {found['text']} holds text records but {found['instruction']} holds "
            "prompt/response records (use one format per data set)"
        )
    return next(iter(found), None)


def _check_unique_ids(sample_id: pa.ChunkedArray, spec: DataSpec) -> None:
    counts = pc.value_counts(sample_id)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        some, times = dup[0]["values"].as_py(), dup[0]["counts"].as_py()
        raise DataError(
            f"duplicate sample id {some!r}: {times} records share it ({len(dup)} duplicated ids in all) in id column "
            f"{spec.id_field or 'id'!r} (make the ids unique, or set --id-field to a unique column)"
        )


def _normalize(p: _Part, spec: DataSpec, fmt: Format) -> pa.Table:
    null = pa.nulls(p.table.num_rows, pa.string())
    if fmt == "text":
        text, prompt, response = _strings(p, spec.text_field, "--text-field"), null, null
    else:
        text = null
        prompt = pc.fill_null(_strings(p, spec.prompt_field, "--prompt-field"), "")
        response = _strings(p, spec.response_field, "--response-field")
    ids, domain = null, null
    if not p.text_files:
        if id_col := _pick_column(p, spec.id_field, "id", "--id-field"):
            ids = _blank_to_null(_strings(p, id_col, "--id-field"))
        if domain_col := _pick_column(p, spec.domain_field, "domain", "--domain-field"):
            domain = _blank_to_null(_strings(p, domain_col, "--domain-field"))
    domain = pc.fill_null(domain, p.domain)
    return pa.table({"id": ids, "domain": domain, "text": text, "prompt": prompt, "response": response})


def _pick_column(p: _Part, explicit: str | None, default: str, option: str) -> str | None:
    if explicit is None:
        return default if default in p.columns else None
    if explicit not in p.columns:
        fallback = "the file/folder name" if default == "domain" else "a content hash"
        raise DataError(
            f"unknown {default} field {explicit!r} in {p.sources[0]} (set {option} to one of the columns, "
            f"or leave it unset to use {fallback}); columns: {_some(p.columns)}"
        )
    return explicit


def _strings(p: _Part, name: str, option: str) -> pa.ChunkedArray:
    """Column `name` as strings; numbers and booleans are converted for ids and domains, refused for the text
    columns (a number scored as text is a wrong column, not text); nested values refused."""
    col = p.table[name]
    if option in ("--text-field", "--prompt-field", "--response-field") and not (
            pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
        raise DataError(f"column {name!r} in {p.sources[0]} holds {col.type} values, not text (set {option} to a text "
                        f"column, or convert the column to strings); columns: {_some(p.columns)}")
    try:
        if not pa.types.is_nested(col.type):
            return col if pa.types.is_string(col.type) else col.cast(pa.string())
    except pa.ArrowException:
        pass
    raise DataError(
        f"column {name!r} in {p.sources[0]} holds {col.type} values, not strings "
        f"(set {option} to a string column); columns: {_some(p.columns)}"
    )


def _blank_to_null(col: pa.ChunkedArray) -> pa.ChunkedArray:
    # A missing id/domain is often written as "" (CSV, spreadsheets): treat it like null.
    return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)


def _stray_text(parts: list[_Part], spec: DataSpec, fmt: Format) -> int:
    """Prompt/response data: records that hold a `text` value but no response (text and prompt/response records
    mixed in one file)."""
    if fmt != "instruction":
        return 0
    n = 0
    for p in parts:
        if spec.text_field in p.columns and spec.response_field in p.columns:
            text, resp = p.table[spec.text_field], p.table[spec.response_field]
            n += int(pc.sum(pc.and_(pc.is_valid(text), pc.is_null(resp))).as_py() or 0)
    return n


def _bad_rows_message(t: pa.Table, fmt: Format, n: int, stray: int, spec: DataSpec) -> str:
    """One line naming the records with an empty text/response and the two ways out."""
    main = t["text"] if fmt == "text" else t["response"]
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(main), ""), True).to_numpy(zero_copy_only=False)
    where = np.flatnonzero(empty)[:3]
    ids, doms = t["id"].to_pylist(), t["domain"].to_pylist()
    shown = ", ".join(f"record {i + 1} (domain {doms[i]!r}" + (f", id {ids[i]!r})" if ids[i] is not None else ")") for i in where)
    what = "text" if fmt == "text" else "response"
    mixed = (f"; {stray} of them hold a {spec.text_field!r} value instead: text and prompt/response records are mixed "
             "in one file (use one format per data set)") if stray else ""
    return (f"{n} record(s) have an empty or null {what} (e.g. {shown}){mixed}: fix or remove them, or pass "
            "--on-bad-rows skip to drop them (the count is printed and recorded)")


def _drop_empty_and_duplicates(t: pa.Table, fmt: Format) -> tuple[pa.Table, np.ndarray, int, int]:
    """Drop blank records, then repeated contents; return the rows' content sha256 as (n, 32) uint8."""
    main = t["text"] if fmt == "text" else t["response"]
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(main), ""), True)
    n_empty = int(pc.sum(empty).as_py() or 0)
    t = t.filter(pc.invert(empty)) if n_empty else t
    content = t["text"] if fmt == "text" else pc.binary_join_element_wise(t["prompt"], t["response"], _SEP)
    digests = _sha256(content)
    # Keep each content's first row: rows fed backwards, the earliest index is written last.
    view = digests.view("V32").ravel()
    first = dict(zip(view[::-1].tolist(), range(len(view) - 1, -1, -1)))
    n_dup = len(view) - len(first)
    if n_dup:
        unique = np.zeros(len(view), bool)
        unique[np.fromiter(first.values(), np.int64, len(first))] = True
        t, digests = t.filter(pa.array(unique)), digests[unique]
    return t, digests, n_empty, n_dup


def _sha256(strings: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """sha256 of each string as an (n, 32) uint8 array. The one Python loop over rows (~1 s/million)."""
    sha = hashlib.sha256
    # Binary values come out as bytes: no UTF-8 decode and re-encode per row.
    joined = b"".join([sha(b).digest() for b in strings.cast(pa.binary()).to_pylist()])
    return np.frombuffer(joined, np.uint8).reshape(-1, 32)


def _hex(raw: np.ndarray) -> pa.Array:
    """Rows of bytes as lowercase hex strings, without a Python loop."""
    pairs = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2")
    hexed = np.ascontiguousarray(pairs[raw]).view(f"S{2 * raw.shape[1]}").ravel()
    return pa.array(hexed, pa.binary()).cast(pa.string())


def _subsample_and_split(domain: pa.ChunkedArray, key: np.ndarray, spec: DataSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank each domain's rows by `key` (sha256 bytes); return (kept, validation, dev) masks in row order."""
    codes = pc.dictionary_encode(domain.combine_chunks()).indices.to_numpy(zero_copy_only=False)
    k = key[:, :16].copy().view(">u8")  # big-endian words of the first 128 bits order like the hex digest
    order = np.lexsort((k[:, 1], k[:, 0], codes))
    counts = np.bincount(codes)
    rank = np.empty(len(codes), np.int64)
    rank[order] = np.arange(len(codes)) - np.repeat(np.cumsum(counts) - counts, counts)
    size = counts if spec.max_per_domain is None else np.minimum(counts, spec.max_per_domain)
    # round() first: 0.1 * 30 must give 3 validation records, never ceil(3.0000000000000004) = 4.
    n_val = np.minimum(spec.val_size, np.ceil(np.round(spec.val_fraction * size, 6))).astype(np.int64)
    n_val = np.where(size >= 2, np.clip(n_val, 1 if spec.val_size and spec.val_fraction else 0, size - 1), 0)
    n_dev = np.clip(np.minimum(spec.dev_size, size - n_val - 1), 0, None)
    val = rank < n_val[codes]
    return rank < size[codes], val, ~val & (rank < (n_val + n_dev)[codes])


def _fingerprint(t: pa.Table, fmt: Format) -> str:
    # Content enters through its sha256, already computed. Every row ends with the separator, so
    # hashing Arrow's data buffer keeps row boundaries without a Python loop.
    h = hashlib.sha256(f"distillkit-data-v1:{fmt}\n".encode())
    rows = pc.binary_join_element_wise(t["sample_id"], t["domain"], t["split"], t["_digest"], "", _SEP)
    for chunk in (c for c in rows.chunks if len(c)):
        offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
        h.update(memoryview(chunk.buffers()[2])[offsets[0] : offsets[-1]])
    return h.hexdigest()


def _read_path(path: Path) -> list[_Part]:
    if path.is_file():
        if (part := _read_file(path)) is None:
            raise DataError(
                f"unsupported data file extension {path.suffix or '(none)'!r}: {path} (supported: "
                f"{', '.join(DATA_EXTS + TEXT_EXTS)}, a save_to_disk directory, or a folder of such files)"
            )
        return [part]
    if _is_hf_dir(path):
        return _read_hf(path, path.name)
    parts: list[_Part] = []
    for entry in _entries(path):
        parts += _read_folder(entry, entry.name) if entry.is_dir() else [p for p in [_read_file(entry)] if p]
    if not parts:
        raise DataError(
            f"no readable data in directory {path}: it holds {_some(path, 10)} (add files ending in "
            f"{', '.join(DATA_EXTS + TEXT_EXTS)} or sub-folders of them, or pass a save_to_disk directory)"
        )
    return parts


def _read_file(path: Path) -> _Part | None:
    """A data file or a blank-line separated text file: one domain named by its stem (None: not data)."""
    if path.suffix.lower() in DATA_EXTS:
        return _Part([str(path)], _read_table(path), path.stem)
    if path.suffix.lower() in TEXT_EXTS:
        docs = [d.strip() for d in re.split(r"\n[ \t\r\f\v]*\n", _read_text(path))]
        return _Part([str(path)], pa.table({"text": pa.array([d for d in docs if d], pa.string())}), path.stem, True)
    return None


def _read_folder(folder: Path, domain: str) -> list[_Part]:
    """A sub-folder of the data directory, at any depth: all of it is domain `domain`."""
    if _is_hf_dir(folder):
        return _read_hf(folder, domain)
    parts: list[_Part] = []
    texts: dict[str, str] = {}
    for entry in _entries(folder):
        if entry.is_dir():
            parts += _read_folder(entry, domain)
        elif entry.suffix.lower() in DATA_EXTS:
            parts.append(_Part([str(entry)], _read_table(entry), domain))
        elif entry.suffix.lower() in TEXT_EXTS:
            texts[str(entry)] = _read_text(entry)
    if texts:
        parts.append(_Part(list(texts), pa.table({"text": pa.array(list(texts.values()), pa.string())}), domain, True))
    return parts


def _entries(folder: Path) -> list[Path]:
    # Skip hidden files and tool droppings ("_SUCCESS", "__pycache__", ".DS_Store").
    return sorted((e for e in folder.iterdir() if not e.name.startswith((".", "_"))), key=lambda e: e.name)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"text file {path} is not UTF-8 ({e.reason} at byte {e.start}); convert it to UTF-8") from None


def _read_table(path: Path) -> pa.Table:
    """One data file as an Arrow table; every reader failure becomes a one-line DataError."""
    kinds = {".jsonl": "JSON", ".json": "JSON", ".csv": "CSV", ".parquet": "Parquet"}
    kind = kinds.get(path.suffix.lower(), "Arrow IPC")
    reader = {"JSON": _read_json, "CSV": _read_csv, "Parquet": pq.read_table}.get(kind, _read_ipc)
    try:
        return reader(path)
    except DataError:
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError) as e:
        raise DataError(f"cannot read {path} as {kind}: {_first_line(e)} (fix or re-export the file)") from None


def _read_json(path: Path) -> pa.Table:
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    if not head:
        return pa.table({})
    if head[0] != "[":
        size = min(max(path.stat().st_size + 1, 1 << 20), 1 << 28)  # a block must hold whole lines
        try:
            table = pj.read_json(str(path), read_options=pj.ReadOptions(block_size=size))
            # Arrow reads date-like strings as timestamps, which would rewrite such a text: use Python then.
            if not any(pa.types.is_timestamp(f.type) for f in table.schema):
                return table
        except pa.ArrowInvalid:
            pass  # e.g. a field that is a number in one row and a string in another
    with open(path, encoding="utf-8-sig") as f:
        rows = json.load(f) if head[0] == "[" else [_json_line(s, i, path) for i, s in enumerate(f, 1) if s.strip()]
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"cannot read {path}: it must hold JSON objects, one per record (JSON lines or a list)")
    return pa.table({k: _json_column([r.get(k) for r in rows]) for k in dict.fromkeys(k for r in rows for k in r)})


def _json_line(line: str, number: int, path: Path) -> object:
    try:
        return json.loads(line)
    except ValueError as e:
        raise DataError(f"cannot read {path} as JSON lines: line {number}: {e} (fix the file)") from None


def _json_column(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed types in one field (ids 1 and "1a"): keep the strings, write the other values as JSON.
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())


def _read_csv(path: Path) -> pa.Table:
    with open(path, encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        return pa.table({})
    # All columns as strings: type inference would turn the id "007" into 7 and the text "1" into an int.
    as_strings = pcsv.ConvertOptions(column_types={h: pa.string() for h in header})
    return pcsv.read_csv(path, parse_options=pcsv.ParseOptions(newlines_in_values=True), convert_options=as_strings)


def _read_ipc(path: Path) -> pa.Table:
    with pa.memory_map(str(path), "r") as src:
        try:
            return ipc.open_file(src).read_all()
        except pa.ArrowInvalid:  # not the file format: the stream format has no footer
            src.seek(0)
            return ipc.open_stream(src).read_all()


def _is_hf_dir(path: Path) -> bool:
    present = {f for f in ("dataset_dict.json", "state.json", "dataset_info.json") if (path / f).is_file()}
    return "dataset_dict.json" in present or {"state.json", "dataset_info.json"} <= present


def _read_hf(path: Path, domain: str) -> list[_Part]:
    """A save_to_disk directory: a Dataset, or a DatasetDict's "train" split (else all its splits)."""
    try:
        import datasets  # here, not at the top: slow to import, and only these directories need it
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - any loader failure is a one-line data error
        raise DataError(f"cannot load save_to_disk directory {path}: {_first_line(e)}") from None
    if isinstance(ds, datasets.DatasetDict):
        names = ["train"] if "train" in ds else sorted(ds)
        return [_Part([f"{path}[{s}]"], ds[s].with_format("arrow")[:], domain) for s in names]
    return [_Part([str(path)], ds.with_format("arrow")[:], domain)]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _some(items: list[str] | tuple[str, ...] | Path, limit: int = 20) -> str:
    """'a, b, c and 7 more': what exists (the names, or a folder's entries), short enough for one line."""
    if isinstance(items, Path):
        items = sorted(e.name + ("/" if e.is_dir() else "") for e in items.iterdir())
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more if items else "nothing"


# --- tokenization: score, train and eval turn the same rows into the same token sequences -------------


@dataclass
class Samples:
    """Tokenized samples: targets are ids[target_start:] (predicted from the tokens before them)."""

    sample_id: list[str]
    domain: list[str]
    split: list[str]
    ids: list[list[int]]
    target_start: list[int]
    responses: list[str] | None
    dropped: int

    def __len__(self) -> int:
        return len(self.ids)


def uses_chat_template(chat_template: str, tok, fmt: str) -> bool:
    """Whether prompts are wrapped in the tokenizer's chat template: prompt/response data, chat_template = "auto"
    and a tokenizer that has one."""
    return fmt == "instruction" and chat_template == "auto" and bool(getattr(tok, "chat_template", None))


def prompt_token_ids(prompts: list[str], tok, chat: bool) -> list[list[int]]:
    """Each prompt's token ids: as the data gives it, or (`chat`) as one user turn of the tokenizer's chat
    template followed by the assistant header (what the model sees before it answers)."""
    if not chat:
        return tok(prompts)["input_ids"]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    return tok(texts, add_special_tokens=False)["input_ids"]


def tokenize(rows: pa.Table, fmt: str, tok, max_length: int, chat: bool = False) -> Samples:
    """Token ids of each row, at most `max_length`: text rows are scored from their second token;
    prompt/response rows keep at most half of `max_length` for the prompt (its end) and score only the
    response and EOS. With `chat` (`uses_chat_template`) the prompt is a user turn of the chat template and
    the response, its leading whitespace stripped, the assistant's answer. Rows left with no target token are
    dropped (counted in `dropped`)."""
    sid, dom, spl = (rows.column(c).to_pylist() for c in ("sample_id", "domain", "split"))
    keep: list[int] = []
    ids: list[list[int]] = []
    starts: list[int] = []
    if fmt == "instruction":
        prompts = prompt_token_ids(rows.column("prompt").to_pylist(), tok, chat)
        resp_text = rows.column("response").to_pylist()
        resps = tok([r.lstrip() for r in resp_text] if chat else resp_text, add_special_tokens=False)["input_ids"]
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        for i, (p, r) in enumerate(zip(prompts, resps)):
            p = p[-(max_length // 2) :] if len(p) > max_length // 2 else p  # keep room for the answer
            seq = (p + r + eos)[:max_length]
            if len(p) == 0 or len(seq) <= len(p):
                continue
            keep.append(i)
            ids.append(seq)
            starts.append(len(p))
    else:
        enc = tok(rows.column("text").to_pylist())["input_ids"]
        for i, seq in enumerate(enc):
            seq = seq[:max_length]
            if len(seq) < 2:
                continue
            keep.append(i)
            ids.append(seq)
            starts.append(1)
    return Samples(
        sample_id=[sid[i] for i in keep],
        domain=[dom[i] for i in keep],
        split=[spl[i] for i in keep],
        ids=ids,
        target_start=starts,
        responses=[resp_text[i] for i in keep] if fmt == "instruction" else None,
        dropped=rows.num_rows - len(keep),
    )
