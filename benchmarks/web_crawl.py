"""The crawl of :mod:`benchmarks.bench_web`: Common Crawl-like WARC files, block lists and an eval set.

The crawl: real HTML pages from Debian's documentation packages (the Python 3.11, PostgreSQL 15 and Linux 6.1
manuals, the kernel's Italian, Chinese, Japanese and Korean translations included), written as Common
Crawl-like ``.warc.gz`` files (warcinfo; request, response and metadata records per page; one gzip member per
record; ``WARC-Identified-Payload-Type`` set). Each document is either a manual page as installed (its own
Sphinx or DocBook navigation) or one section of a page (split at its ``h2``/``h3`` headings, ≥ 150 words) inside
a generated news/blog layout (:func:`benchmarks.extract_pages.web_page`: menus, cookie banner, sidebars,
footer). On top of these unique documents, by default: 12% duplicates of earlier ones (a third the same page
with a tracking query, a third the same content in another site's layout, a third that with a paragraph
dropped and a credit line added), 1% URLs on the block lists (a listed domain, or a banned word in the
path) and 0.5% PDF responses (not documents on either side). ``--records`` counts the HTML responses; the
manuals give about 11,000 unique documents (2% of the pages are kept out for the eval set), so about 12,400
records with the default shares. The crawl is built once per parameter set under ``--work``.

Block lists: FineWeb's (datatrove's wheel: ``domains`` 4.56M entries, ``urls`` 19.6K, ``banned_words.txt``),
read from the datatrove venv, both sides given the same three files (``--lists small`` writes a handful of
entries instead). Eval set: 500 passages (30–80 words) of manual pages left out of the crawl, and 20 from
documents in it (``evals/benchmarks.jsonl``, ``text`` field).

Built by :func:`build_crawl`, which ``python -m benchmarks.bench_web`` calls (its docstring shows the run).
"""

from __future__ import annotations

import html
import io
import itertools
import json
import random
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from benchmarks.extract_pages import _main_html, _title, regions, web_page, words

#: the crawl builder's version: a crawl built by another version is built again
BUILDER = 2
#: kind -> (HTML root under the unpacked tree, the host its pages are served from as installed)
MANUALS = {
    "python": ("usr/share/doc/python3.11/html", "docs.python-manual.example"),
    "postgres": ("usr/share/doc/postgresql-doc-15/html", "www.pgsql-manual.example"),
    "kernel": ("usr/share/doc/linux-doc-6.1/html", "kernel-docs.example"),
}
#: Common Crawl cuts records at 1 MiB; larger pages are left out
MAX_PAGE = 1 << 20
#: a section of a page becomes a post when it has at least this many words (shorter ones are merged)
MIN_WORDS = 150
BLOGS = [
    f"{a}{b}.example"
    for a in ("dev", "byte", "code", "stack", "kernel", "data", "open", "tech", "query", "shell")
    for b in ("notes", "journal", "digest", "weekly", "hub")
]
MIRRORS = [f"{a}-mirror.example" for a in ("docs", "archive", "reader", "syndicate", "planet", "feeds")]
CREDIT = "This article first appeared on {host} and is republished here with permission."
_TAG = re.compile(r"<[^>]+>")
_KERNEL_MAIN = re.compile(r'<div itemprop="articleBody">(.*?)</div>\s*</div>\s*<footer', re.S)
_HEADING = re.compile(r"<h[23][\s>]")
_PARA = re.compile(r"<p[\s>].*?</p>", re.S)
_LEADING_HEADING = re.compile(
    r"(?:\s*<(?!h[1-6][\s>])[^>]*>)*\s*(?P<heading><h(?P<n>[1-3])[^>]*>(?P<text>.*?)</h(?P=n)>)", re.S
)


@dataclass
class Source:
    kind: str
    path: Path
    rel: str
    lang: str


@dataclass
class Doc:
    url: str
    body: bytes
    kind: str  # page | post | dup_exact | dup_syndicated | dup_edited | blocked_domain | blocked_word | pdf
    lang: str
    main: str = ""  # the content HTML a duplicate is made from
    title: str = ""


def sources(tree: Path) -> list[Source]:
    out = []
    for kind, (root, _) in MANUALS.items():
        base = tree / root
        for p in sorted(base.rglob("*.html")):
            rel = p.relative_to(base)
            if any(part.startswith("_") for part in rel.parts) or p.stat().st_size > MAX_PAGE:
                continue
            parts = rel.parts
            lang = "en"
            if "translations" in parts and parts.index("translations") + 1 < len(parts) - 1:
                lang = parts[parts.index("translations") + 1].split("_")[0]
            out.append(Source(kind, p, rel.as_posix(), lang))
    return out


def main_html(markup: str, kind: str) -> str:
    if kind == "kernel":
        m = _KERNEL_MAIN.search(markup)
        return m.group(1) if m else ""
    return _main_html(markup, kind)


def _nwords(fragment: str) -> int:
    return len(words(html.unescape(_TAG.sub(" ", fragment))))


def sections(main: str) -> list[str]:
    """The content HTML cut before each ``h2``/``h3``; pieces of fewer than MIN_WORDS words joined to the next."""
    cuts = [0, *(m.start() for m in _HEADING.finditer(main) if m.start() > 0), len(main)]
    out, cur = [], ""
    for a, b in itertools.pairwise(cuts):
        cur += main[a:b]
        if _nwords(cur) >= MIN_WORDS:
            out.append(cur)
            cur = ""
    if cur and out:
        out[-1] += cur
    elif cur and _nwords(cur) >= 50:
        out.append(cur)
    return out


def split_heading(fragment: str, default: str) -> tuple[str, str]:
    """(title, the rest): a fragment's leading ``h1``-``h3`` heading taken out as the title of the page it goes
    into (a layout prints the title once, as its ``h1``), or ``default`` and the fragment as it is."""
    m = _LEADING_HEADING.match(fragment)
    if not m:
        return default[:120], fragment
    title = html.unescape(_TAG.sub("", m.group("text"))).replace("¶", "").strip()
    return (title or default)[:120], fragment[: m.start("heading")] + fragment[m.end() :]


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "post"


def plan_crawl(tree: Path, records: int, seed: int, dup_share: float, blocked_share: float, page_share: float):
    """(documents in WARC order, held-out pages for the eval set, how many blocked URLs to add): the unique
    documents and their duplicates of ``records`` HTML documents, composed as the module docstring says."""
    rng = random.Random(seed)
    srcs = sources(tree)
    rng.shuffle(srcs)
    held_out = srcs[: max(20, len(srcs) // 50)]  # eval passages only
    pool = srcs[len(held_out) :]
    n_dup = round(records * dup_share)
    n_blocked = round(records * blocked_share)
    n_unique = records - n_dup - n_blocked
    uniques: list[Doc] = []
    titles: list[str] = []
    for src in pool:
        if len(uniques) >= n_unique:
            break
        markup = src.path.read_text("utf-8", "replace")
        main = main_html(markup, src.kind)
        title = _title(markup)
        host = MANUALS[src.kind][1]
        if rng.random() < page_share or not main:
            title, body = split_heading(main, title)  # what a copy of the page puts in another layout
            uniques.append(Doc(f"https://{host}/{src.rel}", markup.encode(), "page", src.lang, body, title))
            titles.append(title)
            continue
        for k, sec in enumerate(sections(main)):
            t, body = split_heading(sec, title)
            blog = rng.choice(BLOGS)
            page, _, _ = web_page(random.Random(f"{seed}:{src.rel}:{k}"), t, body, titles[-50:] or [title])
            url = f"https://{blog}/{rng.randint(2015, 2025)}/{rng.randint(1, 12):02d}/{_slug(t)}-{k}"
            uniques.append(Doc(url, page.encode(), "post", src.lang, body, t))
            titles.append(t)
    if len(uniques) < n_unique:
        raise SystemExit(f"the manuals give {len(uniques)} unique documents; ask for fewer --records")
    uniques = uniques[:n_unique]
    keyed: list[tuple[float, Doc]] = [(float(j), d) for j, d in enumerate(uniques)]
    # duplicates of earlier documents, each placed up to 50 documents after its original
    for i in range(n_dup):
        j = rng.randrange(len(uniques))
        orig = uniques[j]
        how = ("dup_exact", "dup_syndicated", "dup_edited")[i % 3] if orig.main else "dup_exact"
        if how == "dup_exact":
            d = Doc(orig.url + "?utm_source=newsletter&utm_medium=email", orig.body, how, orig.lang)
        else:
            content = orig.main
            if how == "dup_edited":
                paras = list(_PARA.finditer(content))
                if len(paras) > 3:
                    p = paras[rng.randrange(1, len(paras))]
                    content = content[: p.start()] + content[p.end() :]
                content += f"<p>{CREDIT.format(host=orig.url.split('/')[2])}</p>"
            page, _, _ = web_page(random.Random(f"{seed}:dup:{i}"), orig.title or "Untitled", content, titles[:50])
            d = Doc(f"https://{rng.choice(MIRRORS)}/{_slug(orig.title)}-{i}", page.encode(), how, orig.lang)
        keyed.append((j + rng.uniform(0.5, 50.0), d))
    keyed.sort(key=lambda kd: kd[0])
    docs = [d for _, d in keyed]
    return docs, held_out, n_blocked


def eval_passages(docs: list[Doc], held_out: list[Source], seed: int, n_out: int = 500, n_in: int = 20) -> list[str]:
    """Passages of 30–80 words: ``n_out`` from the held-out pages, ``n_in`` from posts in the crawl."""
    rng = random.Random(seed)

    def paragraphs(fragment: str) -> list[str]:
        text, _ = regions(f"<html><body>{fragment}</body></html>")
        out = []
        for line in text.splitlines():
            n = len(line.split())
            if 30 <= n <= 80 and line.rstrip().endswith("."):
                out.append(" ".join(line.split()))
        return out

    outside: list[str] = []
    for src in held_out:
        outside += paragraphs(main_html(src.path.read_text("utf-8", "replace"), src.kind))
    rng.shuffle(outside)
    inside: list[str] = []
    posts = [d for d in docs if d.kind == "post" and d.lang == "en"]
    rng.shuffle(posts)
    for d in posts:
        if len(inside) >= n_in:
            break
        ps = paragraphs(d.main)
        if ps:
            inside.append(rng.choice(ps))
    return outside[:n_out] + inside


def block_lists(root: Path, mode: str, dt_python: str | None) -> dict[str, Path]:
    """The three list files both pipelines read: FineWeb's from datatrove's wheel, or a few entries."""
    lists = root / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    files = {"domains": lists / "domains", "urls": lists / "urls", "words": lists / "banned_words.txt"}
    if mode == "fineweb":
        if dt_python is None:
            raise SystemExit("--lists fineweb reads datatrove's lists: give --dt-python (or use --lists small)")
        assets = subprocess.run(
            [dt_python, "-c", "from datatrove.utils._import_utils import ASSETS_PATH; print(ASSETS_PATH)"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not files["domains"].exists():
            with tarfile.open(Path(assets) / "url_filterblacklistsv0_3_0.tar.gz") as tar:
                tar.extractall(lists, filter="data")
        shutil.copy(Path(assets) / "banned_words.txt", files["words"])
    else:
        files["domains"].write_text("lucky-casino.example\nbad-pills.example\nadult-videos.example\n")
        files["urls"].write_text("pages.example.net/~promo\n")
        files["words"].write_text("viagra\nporn\ncasino\n")
    return files


def blocked_docs(n: int, lists: dict[str, Path], seed: int, filler: list[Doc]) -> list[Doc]:
    """``n`` documents whose URL is blocked: half on a listed domain, half with a banned word in the path."""
    rng = random.Random(seed)
    domains, bad = [], []
    with open(lists["domains"], encoding="utf-8") as f:
        for k, line in enumerate(f):  # a reservoir sample of the domains list
            d = line.strip()
            if not d or d.startswith("#") or "/" in d:
                continue
            if len(domains) < 200:
                domains.append(d)
            elif (r := rng.randrange(k + 1)) < 200:
                domains[r] = d
    for line in lists["words"].read_text(encoding="utf-8").splitlines():
        w = line.strip()
        if w and not w.startswith("#") and re.fullmatch(r"[a-z0-9]+", w):
            bad.append(w)
    out = []
    for i in range(n):
        body = filler[rng.randrange(len(filler))].body
        if i % 2 == 0:
            out.append(Doc(f"https://{rng.choice(domains)}/page/{i}", body, "blocked_domain", "en"))
        else:
            out.append(Doc(f"https://{rng.choice(BLOGS)}/tag/{rng.choice(bad)}-{i}", body, "blocked_word", "en"))
    return out


def write_warcs(docs: list[Doc], out: Path, files: int, seed: int) -> dict:
    """Common Crawl-like .warc.gz files: warcinfo, then request + response + metadata records per document."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}:ids")
    per = -(-len(docs) // files)
    sizes = []
    for k in range(files):
        path = out / f"CC-MAIN-bench-{k:05d}.warc.gz"
        with open(path, "wb") as f:
            w = WARCWriter(f, gzip=True)
            w.write_record(w.create_warcinfo_record(path.name, {"software": "sluice bench_web"}))
            for d in docs[k * per : (k + 1) * per]:
                host = d.url.split("/")[2]
                path_q = "/" + d.url.split("/", 3)[3] if d.url.count("/") >= 3 else "/"
                req = StatusAndHeaders(f"GET {path_q} HTTP/1.1", [("Host", host)], is_http_request=True)
                w.write_record(w.create_warc_record(d.url, "request", payload=io.BytesIO(b""), http_headers=req))
                ctype = "application/pdf" if d.kind == "pdf" else "text/html"
                head = StatusAndHeaders(
                    "200 OK",
                    [("Content-Type", ctype + ("; charset=utf-8" if ctype == "text/html" else ""))],
                    protocol="HTTP/1.1",
                )
                rec = w.create_warc_record(d.url, "response", payload=io.BytesIO(d.body), http_headers=head)
                rec.rec_headers.replace_header("WARC-Date", "2024-05-01T12:30:00Z")
                rec.rec_headers.replace_header("WARC-Record-ID", f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128))}>")
                rec.rec_headers.add_header("WARC-Identified-Payload-Type", ctype)
                w.write_record(rec)
                meta = b"fetchTimeMs: 120\ncharset-detected: UTF-8\n"
                w.write_record(
                    w.create_warc_record(
                        d.url, "metadata", payload=io.BytesIO(meta), warc_content_type="application/warc-fields"
                    )
                )
        sizes.append(path.stat().st_size)
    return {"files": files, "bytes": sum(sizes)}


def build_crawl(args, root: Path) -> dict:
    """The WARC files, lists and eval set under ``root`` (reused when built before with the same parameters)."""
    params = {
        k: getattr(args, k) for k in ("records", "seed", "files", "dup_share", "blocked_share", "page_share", "lists")
    }
    params["builder"] = BUILDER
    stamp = root / "crawl.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("params") == params:
        return json.loads(stamp.read_text())
    tree = args.debs / "tree"
    if not (tree / MANUALS["kernel"][0]).is_dir() or not (tree / MANUALS["python"][0]).is_dir():
        from benchmarks.effect_data import fetch_debs

        tree = fetch_debs(args.debs)
    t0 = time.perf_counter()
    lists = block_lists(root, args.lists, args.dt_python)
    docs, held_out, n_blocked = plan_crawl(
        tree, args.records, args.seed, args.dup_share, args.blocked_share, args.page_share
    )
    rng = random.Random(f"{args.seed}:blocked")
    for d in blocked_docs(n_blocked, lists, args.seed, docs):
        docs.insert(rng.randrange(len(docs) + 1), d)
    for i in range(round(args.records * 0.005)):
        pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 20
        docs.insert(rng.randrange(len(docs) + 1), Doc(f"https://files.example.org/report-{i}.pdf", pdf, "pdf", ""))
    shutil.rmtree(root / "crawl", ignore_errors=True)
    warc = write_warcs(docs, root / "crawl", args.files, args.seed)
    passages = eval_passages(docs, held_out, args.seed)
    evals = root / "evals" / "benchmarks.jsonl"
    evals.parent.mkdir(parents=True, exist_ok=True)
    evals.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(passages)))
    html_docs = [d for d in docs if d.kind != "pdf"]
    kinds: dict[str, int] = {}
    langs: dict[str, int] = {}
    for d in html_docs:
        kinds[d.kind] = kinds.get(d.kind, 0) + 1
        langs[d.lang] = langs.get(d.lang, 0) + 1
    info = {
        "params": params,
        "html_documents": len(html_docs),
        "responses": len(docs),
        "warc_records": 3 * len(docs) + args.files,
        "html_mb": round(sum(len(d.body) for d in html_docs) / 2**20, 1),
        "warc": warc,
        "kinds": kinds,
        "languages": dict(sorted(langs.items(), key=lambda kv: -kv[1])),
        "eval_items": len(passages),
        "eval_items_from_crawl": min(20, len(passages)),
        "lists": {k: str(v) for k, v in lists.items()},
        "evals": str(evals),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    stamp.write_text(json.dumps(info, indent=2))
    return info
