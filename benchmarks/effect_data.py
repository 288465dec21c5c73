"""A crawl-like corpus built from Debian documentation, for ``bench_effect``.

Real text none of Sluice's authors wrote, from four Debian packages (downloaded with
``apt-get download`` and unpacked with ``dpkg-deb -x``; see :func:`fetch_debs`):

* ``kernel``  — ``linux-doc-6.1``: the kernel's reStructuredText documentation;
* ``python``  — ``python3.11-doc``: the reST sources of the Python 3.11 manuals;
* ``postgres``— ``postgresql-doc-15``: the PostgreSQL 15 manual, HTML reduced to text
  (navigation bars dropped);
* ``dict``    — ``dict-gcide``: GNU's Collaborative International Dictionary (Webster 1913).

Each domain's source files are split by file (never a file in two parts) into four disjoint
pools: **train** (clean documents of the corpus), **eval** (the clean held-out eval set),
**reference** (a trusted sample a user would have, for ``sluice calibrate`` and the classifier's
positives) and **junk** (source text the garbling kinds below start from, so garbled text never
shares a document with the clean corpus).

Junk is planted at token shares typical of a crawl before curation (FineWeb and RefinedWeb
remove well over half of a crawl's tokens; deduplication alone about half), as a share of the
raw corpus by characters (``JUNK``):

* ``exact_dup``  — extra copies of a few train documents (each 2–40 times, Zipf-like);
* ``near_dup``   — edited copies of train documents: a dated header or a footer, 1–6% of words
  replaced, a paragraph dropped (1–4 variants each);
* ``boilerplate``— navigation, cookie, login, 404 and "related pages" fragments, per domain;
* ``spam``       — keyword-stuffed SEO pages built from the domain's own vocabulary;
* ``shuffled``   — junk-pool documents with the words of every line shuffled;
* ``noise``      — junk-pool documents with 15–35% of characters corrupted, base64 blobs,
  mojibake.

Every document carries ``kind`` (``clean`` or the junk kind) so the oracle (clean only) and the
per-kind removal rates can be computed; Sluice's recipes never read it.

Run::

    python -m benchmarks.effect_data --fetch /tmp/debian-docs -o /tmp/effect-data
"""

from __future__ import annotations

import argparse
import base64
import gzip
import html.parser
import json
import random
import re
import subprocess
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("linux-doc-6.1", "python3.11-doc", "postgresql-doc-15", "dict-gcide")
DOMAINS = ("kernel", "python", "postgres", "dict")

#: junk kind -> share of the raw corpus (characters)
JUNK = {
    "exact_dup": 0.14,
    "near_dup": 0.10,
    "boilerplate": 0.06,
    "spam": 0.06,
    "shuffled": 0.07,
    "noise": 0.07,
}
#: pool -> share of a domain's source files
POOLS = {"eval": 0.10, "reference": 0.10, "junk": 0.15, "train": 0.65}


def fetch_debs(root: Path) -> Path:
    """Download the four packages with ``apt-get download`` and unpack them under ``root``."""
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    tree = root / "tree"
    for pkg in PACKAGES:
        if not list(debs.glob(f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True, capture_output=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    return tree


# --------------------------------------------------------------------------- sources


class _HtmlText(html.parser.HTMLParser):
    """Visible text of a DocBook HTML page, without navigation bars, scripts or styles."""

    BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "pre", "dt", "dd", "table", "title"})
    SKIP_CLASSES = frozenset({"navheader", "navfooter"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0  # >0 inside a skipped element
        self.stack: list[bool] = []  # per open tag: does it start a skipped region
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"meta", "link", "img", "br", "hr", "col", "input"}:
            if tag == "br":
                self.parts.append("\n")
            return
        cls = set((dict(attrs).get("class") or "").split())
        skip = tag in {"script", "style", "head"} or bool(cls & self.SKIP_CLASSES)
        self.stack.append(skip)
        self.skip_depth += skip
        self.pre += tag == "pre"
        if tag in self.BLOCK and not self.skip_depth:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in {"meta", "link", "img", "br", "hr", "col", "input"} or not self.stack:
            return
        self.skip_depth -= self.stack.pop()
        self.pre -= tag == "pre"
        if tag in self.BLOCK and not self.skip_depth:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.parts.append(data if self.pre else re.sub(r"[ \t\r\n]+", " ", data))

    def text(self) -> str:
        lines = [ln.rstrip() for ln in "".join(self.parts).splitlines()]
        out = "\n".join(lines)
        return re.sub(r"\n{3,}", "\n\n", out).strip()


def html_text(markup: str) -> str:
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    return parser.text()


def source_files(tree: Path, domain: str) -> list[tuple[str, str]]:
    """(name, text) of every source file of a domain, sorted by name."""
    doc = tree / "usr/share/doc"
    out: list[tuple[str, str]] = []
    if domain == "kernel":
        for p in sorted((doc / "linux-doc-6.1/Documentation").rglob("*.rst.gz")):
            out.append((str(p.relative_to(doc)), gzip.decompress(p.read_bytes()).decode("utf-8", "replace")))
    elif domain == "python":
        for p in sorted((doc / "python3.11/html/_sources").rglob("*.rst.txt")):
            out.append((str(p.relative_to(doc)), p.read_text("utf-8", "replace")))
    elif domain == "postgres":
        for p in sorted((doc / "postgresql-doc-15/html").glob("*.html")):
            out.append((str(p.relative_to(doc)), html_text(p.read_text("utf-8", "replace"))))
    elif domain == "dict":
        raw = zlib.decompress((tree / "usr/share/dictd/gcide.dict.dz").read_bytes(), 16 + zlib.MAX_WBITS)
        entries = re.split(r"\n(?=\S)", raw.decode("utf-8", "replace"))
        entries = [e.strip() for e in entries if e.strip() and not e.startswith("00-database")]
        # "files" for the dictionary: runs of 40 consecutive entries (held out as blocks)
        for i in range(0, len(entries), 40):
            out.append((f"gcide:{i // 40:05d}", "\n\n".join(entries[i : i + 40])))
    else:
        raise ValueError(domain)
    return [(n, t) for n, t in out if len(t) > 200]


def split_documents(text: str, lo: int = 800, hi: int = 4000) -> list[str]:
    """Cut a file into documents of lo–hi characters at paragraph boundaries."""
    docs: list[str] = []
    cur: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        if not para.strip():
            continue
        if size and size + len(para) > hi:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(para)
        size += len(para) + 2
        if size >= lo and para.rstrip().endswith((".", ":", "]")) and size > (lo + hi) // 2:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
    if cur:
        tail = "\n\n".join(cur)
        if docs and len(tail) < lo // 2:
            docs[-1] += "\n\n" + tail
        else:
            docs.append(tail)
    return [d[: hi * 2] for d in docs if len(d) >= 200]


# --------------------------------------------------------------------------- junk


BOILERPLATE = [
    "Home | Docs | Download | Community | About\nSearch this site\nSign in | Register",
    "We use cookies to improve your experience. By continuing to browse the site you agree to our use of cookies.\n"
    "Accept all cookies | Manage preferences | Privacy policy",
    "404 Not Found\nThe page you requested could not be found. It may have been moved or deleted.\n"
    "Return to the home page or use the search box above.",
    "Log in to your account\nUsername\nPassword\nRemember me\nForgot your password? | Create an account",
    "Share this page: Facebook Twitter LinkedIn Reddit Email\nPrint this page\nReport an issue with this page",
    "Copyright (c) 1996-2024 All rights reserved. Terms of use | Privacy | Contact us | Sitemap",
    "Subscribe to our newsletter\nEnter your e-mail address\nSubscribe\nNo spam, unsubscribe at any time.",
    "Previous | Next | Up | Table of contents | Index\nThis document is for an old version. Go to the latest.",
]
_SPAM = (
    "best cheap free download online buy discount top tutorial guide 2024 fast easy pro review deal "
    "course certification hosting expert premium crack full version"
)
SPAM_WORDS = tuple(_SPAM.split())


def _vocab(texts: Iterable[str], n: int = 400) -> list[str]:
    counts: dict[str, int] = {}
    for t in texts:
        for w in re.findall(r"[A-Za-z][A-Za-z_]{3,}", t):
            counts[w.lower()] = counts.get(w.lower(), 0) + 1
    return [w for w, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:n]]


def boilerplate_doc(rng: random.Random, domain: str, topics: list[str]) -> str:
    k = rng.randint(2, 5)
    parts = rng.sample(BOILERPLATE, k)
    related = "Related pages:\n" + "\n".join(f"- {rng.choice(topics).title()} {rng.choice(topics)}" for _ in range(5))
    parts.insert(rng.randrange(k + 1), related)
    return f"{domain.title()} documentation\n\n" + "\n\n".join(parts)


def spam_doc(rng: random.Random, topics: list[str]) -> str:
    keys = rng.sample(topics, 4)
    lines = []
    for _ in range(rng.randint(12, 40)):
        words = [rng.choice(SPAM_WORDS), rng.choice(keys), rng.choice(keys), rng.choice(SPAM_WORDS)]
        if rng.random() < 0.5:
            words += [rng.choice(SPAM_WORDS), rng.choice(keys)]
        lines.append(" ".join(words))
    return "\n".join(lines)


def near_dup(rng: random.Random, doc: str, vocab: list[str]) -> str:
    words = doc.split(" ")
    rate = rng.uniform(0.01, 0.06)
    for i in range(len(words)):
        if rng.random() < rate:
            words[i] = rng.choice(vocab)
    out = " ".join(words)
    paras = out.split("\n\n")
    if len(paras) > 3 and rng.random() < 0.5:
        del paras[rng.randrange(len(paras))]
    out = "\n\n".join(paras)
    if rng.random() < 0.6:
        out = f"Posted on {rng.randint(2003, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}\n\n" + out
    if rng.random() < 0.6:
        out += "\n\n" + rng.choice(BOILERPLATE)
    return out


def shuffled(rng: random.Random, doc: str) -> str:
    lines = []
    for line in doc.split("\n"):
        words = line.split()
        rng.shuffle(words)
        lines.append(" ".join(words))
    return "\n".join(lines)


def noisy(rng: random.Random, doc: str) -> str:
    kind = rng.random()
    if kind < 0.2:  # an encoded blob with a line of context
        blob = base64.b64encode(rng.randbytes(max(300, len(doc) * 3 // 4))).decode()
        return doc[:120] + "\n" + "\n".join(blob[i : i + 76] for i in range(0, len(blob), 76))
    if kind < 0.4:  # mojibake: UTF-8 bytes read as Latin-1, then accents sprinkled in
        out = "".join(c + "Ã©" if rng.random() < 0.08 else c for c in doc)
        return out.encode("utf-8").decode("latin-1")
    rate = rng.uniform(0.15, 0.35)  # OCR/scan-like character corruption
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789~|\\/#@%^&*{}[]<>"
    return "".join(rng.choice(alphabet) if (c.isalnum() and rng.random() < rate) else c for c in doc)


# --------------------------------------------------------------------------- build


@dataclass
class DomainData:
    train: list[str]
    eval: list[str]
    reference: list[str]
    junk_pool: list[str]


def pools(files: list[tuple[str, str]], seed: int, max_chars: dict[str, int]) -> DomainData:
    """Assign whole files to pools at random (seeded) and cut them into documents."""
    rng = random.Random(seed)
    order = list(range(len(files)))
    rng.shuffle(order)
    out: dict[str, list[str]] = {p: [] for p in POOLS}
    sizes = dict.fromkeys(POOLS, 0)
    total = sum(len(t) for _, t in files)
    bounds, acc = [], 0.0
    for p, share in POOLS.items():
        acc += share
        bounds.append((p, acc * total))
    cum = 0
    for i in order:
        _, text = files[i]
        pool = next(p for p, b in bounds if cum < b)
        cum += len(text)
        if sizes[pool] >= max_chars.get(pool, 1 << 62):
            continue
        docs = split_documents(text)
        out[pool].extend(docs)
        sizes[pool] += sum(len(d) for d in docs)
    return DomainData(out["train"], out["eval"], out["reference"], out["junk"])


def junk_docs(rng: random.Random, domain: str, data: DomainData, clean_chars: int) -> Iterator[tuple[str, str]]:
    """(kind, text) of the planted junk: each kind up to its share of the raw corpus."""
    junk_share = sum(JUNK.values())
    raw_chars = clean_chars / (1 - junk_share)
    vocab = _vocab(data.train)
    topics = vocab[:120]
    pool = list(data.junk_pool)
    for kind, share in JUNK.items():
        budget, made = share * raw_chars, 0
        dup_sources = rng.sample(data.train, max(1, len(data.train) // 25))
        while made < budget:
            if kind == "exact_dup":
                src = rng.choice(dup_sources)
                copies = min(40, max(2, int(rng.paretovariate(1.2))), 1 + int((budget - made) // len(src)))
                for _ in range(copies):
                    yield kind, src
                    made += len(src)
                continue
            if kind == "near_dup":
                src = rng.choice(data.train)
                for _ in range(rng.randint(1, 4)):
                    text = near_dup(rng, src, vocab)
                    yield kind, text
                    made += len(text)
                continue
            if kind == "boilerplate":
                text = boilerplate_doc(rng, domain, topics)
            elif kind == "spam":
                text = spam_doc(rng, topics)
            elif kind == "shuffled":
                text = shuffled(rng, rng.choice(pool))
            else:
                text = noisy(rng, rng.choice(pool))
            yield kind, text
            made += len(text)


def build(tree: Path, out: Path, *, seed: int = 0, train_chars: int = 700_000, eval_chars: int = 120_000) -> dict:
    """Write ``raw/<domain>.jsonl`` (clean + junk, shuffled), ``oracle/<domain>.jsonl`` (clean only),
    ``eval/<domain>.jsonl``, ``reference/<domain>.jsonl`` and ``stats.json``."""
    rng = random.Random(seed)
    stats: dict = {"seed": seed, "junk_shares": JUNK, "pools": POOLS, "domains": {}}
    for sub in ("raw", "oracle", "eval", "reference"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for domain in DOMAINS:
        files = source_files(tree, domain)
        caps = {"train": train_chars, "eval": eval_chars, "reference": 4 * eval_chars, "junk": train_chars}
        data = pools(files, seed, caps)
        clean = [("clean", t) for t in data.train]
        clean_chars = sum(len(t) for _, t in clean)
        junk = list(junk_docs(rng, domain, data, clean_chars))
        raw = clean + junk
        rng.shuffle(raw)
        rows = [{"id": f"{domain}-{i:06d}", "text": t, "kind": k} for i, (k, t) in enumerate(raw)]
        _write(out / "raw" / f"{domain}.jsonl", rows)
        _write(out / "oracle" / f"{domain}.jsonl", [r for r in rows if r["kind"] == "clean"])
        _write(out / "eval" / f"{domain}.jsonl", [{"text": t, "domain": domain} for t in data.eval])
        _write(out / "reference" / f"{domain}.jsonl", [{"text": t, "domain": domain} for t in data.reference])
        by_kind: dict[str, dict[str, int]] = {}
        for r in rows:
            k = by_kind.setdefault(r["kind"], {"docs": 0, "chars": 0})
            k["docs"] += 1
            k["chars"] += len(r["text"])
        stats["domains"][domain] = {
            "source_files": len(files),
            "kinds": by_kind,
            "eval_docs": len(data.eval),
            "eval_chars": sum(map(len, data.eval)),
            "reference_docs": len(data.reference),
        }
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fetch", type=Path, required=True, help="where to download and unpack the Debian packages")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-chars", type=int, default=700_000, help="clean training characters per domain")
    a = p.parse_args(argv)
    tree = fetch_debs(a.fetch)
    stats = build(tree, a.out, seed=a.seed, train_chars=a.train_chars)
    print(json.dumps(stats["domains"], indent=1))


if __name__ == "__main__":
    main()
