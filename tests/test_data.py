"""distillkit.data: every input format, format detection, ids, domains, splits, dedupe, errors."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from distillkit.data import COLUMNS, Dataset, DataSpec, load_data, shard_rows, tokenize
from distillkit.errors import ConfigError, DataError
from tests.conftest import make_texts, write_jsonl


def unique_texts(n: int, seed: int = 0) -> list[str]:
    # make_texts can repeat a sentence; a numbered prefix keeps the records distinct (no dedupe surprises).
    return [f"{i}: {t}" for i, t in enumerate(make_texts(n, seed=seed, max_words=12))]


def _rows(n: int = 30, seed: int = 0, domains: tuple[str, ...] = ("alpha", "beta")) -> list[dict]:
    return [{"text": t, "domain": domains[i % len(domains)]} for i, t in enumerate(unique_texts(n, seed))]


def load(path: Path, **kw) -> Dataset:
    return load_data(DataSpec(str(path), **kw))


def col(ds: Dataset, name: str) -> list:
    return ds.table.column(name).to_pylist()


def content_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- formats --------------------------------------------------------------------------------------


def _write_all_formats(tmp: Path, rows: list[dict]) -> dict[str, Path]:
    table = pa.Table.from_pylist(rows)
    out = {"jsonl": write_jsonl(tmp / "jsonl" / "corpus.jsonl", rows)}
    (tmp / "json").mkdir()
    out["json"] = tmp / "json" / "corpus.json"
    out["json"].write_text(json.dumps(rows, indent=1))
    kinds = (("parquet", "parquet"), ("arrow", "arrow"), ("feather", "feather"), ("stream", "ipc"), ("csv", "csv"))
    for kind, ext in kinds:
        (tmp / kind).mkdir()
        out[kind] = p = tmp / kind / f"corpus.{ext}"
        if kind == "parquet":
            pq.write_table(table, p)
        elif kind == "arrow":
            with ipc.new_file(str(p), table.schema) as w:
                w.write_table(table)
        elif kind == "feather":
            feather.write_feather(table, p)
        elif kind == "stream":
            with ipc.new_stream(str(p), table.schema) as w:
                w.write_table(table)
        else:
            pcsv.write_csv(table, p)
    return out


@pytest.mark.parametrize("with_ids", [False, True])
def test_every_file_format_gives_the_same_dataset(tmp_path, with_ids):
    rows = [{"id": 100 + i, **r} if with_ids else r for i, r in enumerate(_rows(30))]
    files = _write_all_formats(tmp_path, rows)
    loaded = {kind: load(p) for kind, p in files.items()}
    ref = loaded["jsonl"]
    assert ref.format == "text" and ref.table.num_rows == 30
    assert ref.table.column_names == list(COLUMNS)
    assert all(ref.table.schema.field(c).type == pa.string() for c in COLUMNS)
    expected_ids = [str(r["id"]) if with_ids else content_id(r["text"]) for r in rows]
    assert sorted(col(ref, "sample_id")) == sorted(expected_ids)
    for kind, ds in loaded.items():
        assert ds.table.equals(ref.table), kind
        assert ds.fingerprint == ref.fingerprint, kind
        assert ds.sources == (str(files[kind]),)


def test_file_without_domain_column_uses_the_stem(tmp_path):
    p = write_jsonl(tmp_path / "wiki.jsonl", [{"text": t} for t in unique_texts(5)])
    ds = load(p)
    assert set(col(ds, "domain")) == {"wiki"}
    assert col(ds, "prompt") == [None] * 5 and col(ds, "response") == [None] * 5


def _hf_dataset(rows):
    datasets = pytest.importorskip("datasets")
    return datasets, datasets.Dataset.from_list(rows)


def test_save_to_disk_dataset_and_datasetdict(tmp_path):
    datasets, ds = _hf_dataset([{"text": t} for t in unique_texts(12)])
    ds.save_to_disk(str(tmp_path / "plain"))
    got = load(tmp_path / "plain")
    assert got.table.num_rows == 12 and set(col(got, "domain")) == {"plain"}

    extra = datasets.Dataset.from_list([{"text": t} for t in unique_texts(4, seed=9)])
    datasets.DatasetDict({"train": ds, "test": extra}).save_to_disk(str(tmp_path / "dd"))
    assert load(tmp_path / "dd").table.num_rows == 12  # the "train" split only

    datasets.DatasetDict({"a": ds, "b": extra}).save_to_disk(str(tmp_path / "nosplit"))
    both = load(tmp_path / "nosplit")
    assert both.table.num_rows == 16 and len(both.sources) == 2  # no "train": all splits


def test_text_folder_tree(tmp_path):
    root = tmp_path / "corpus"
    (root / "code" / "deep").mkdir(parents=True)
    (root / "code" / "a.txt").write_text("first doc\n\nstill the first doc (whole file)\n")
    (root / "code" / "deep" / "b.md").write_text("second doc")
    (root / "code" / "notes.pdf").write_text("ignored")
    write_jsonl(root / "code" / "more.jsonl", [{"text": "from a data file"}])
    (root / "quotes.txt").write_text("one\nline two\n\n  \n\ntwo\n\n\nthree  \n")
    write_jsonl(root / "web.jsonl", [{"text": "web 1"}, {"text": "web 2"}])
    (root / ".hidden.txt").write_text("skipped")
    (root / "_SUCCESS").write_text("")
    ds = load(root)
    by_domain: dict[str, set] = {}
    for d, t in zip(col(ds, "domain"), col(ds, "text")):
        by_domain.setdefault(d, set()).add(t)
    assert by_domain == {
        "code": {"first doc\n\nstill the first doc (whole file)\n", "second doc", "from a data file"},
        "quotes": {"one\nline two", "two", "three"},
        "web": {"web 1", "web 2"},
    }
    assert not any("hidden" in s or "notes" in s for s in ds.sources)
    assert len(ds.sources) == 5


def test_instruction_detection_and_custom_fields(tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"a{i}", "text": "ignored"} for i in range(10)]
    ds = load(write_jsonl(tmp_path / "sft.jsonl", rows))
    assert ds.format == "instruction"  # prompt + response win over text
    assert col(ds, "text") == [None] * 10
    assert sorted(col(ds, "sample_id")) == sorted(content_id(f"q{i}\x1fa{i}") for i in range(10))

    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    ds = load(write_jsonl(tmp_path / "qa.jsonl", rows), prompt_field="question", response_field="answer")
    assert ds.format == "instruction" and sorted(col(ds, "prompt")) == sorted(f"q{i}" for i in range(10))

    ds = load(write_jsonl(tmp_path / "body.jsonl", [{"body": "x"}, {"body": "y"}]), text_field="body")
    assert ds.format == "text" and sorted(col(ds, "text")) == ["x", "y"]


# --- ids, domains, dedupe -------------------------------------------------------------------------


def test_id_column_and_id_field(tmp_path):
    rows = [{"id": i, "uid": f"u-{i:03d}", "text": t} for i, t in enumerate(unique_texts(8))]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    assert sorted(col(load(p), "sample_id"), key=int) == [str(i) for i in range(8)]
    assert sorted(col(load(p, id_field="uid"), "sample_id")) == [f"u-{i:03d}" for i in range(8)]
    # CSV is read as strings: a leading zero survives
    pcsv.write_csv(pa.table({"id": ["007", "008"], "text": ["a", "b"]}), tmp_path / "c.csv")
    assert sorted(col(load(tmp_path / "c.csv"), "sample_id")) == ["007", "008"]


def test_content_hash_ids_are_stable_and_order_is_sorted(tmp_path):
    rows = _rows(20)
    a = load(write_jsonl(tmp_path / "a" / "x.jsonl", rows))
    b = load(write_jsonl(tmp_path / "b" / "x.jsonl", rows[::-1]))  # read order does not matter
    assert a.table.equals(b.table) and a.fingerprint == b.fingerprint
    keys = list(zip(col(a, "domain"), col(a, "sample_id")))
    assert keys == sorted(keys)
    c = load(tmp_path / "a" / "x.jsonl", seed=1)
    assert c.fingerprint != a.fingerprint  # another seed, another split


def test_domain_field_and_null_domains(tmp_path):
    rows = [{"text": t, "topic": ["news", "code", None][i % 3]} for i, t in enumerate(unique_texts(9))]
    ds = load(write_jsonl(tmp_path / "mix.jsonl", rows), domain_field="topic")
    assert sorted(set(col(ds, "domain"))) == ["code", "mix", "news"]  # null -> file stem


def test_dedupe_and_empty_records(tmp_path):
    """Empty or null texts are an error naming them unless --on-bad-rows skip, which drops and counts them."""
    rows = [{"text": "same"}, {"text": "other"}, {"text": "same"}, {"text": ""}, {"text": "  \n"}, {"text": None}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"3 record\(s\) have an empty or null text \(e.g. record 4 .*--on-bad-rows skip"):
        load(path)
    ds = load(path, on_bad_rows="skip")
    assert sorted(col(ds, "text")) == ["other", "same"]
    assert ds.dropped_duplicates == 1 and ds.dropped_empty == 3


def test_mixed_text_and_prompt_response_records_in_one_file_are_named(tmp_path):
    rows = [{"prompt": "q", "response": "a", "domain": "qa"}, {"text": "plain text", "domain": "web"}]
    with pytest.raises(DataError, match=r"1 of them hold a 'text' value instead: text and prompt/response records are mixed"):
        load(write_jsonl(tmp_path / "m.jsonl", rows))


def test_a_numeric_text_column_is_refused_not_scored_as_a_string(tmp_path):
    with pytest.raises(DataError, match=r"column 'text' in .* holds int64 values, not text"):
        load(write_jsonl(tmp_path / "n.jsonl", [{"text": 5}, {"text": 7}]))


def test_duplicate_ids_are_refused(tmp_path):
    rows = [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}, {"id": "y", "text": "c"}, {"id": "x", "text": "a"}]
    with pytest.raises(DataError, match=r"duplicate sample id 'x': 2 records share it \(1 duplicated ids in all\)"):
        load(write_jsonl(tmp_path / "d.jsonl", rows))  # the exact copy of ("x", "a") is deduped first


# --- splits, subsampling, sharding ----------------------------------------------------------------


@pytest.mark.parametrize("n,val_size,expected", [(1, 500, 0), (2, 500, 1), (13, 500, 2), (30, 500, 3), (200, 5, 5)])
def test_validation_split_sizes(tmp_path, n, val_size, expected):
    assert expected == (0 if n < 2 else min(val_size, math.ceil(0.1 * n - 1e-9)))
    ds = load(write_jsonl(tmp_path / "d.jsonl", _rows(2 * n)), val_size=val_size)
    for d in ("alpha", "beta"):
        splits = [s for dom, s in zip(col(ds, "domain"), col(ds, "split")) if dom == d]
        assert splits.count("validation") == expected and splits.count("train") == n - expected


def test_heldout_rows_are_a_domains_first_validation_rows(tmp_path):
    rows = _rows(60, domains=("alpha", "beta", "gamma"))
    rows[-1]["domain"] = "delta"  # one document: no validation row (a domain needs two to hold one out)
    ds = load(write_jsonl(tmp_path / "d.jsonl", rows))
    assert ds.heldout_domains == ["alpha", "beta", "gamma"]
    for d in ds.heldout_domains:
        by_hand = [s for dom, s, sp in zip(col(ds, "domain"), col(ds, "sample_id"), col(ds, "split"))
                   if dom == d and sp == "validation"]  # the table is sorted by (domain, sample_id)
        assert len(by_hand) == 2 and ds.heldout(d).column("sample_id").to_pylist() == by_hand
        assert ds.heldout(d, 1).column("sample_id").to_pylist() == by_hand[:1]
        assert ds.heldout(d, 5).num_rows == 2
    assert ds.heldout("delta").num_rows == 0 and ds.heldout("nowhere", 3).num_rows == 0


def test_split_is_deterministic_and_disjoint(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", _rows(100))
    a, b = load(p), load(p)
    assert a.table.equals(b.table) and a.fingerprint == b.fingerprint
    val = {s for s, sp in zip(col(a, "sample_id"), col(a, "split")) if sp == "validation"}
    train = {s for s, sp in zip(col(a, "sample_id"), col(a, "split")) if sp == "train"}
    assert len(val) == 10 and not val & train and len(val | train) == 100
    other = load(p, seed=7)
    assert {s for s, sp in zip(col(other, "sample_id"), col(other, "split")) if sp == "validation"} != val


def test_max_per_domain(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", _rows(60, domains=("alpha", "beta", "tiny")))
    small = load(p, max_per_domain=7)
    assert {d: col(small, "domain").count(d) for d in ("alpha", "beta", "tiny")} == {"alpha": 7, "beta": 7, "tiny": 7}
    assert col(small, "split").count("validation") == 3  # ceil(0.7) per domain
    # deterministic and nested: a larger cap keeps a superset
    assert set(col(small, "sample_id")) <= set(col(load(p, max_per_domain=12), "sample_id"))
    assert load(p, max_per_domain=7).table.equals(small.table)


@pytest.mark.parametrize("n,k", [(0, 3), (10, 1), (10, 3), (10, 10), (3, 8), (1001, 7)])
def test_shard_rows_cover_everything_once(n, k):
    shards = [shard_rows(n, i, k) for i in range(k)]
    assert [i for s in shards for i in s] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ConfigError, match="--shard"):
        shard_rows(n, k, k)


# --- errors ---------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    (tmp_path / "real.jsonl").write_text("")
    with pytest.raises(DataError, match=r"does not exist: .*nope\.jsonl .*holds: real\.jsonl"):
        load(tmp_path / "nope.jsonl")


def test_unsupported_extension(tmp_path):
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unsupported data file extension '.xlsx'.*supported: .jsonl, .json, .parq"):
        load(tmp_path / "d.xlsx")


def test_empty_dataset(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match=r"empty dataset: no records in .*e\.jsonl"):
        load(tmp_path / "e.jsonl")
    p = write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": None}])
    with pytest.raises(DataError, match=r"0 usable records in .*blank\.jsonl \(2 with an empty text"):
        load(p)


def test_no_text_column(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"body": "x", "meta": 1}])
    with pytest.raises(DataError, match=r"no text column in .*d\.jsonl.*--text-field.*--prompt-field.*: body, meta"):
        load(p)


def test_unknown_domain_and_id_fields(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "topic": "a"}])
    with pytest.raises(DataError, match=r"unknown domain field 'kind' .*--domain-field.*columns: text, topic"):
        load(p, domain_field="kind")
    with pytest.raises(DataError, match=r"unknown id field 'uid' .*--id-field.*columns: text, topic"):
        load(p, id_field="uid")


def test_mixed_formats(tmp_path):
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "x"}])
    write_jsonl(tmp_path / "d" / "b.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(DataError, match=r"mixed record formats: .*a\.jsonl holds text .*b\.jsonl holds prompt/resp"):
        load(tmp_path / "d")


def test_directory_without_data(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "slides.pdf").write_text("x")
    with pytest.raises(DataError, match=r"no readable data in directory .*holds slides\.pdf"):
        load(tmp_path / "d")


def test_messy_json_lines(tmp_path):
    lines = [
        '{"text": "2020-01-01", "id": 1}',  # Arrow would read a date-like text as a timestamp
        "",
        '{"text": "plain", "id": "1a", "domain": "late"}',  # mixed id types; a key missing in row 1
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    ds = load(tmp_path / "m.jsonl")
    got = dict(zip(col(ds, "sample_id"), zip(col(ds, "text"), col(ds, "domain"))))
    assert got == {"1": ("2020-01-01", "m"), "1a": ("plain", "late")}


def test_datasets_is_imported_only_for_save_to_disk(tmp_path):
    import subprocess
    import sys

    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    load_it = f"from distillkit.data import DataSpec, load_data; load_data(DataSpec({str(p)!r}))"
    code = f"import sys; {load_it}; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unreadable_files_and_bad_columns(tmp_path):
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"cannot read .*bad\.parquet as Parquet"):
        load(tmp_path / "bad.parquet")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n\n{"text": \n')
    with pytest.raises(DataError, match=r"cannot read .*bad\.jsonl as JSON lines: line 3: "):
        load(tmp_path / "bad.jsonl")
    p = write_jsonl(tmp_path / "nested.jsonl", [{"text": ["a", "b"]}])
    with pytest.raises(DataError, match=r"column 'text' .* holds list<item: string> values"):
        load(p)


def test_bad_spec_values(tmp_path):
    with pytest.raises(ConfigError, match="val_fraction must be in"):
        load(tmp_path, val_fraction=1.5)


def test_errors_are_one_line(tmp_path):
    cases = [tmp_path / "missing", tmp_path / "x.doc"]
    (tmp_path / "x.doc").write_text("")
    for p in cases:
        with pytest.raises(DataError) as e:
            load(p)
        assert "\n" not in str(e.value)


class _CharTok:
    """One id per character after a BOS of 1; EOS 0: a tokenizer whose output is easy to write down."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [([1] if add_special_tokens else []) + [ord(c) for c in t] for t in texts]}


def test_tokenize_targets_and_drops():
    base = {"sample_id": ["a", "b", "c"], "domain": ["d", "d", "e"], "split": ["train", "validation", "train"]}
    text = tokenize(pa.table({**base, "text": ["hey", "", "yo"]}), "text", _CharTok(), max_length=3)
    assert text.ids == [[1, 104, 101], [1, 121, 111]] and text.target_start == [1, 1]
    assert (text.sample_id, text.split, text.dropped, text.responses) == (["a", "c"], ["train", "train"], 1, None)
    # prompt/response: the prompt keeps its last max_length // 2 tokens, then the response and EOS follow
    rows = pa.table({**base, "prompt": ["ab", "abcdef", "x"], "response": ["cd", "g", ""], "text": ["", "", ""]})
    inst = tokenize(rows, "instruction", _CharTok(), max_length=6)
    assert inst.ids == [[1, 97, 98, 99, 100, 0], [100, 101, 102, 103, 0], [1, 120, 0]]
    assert inst.target_start == [3, 3, 2] and inst.responses == ["cd", "g", ""] and inst.dropped == 0
    assert tokenize(rows, "instruction", _CharTok(), max_length=1).dropped == 3  # no room left for an answer
