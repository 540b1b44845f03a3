"""Rich rendering of artifacts (tables only; reading is the library's job)."""

from __future__ import annotations

import json

from rich.table import Table


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, list):
        s = json.dumps(v[:4]) + ("…" if len(v) > 4 else "")
        return s if len(s) < 60 else s[:57] + "…"
    s = str(v)
    return s if len(s) < 60 else s[:57] + "…"


def arrow_table(table, title: str, rows: int) -> Table:
    t = Table(title=title, title_justify="left")
    for c in table.column_names:
        t.add_column(c, overflow="fold")
    for r in table.slice(0, rows).to_pylist():
        t.add_row(*(_fmt(r[c]) for c in table.column_names))
    if table.num_rows > rows:
        t.caption = f"{rows} of {table.num_rows:,} rows"
    return t


def domains_table(path) -> Table:
    from distillkit.artifacts import read_artifact

    art = read_artifact(path, "score")
    d = art.table("domains.arrow")
    t = Table(title=f"per-domain perplexity on the held-out slice ({path})", title_justify="left")
    for c in ("domain", "docs", "tokens", "teacher ppl", "student ppl", "ratio"):
        t.add_column(c, justify="left" if c == "domain" else "right")
    for r in d.to_pylist():
        t.add_row(r["domain"] + ("" if r.get("heldout", True) else " (train rows)"), f"{r['num_samples']:,}",
                  f"{r['num_tokens']:,}", f"{r['teacher_ppl']:.2f}", f"{r['student_ppl']:.2f}", f"{r['ppl_ratio']:.2f}")
    figs = art.manifest.get("figures", {})
    bits = [f"{k} {figs[k]:,}" for k in ("teacher_tokens_per_s", "student_tokens_per_s") if k in figs]
    if "wall_s" in figs:
        bits.append(f"wall {figs['wall_s']} s")
    t.caption = " · ".join(bits)
    return t


def show_artifact(path: str, rows: int) -> None:
    from distillkit.artifacts import read_artifact
    from distillkit.progress import console

    art = read_artifact(path)
    m = art.manifest
    head = Table(show_header=False, title=f"{m['kind']} artifact: {art.path}", title_justify="left")
    head.add_column("key", style="bold")
    head.add_column("value", overflow="fold")
    for key in ("created_at", "distillkit_version", "git_commit", "schema_version", "config_sha256"):
        head.add_row(key, str(m.get(key)))
    for inp in m.get("inputs", []):
        head.add_row("input", f"{inp['kind']} {inp['path']} ({inp['manifest_sha256'][:12]})")
    for k, v in m.get("figures", {}).items():
        head.add_row(f"figure: {k}", _fmt(v))
    console.print(head)
    cfg = Table(title="config", title_justify="left", show_header=False)
    cfg.add_column("key")
    cfg.add_column("value", overflow="fold")
    for k, v in m["config"].items():
        cfg.add_row(k, _fmt(v))
    console.print(cfg)
    files = Table(title="files", title_justify="left")
    for c in ("name", "rows", "bytes", "sha256"):
        files.add_column(c, justify="left" if c == "name" else "right")
    for f in m["files"]:
        files.add_row(f["name"], f"{f['rows']:,}" if f["rows"] is not None else "", f"{f['bytes']:,}", f["sha256"][:12])
    console.print(files)
    stores = ("topk/", "sampled/")  # the teacher's stored parts: one shown, not every part
    for f in m["files"]:
        if f["name"].endswith(".arrow") and not f["name"].startswith(stores):
            console.print(arrow_table(art.table(f["name"]), f["name"], rows))
    for store in stores:
        tk = art.files(store)
        if tk:
            console.print(arrow_table(art.table(tk[0]), f"{tk[0]} (first of {len(tk)} parts)", min(rows, 2)))
