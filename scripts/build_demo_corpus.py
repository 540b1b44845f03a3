#!/usr/bin/env python3
"""Build the embedded multi-domain demo corpus: distillkit/assets/demo_corpus.parquet.

The corpus is a small, deterministic extract of text shipped by Debian packages
plus the Python standard library, so that the README's first command needs no
download. Install the sources once (Debian 12 / bookworm, as root):

    apt-get update
    apt-get install -y --no-install-recommends bible-kjv bible-kjv-text fortunes fortunes-min fortunes-de fortunes-ru fortunes-es fortunes-it fortunes-zh python3-doc manpages man-db groff-base bsdextrautils jargon-text

(Slim Docker images may exclude /usr/share/doc and /usr/share/man with a
path-exclude in /etc/dpkg/dpkg.cfg.d/; remove it before installing.)

Then run, from the repository root (needs only the stdlib + pyarrow):

    . .venv/bin/activate
    python scripts/build_demo_corpus.py              # ~250 docs per domain
    python scripts/build_demo_corpus.py --per-domain 400 --out /tmp/x.parquet

Output columns: id ("{domain}-{sha256(text)[:12]}"), domain, text, source
(package:file), license. Re-running with the same packages and the same Python
interpreter (python_code comes from the running interpreter's stdlib) gives the
same rows. A missing package makes the script exit naming the apt package.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "distillkit" / "assets" / "demo_corpus.parquet"
TARGET, HI, MIN_CHARS = 1200, 2000, 200  # doc lengths in characters: aim, max, min
FORTUNES = Path("/usr/share/games/fortunes")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LICENSES = {
    "bible-kjv-text": "public-domain (KJV text; Crown copyright in the UK)",
    "fortunes": "BSD-3-Clause (fortune-mod)",
    "fortunes-min": "BSD-3-Clause (fortune-mod)",
    "fortunes-de": "GPL-2+",
    "fortunes-ru": "GPL-2",
    "fortunes-es": "GPL-2+ (texts presumed public domain)",
    "fortunes-it": "public-domain",
    "fortunes-zh": "public-domain (classical poems); GPL-3+ (packaging)",
    "python": "PSF-2.0",
    "python3-doc": "PSF-2.0",
    "base-files": "verbatim copying permitted (license texts)",
    "manpages": "Linux-man-pages-copyleft / GPL-2+ (per page, see /usr/share/doc/manpages/copyright)",
    "jargon-text": "public-domain",
}


# ---------------------------------------------------------------- helpers
def die_missing(pkg: str, what: str) -> None:
    sys.exit(f"error: {what} not found -- install the Debian package '{pkg}':\n"
             f"    apt-get install -y --no-install-recommends {pkg}")


def pkg_files(pkg: str) -> list[Path]:
    """Regular files installed by a Debian package (sorted), or exit naming it."""
    try:
        res = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True)
    except FileNotFoundError:
        sys.exit("error: dpkg not found; this script needs a Debian/Ubuntu system")
    if res.returncode != 0:
        die_missing(pkg, f"package {pkg}")
    files = [Path(p) for p in res.stdout.splitlines() if p.startswith("/")]
    files = sorted(p for p in files if p.is_file() and not p.is_symlink())
    if not files:
        die_missing(pkg, f"files of {pkg} (excluded by dpkg path-exclude?)")
    return files


def read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return clean(text)


def clean(text: str) -> str:
    text = ANSI.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    while "\x08" in text:  # overstrike (x\bx bold, ___\b\b\bword underline)
        text, n = re.subn(r"[^\x08\n]\x08", "", text)
        if not n:
            break
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)  # bells, stray controls
    return "\n".join(line.rstrip() for line in text.split("\n"))


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n[ \t]*\n+", text) if p.strip()]


def split_long(text: str, hi: int = HI) -> list[str]:
    """Split an oversized unit on blank lines, then lines, then whitespace (never mid-word)."""
    paras = paragraphs(text)
    if len(paras) > 1:
        return pack(paras, target=hi, hi=hi)
    pieces: list[str] = []
    for line in text.split("\n"):
        if len(line) <= hi:
            pieces.append(line)
            continue
        words, cur = re.split(r"(?<=\s)", line), ""  # keep the separators
        for w in words:
            if cur and len(cur) + len(w) > hi:
                pieces.append(cur.rstrip())
                cur = ""
            cur += w
        pieces.append(cur.rstrip())
    return pack(pieces, target=hi, hi=hi, sep="\n")


def pack(units, target=TARGET, hi=HI, sep="\n\n") -> list[str]:
    """Greedily join consecutive units into chunks of >= target chars (unless a source
    runs out or the next unit would overflow), at most hi; oversized units are split."""
    out, cur = [], ""
    for unit in units:
        unit = unit.strip("\n")
        if not unit.strip():
            continue
        for piece in split_long(unit, hi) if len(unit) > hi else [unit]:
            if cur and len(cur) + len(sep) + len(piece) > hi:
                out.append(cur)
                cur = ""
            cur = cur + sep + piece if cur else piece
            if len(cur) >= target:
                out.append(cur)
                cur = ""
    if cur:
        out.append(cur)
    return out


def docs_from(texts, source: str, license: str) -> list[dict]:
    return [{"text": t, "source": source, "license": license} for t in texts]


# ---------------------------------------------------------------- domains
def scripture() -> list[dict]:
    if not Path("/usr/lib/bible.data").exists():
        die_missing("bible-kjv-text", "/usr/lib/bible.data")
    try:
        out = subprocess.run(["bible", "-f", "Genesis 1:1-Revelation 22:21"],
                             capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        die_missing("bible-kjv", "the `bible` command")
    chapters: dict[str, list[tuple[str, str]]] = {}  # "Ge1" -> [(verse, text)], in order
    for line in out.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+\d+):(\d+) (.*)$", line)
        if m:
            chapters.setdefault(m[1], []).append((m[2], m[3].strip()))
    docs = []
    for chap, verses in chapters.items():
        start = 0
        for passage in pack([v for _, v in verses], sep=" "):
            end, length = start, -1  # passage == " ".join(verses[start:end])
            while length < len(passage):
                length += len(verses[end][1]) + 1
                end += 1
            src = f"bible-kjv:{chap}:{verses[start][0]}-{verses[end - 1][0]}"
            docs += docs_from([passage], src, LICENSES["bible-kjv-text"])
            start = end
    return docs


def fortune_docs(pkg: str, target=TARGET, hi=HI, skip=("off", "ascii-art", "asciiart", "banner")):
    docs = []
    for path in pkg_files(pkg):
        if not path.is_relative_to(FORTUNES) or path.suffix in (".dat", ".u8"):
            continue
        rel = path.relative_to(FORTUNES)
        if any(part in skip for part in rel.parts):  # offensive sets and ASCII art
            continue
        quotes = [q.strip("\n") for q in re.split(r"\n%\n", read_text(path) + "\n")]
        quotes = [q for q in quotes if q.strip() and q.strip() != "%"]
        docs += docs_from(pack(quotes, target, hi), f"{pkg}:{rel}", LICENSES[pkg])
    return docs


def quotes() -> list[dict]:
    return fortune_docs("fortunes") + fortune_docs("fortunes-min")


def multilingual_quotes() -> list[dict]:
    return [d for pkg in ("fortunes-de", "fortunes-ru", "fortunes-es", "fortunes-it")
            for d in fortune_docs(pkg)]


def chinese_poetry() -> list[dict]:
    # ~40k characters in total, so pack shorter docs (a CJK character carries ~3x
    # the content of a Latin one): 1-3 poems per doc.
    docs = fortune_docs("fortunes-zh", target=250, hi=800)
    docs = [d for d in docs if Path(d["source"].split(":", 1)[1]).name in ("tang300", "song100")]
    if not docs:
        die_missing("fortunes-zh", "tang300/song100")
    return docs


def code_units(src: str) -> list[str]:
    """Top-level statements (with their leading comments); oversized classes per member."""
    lines = src.split("\n")

    def segments(nodes, first: int, last: int) -> list[tuple[int, int, ast.AST]]:
        starts = [min([n.lineno] + [d.lineno for d in getattr(n, "decorator_list", [])]) - 1
                  for n in nodes]
        for i in range(1, len(starts)):  # attach comments just above a node to it
            while starts[i] > nodes[i - 1].end_lineno and (
                    not lines[starts[i] - 1].strip() or lines[starts[i] - 1].lstrip().startswith("#")):
                starts[i] -= 1
        bounds = [first] + starts[1:] + [last]
        return [(bounds[i], bounds[i + 1], nodes[i]) for i in range(len(nodes))]

    units = []
    for a, b, node in segments(ast.parse(src).body, 0, len(lines)):
        unit = "\n".join(lines[a:b])
        if len(unit) > HI and isinstance(node, ast.ClassDef) and len(node.body) > 1:
            units += ["\n".join(lines[x:y]) for x, y, _ in segments(node.body, a, b)]
        elif len(unit) > HI:
            units += paragraphs(unit)
        else:
            units.append(unit)
    return units


def python_code() -> list[dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages",
            "__pycache__", "pydoc_data", "encodings", "ensurepip"}
    tag = f"python-{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}-stdlib"
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip & set(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        src = read_text(path)
        try:
            units = code_units(src)
        except SyntaxError:
            continue
        docs += docs_from(pack(units), f"{tag}:{rel}", LICENSES["python"])
    if not docs:
        sys.exit(f"error: no stdlib *.py found under {root}")
    return docs


def python_docs() -> list[dict]:
    roots = sorted({p.resolve() for p in Path("/usr/share/doc").glob("python3*/html/_sources")})
    if not roots:
        die_missing("python3-doc", "/usr/share/doc/python3*/html/_sources")
    docs = []
    for path in sorted(roots[-1].rglob("*.rst*")):  # newest version if several
        rel = path.relative_to(roots[-1])
        if rel.as_posix().startswith("whatsnew/changelog"):  # huge, list-only
            continue
        docs += docs_from(pack(paragraphs(read_text(path))), f"python3-doc:{rel}", LICENSES["python3-doc"])
    return docs


def legal() -> list[dict]:
    root = Path("/usr/share/common-licenses")
    if not root.is_dir():
        die_missing("base-files", str(root))
    docs = []  # only ~220k characters in all: shorter docs to get ~250 of them
    for path in sorted(root.iterdir()):
        if path.is_file() and not path.is_symlink():
            docs += docs_from(pack(paragraphs(read_text(path)), target=850),
                              f"base-files:common-licenses/{path.name}", LICENSES["base-files"])
    return docs


def render_man(path: Path) -> str:
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8", MAN_DISABLE_SECCOMP="1")
    man = subprocess.run(["man", "--nh", "--nj", "-l", str(path)], env=env,
                         capture_output=True, check=True)
    col = subprocess.run(["col", "-bx"], input=man.stdout, env=env, capture_output=True, check=True)
    return clean(col.stdout.decode("utf-8", errors="replace"))


def man_pages() -> list[dict]:
    for tool, pkg in (("man", "man-db"), ("col", "bsdextrautils"), ("nroff", "groff-base")):
        if shutil.which(tool) is None:
            die_missing(pkg, f"the `{tool}` command")
    pages = [p for p in pkg_files("manpages")  # English only: /usr/share/man/manN/...
             if re.fullmatch(r"/usr/share/man/man\d/[^/]+", str(p))]
    pages = [p for p in pages if not read_text(p).lstrip().startswith(".so ")]  # alias stubs
    with ThreadPoolExecutor(max_workers=8) as pool:
        texts = list(pool.map(render_man, pages))
    docs = []
    for path, text in zip(pages, texts):
        name = path.name.removesuffix(".gz")
        docs += docs_from(pack(paragraphs(text)), f"manpages:{path.parent.name}/{name}", LICENSES["manpages"])
    return docs


def jargon() -> list[dict]:
    path = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
    if not path.exists():
        die_missing("jargon-text", str(path))
    chunks = pack(paragraphs(read_text(path)))

    def is_prose(t: str) -> bool:  # drops the tables of contents (lists of short titles)
        lines = [l for l in t.split("\n") if l.strip()]
        return sum(map(len, lines)) / len(lines) >= 30
    return docs_from([c for c in chunks if is_prose(c)], "jargon-text:jargon.txt", LICENSES["jargon-text"])


DOMAINS = {  # name -> (extractor, balance the selection across source packages)
    "scripture": (scripture, False),
    "quotes": (quotes, False),
    "multilingual_quotes": (multilingual_quotes, True),
    "chinese_poetry": (chinese_poetry, False),
    "python_code": (python_code, False),
    "python_docs": (python_docs, False),
    "legal": (legal, False),
    "man_pages": (man_pages, False),
    "jargon": (jargon, False),
}


# ---------------------------------------------------------------- assembly
def finalize(domain: str, raw: list[dict], seen: set[str]) -> list[dict]:
    """Normalise, drop tiny docs, dedupe, and give each doc its stable id."""
    out = []
    for d in raw:
        text = textwrap.dedent(d["text"]).strip("\n").rstrip()
        if len(text) < MIN_CHARS or text in seen:
            continue
        seen.add(text)
        out.append({"id": f"{domain}-{hashlib.sha256(text.encode()).hexdigest()[:12]}",
                    "domain": domain, **d, "text": text})
    return sorted(out, key=lambda d: d["id"])


def select(docs: list[dict], n: int, balance: bool) -> list[dict]:
    """First n by id hash; if balance, round-robin over the source packages."""
    if not balance:
        return docs[:n]
    groups: dict[str, list[dict]] = {}
    for d in docs:
        groups.setdefault(d["source"].split(":", 1)[0], []).append(d)
    picked, queues = [], [list(reversed(g)) for _, g in sorted(groups.items())]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop())
    return sorted(picked, key=lambda d: d["id"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--per-domain", type=int, default=250, help="docs per domain (max)")
    args = ap.parse_args()

    rows, seen, stats = [], set(), []
    for name, (extract, balance) in DOMAINS.items():
        candidates = finalize(name, extract(), seen)
        picked = select(candidates, args.per_domain, balance)
        if not picked:
            sys.exit(f"error: domain {name} produced no documents")
        rows += picked
        lens = [len(d["text"]) for d in picked]
        stats.append((name, len(candidates), len(picked), sum(lens), min(lens), max(lens)))
        print(f"  {name}: {len(picked)}/{len(candidates)} docs", file=sys.stderr)

    cols = ["id", "domain", "text", "source", "license"]
    table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in cols})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out, compression="zstd")

    print(f"\n{'domain':<22}{'docs':>6}{'avail':>8}{'chars':>11}{'mean':>7}{'min':>6}{'max':>6}")
    for name, avail, n, chars, lo, hi in stats:
        print(f"{name:<22}{n:>6}{avail:>8}{chars:>11,}{chars // n:>7}{lo:>6}{hi:>6}")
    total = sum(s[3] for s in stats)
    print(f"{'TOTAL':<22}{len(rows):>6}{sum(s[1] for s in stats):>8}{total:>11,}")
    print(f"\nwrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, zstd)")


if __name__ == "__main__":
    main()
