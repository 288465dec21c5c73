"""`sluice report OUT`: one self-contained HTML page showing what a run did to its data.

The page is built from ``manifest.json`` and DuckDB queries over the run's views
(storage.views): the funnel in documents and tokens per stage with removals by reason,
composition by domain before and after, score histograms with the thresholds the run
chose, dedup group sizes and the MinHash S-curve, and a few removed documents per reason.
Charts are PNG images inside the page (data URIs); the page has no scripts and loads
nothing, and the same run gives the same bytes. A section whose stage the run lacks says so.

Tokens here are whitespace-separated words of the stored text, the one unit every row
has (text as stored: after rewriting stages such as ``c4``); model token counts
(``n_tokens``) appear in the composition table when the run tokenized.

Run:
    sluice report out/demo                  # writes out/demo/report.html
    sluice report out/demo -o /tmp/demo.html
"""

from __future__ import annotations

import contextlib
import html
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from storage.fs import resolve
from storage.manifest import read_manifest
from storage.run import REPORT, RunDir, UnsafePathError, atomic_write, real
from storage.views import WHITESPACE_TOKENS, columns

logger = logging.getLogger(__name__)

#: score columns that get a histogram when the run has them (storage.schema.SCORE_FIELDS)
SCORE_COLUMNS = ("ppl", "quality", "betr")
#: words of a row's stored text (RE2: runs of non-whitespace)
WORDS = WHITESPACE_TOKENS  # the token unit every row has
TOP_REASONS = 25

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1240px;
padding:0 20px;color:#222}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px}nav a{margin-right:14px}table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}td.n{text-align:right}
th{background:#f4f4f4}.note{color:#666}.bad{color:#b00;font-weight:bold}.ok{color:#070;font-weight:bold}
pre{white-space:pre-wrap;word-break:break-word;background:#f8f8f8;border:1px solid #eee;padding:6px;margin:4px 0;
max-height:16em;overflow:auto}img{max-width:100%;height:auto;display:block;margin:8px 0}.sample{margin:10px 0 16px}
"""


@dataclass(frozen=True)
class Section:
    """One section of the page: an anchor id, a heading and its HTML body."""

    id: str
    title: str
    body: str


def e(value: Any) -> str:
    """HTML-escape any value (quotes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; ints and floats are right-aligned and formatted."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                cells.append(f"<td>{e(v)}</td>")
            elif isinstance(v, int):
                cells.append(f'<td class="n">{v:,}</td>')
            else:
                cells.append(f'<td class="n">{v:,.4g}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{e(text)}</p>'


def _stages_of(manifest: dict, op: str) -> list[dict]:
    return [s for s in manifest.get("stages", []) if s.get("op") == op]


# ---------------------------------------------------------------- sections
def overview(manifest: dict, out_dir: str) -> Section:
    """Conservation, timing, versions, segments and the recipe text."""
    c = manifest.get("conservation", {})
    ok = c.get("ok")
    verdict = '<span class="ok">holds</span>' if ok else '<span class="bad">BROKEN</span>'
    rows = [
        ["run directory", out_dir],
        ["started", manifest.get("started")],
        ["finished", manifest.get("finished")],
        ["seconds", manifest.get("seconds")],
        ["recipe hash", manifest.get("recipe_hash")],
        ["documents read", c.get("read")],
        ["kept", c.get("kept")],
        ["removed", c.get("removed")],
        ["synthetic added", c.get("synthetic", 0)],
    ]
    body = [f"<p>Conservation (read = kept + removed): {verdict} — {e(c.get('message'))}</p>", table(["", ""], rows)]
    errors = manifest.get("input_errors") or []
    if errors:
        body.append(
            f"<h3 class='bad'>Input files not read completely ({len(errors)})</h3>"
            + note("Records after the break are lost; the records read before it are in the run.")
        )
        rows = [[x["source"], x["reason"], x["records_read"], x["error"]] for x in errors]
        body.append(table(["file", "reason", "records read", "error"], rows))
    cluster = manifest.get("cluster")
    if cluster:
        engine = {"local": "in process (no Ray)", "ray": "Ray"}.get(cluster.get("engine", "ray"), cluster.get("engine"))
        body.append(
            table(["engine", "nodes", "CPUs", "GPUs"], [[engine, *(cluster.get(k) for k in ("nodes", "cpus", "gpus"))]])
        )
    segs = manifest.get("segments", [])
    if segs:
        body.append("<h3>Segments (one streaming plan each)</h3>")
        rows = [
            [
                s["segment"],
                ", ".join(s["stages"]) or "read",
                s["wall_seconds"],
                s.get("nodes") or "",
                "" if s.get("workers_lost") is None else s["workers_lost"],
                "yes" if s.get("reused") else "",
            ]
            for s in segs
        ]
        heads = ["#", "stages", "wall s", "nodes used", "workers lost (tasks re-run)", "from checkpoint"]
        body.append(table(heads, rows))
    pk = manifest.get("packages", {})
    if pk:
        body.append(note("Packages: " + ", ".join(f"{k} {v}" for k, v in sorted(pk.items()))))
    if manifest.get("recipe_text"):
        body.append(f"<details><summary>Recipe</summary><pre>{e(manifest['recipe_text'])}</pre></details>")
    return Section("overview", "Overview", "\n".join(body))


def funnel(manifest: dict, con) -> Section:
    """Documents and tokens in and out of every stage, and removals by reason."""
    from pipelines import charts

    stages = manifest.get("stages", [])
    if not stages:
        return Section("funnel", "Funnel", note("The manifest records no stages."))
    gone = dict(con.execute(f"SELECT stage, sum({WORDS})::BIGINT FROM removed GROUP BY stage").fetchall())
    kept_words = con.execute(f"SELECT coalesce(sum({WORDS}), 0)::BIGINT FROM docs").fetchone()[0]
    words = kept_words + sum(v or 0 for v in gone.values())
    rows, left_docs, left_words = [], [], []
    for s in stages:
        lost = int(gone.get(s["stage"]) or 0)
        reasons = sorted(s.get("removed", {}).items(), key=lambda kv: (-kv[1], kv[0]))
        secs = s.get("seconds")
        rows.append(
            [
                s["stage"],
                s.get("op", ""),
                s["rows_in"],
                s["rows_out"],
                s["rows_in"] - s["rows_out"],
                words,
                words - lost,
                ", ".join(f"{r} {n:,}" for r, n in reasons),
                "" if secs is None else float(secs),
            ]
        )
        words -= lost
        left_docs.append(s["rows_out"])
        left_words.append(words)
    body = [
        table(
            ["stage", "op", "docs in", "docs out", "removed", "tokens in", "tokens out", "removed by reason", "busy s"],
            rows,
        ),
        charts.funnel([s["stage"] for s in stages], left_docs, left_words),
    ]
    by_reason = [(f"{s['stage']}: {r}", n) for s in stages for r, n in s.get("removed", {}).items()]
    by_reason.sort(key=lambda kv: (-kv[1], kv[0]))
    if by_reason:
        shown = by_reason[:TOP_REASONS]
        title = "removed documents by stage: reason" + (f" (top {TOP_REASONS})" if len(by_reason) > TOP_REASONS else "")
        body.append(charts.bars([k for k, _ in shown], [n for _, n in shown], title, "removed by reason"))
    else:
        body.append(note("No document was removed."))
    body.append(note("Tokens are whitespace-separated words of the stored text. Busy seconds are summed over workers."))
    return Section("funnel", "Funnel", "\n".join(body))


def composition(manifest: dict, con) -> Section:
    """Per-domain documents and tokens read and kept."""
    from pipelines import charts

    rows = con.execute(
        f"""
        WITH r AS (SELECT domain, {WORDS} AS w, 1 AS k FROM docs
                   UNION ALL SELECT domain, {WORDS} AS w, 0 AS k FROM removed)
        SELECT coalesce(domain, '(none)') AS d, count(*), sum(w)::BIGINT, sum(k)::BIGINT,
               sum(CASE WHEN k = 1 THEN w ELSE 0 END)::BIGINT
        FROM r GROUP BY d ORDER BY d
        """
    ).fetchall()
    if not rows:
        return Section("composition", "Composition by domain", note("The run read no documents."))
    model_tokens = {d["domain"]: d.get("tokens") for d in manifest.get("domains", [])}
    total_before = sum(r[1] for r in rows) or 1
    total_after = sum(r[3] for r in rows) or 1
    out = []
    for d, n, w, k, kw in rows:
        out.append(
            [d, n, f"{100 * n / total_before:.1f}%", k, f"{100 * k / total_after:.1f}%", w, kw]
            + ([model_tokens.get(d) if model_tokens.get(d) is not None else ""] if any(model_tokens.values()) else [])
        )
    headers = ["domain", "docs read", "share", "docs kept", "share", "tokens read", "tokens kept"]
    if any(model_tokens.values()):
        headers.append("n_tokens kept (tokenizer)")
    domains = [r[0] for r in rows]
    chart = charts.composition(
        domains,
        {"documents": [r[1] for r in rows], "tokens (words)": [r[2] for r in rows]},
        {"documents": [r[3] for r in rows], "tokens (words)": [r[4] for r in rows]},
    )
    return Section("composition", "Composition by domain", table(headers, out) + "\n" + chart)


def thresholds(manifest: dict, column: str) -> list[tuple[str, float]]:
    """Every threshold the run applied to ``column``, labelled by its stage."""
    out: list[tuple[str, float]] = []
    for s in manifest.get("stages", []):
        rep = s.get("report") or {}
        if s.get("op") == "percentile_filter" and rep.get("column") == column:
            lo, hi = rep.get("band", [None, None])
            for dom, t in sorted(rep.get("thresholds", {}).items()):
                where = "" if dom == "*" else f" [{dom}]"
                if t.get("low") is not None:
                    out.append((f"{s['stage']}: p{lo:g}{where} = {t['low']:.4g}", float(t["low"])))
                if t.get("high") is not None:
                    out.append((f"{s['stage']}: p{hi:g}{where} = {t['high']:.4g}", float(t["high"])))
        if s.get("op") == "betr" and column == "betr" and rep.get("cutoff") is not None:
            out.append((f"{s['stage']}: cutoff = {rep['cutoff']:.4g}", float(rep["cutoff"])))
    params = {st.get("name") or st.get("op"): st for st in (manifest.get("recipe") or {}).get("stages", [])}
    keys = {"ppl": ("perplexity", ("min_ppl", "max_ppl")), "quality": ("quality_classifier", ("threshold",))}
    if column in keys:
        op, names = keys[column]
        for name, st in params.items():
            if st.get("op") == op:
                out += [(f"{name}: {k} = {st[k]:g}", float(st[k])) for k in names if st.get(k) is not None]
    return out


def scores(manifest: dict, con) -> Section:
    """Histograms of the run's score columns (kept and removed rows) with the chosen thresholds."""
    from pipelines import charts

    have = {v: columns(con, v) for v in ("docs", "removed")}
    body: list[str] = []
    for col in SCORE_COLUMNS:
        parts = [
            f"SELECT {col}::DOUBLE AS v, {kept} AS kept FROM {view} WHERE {col} IS NOT NULL"
            for view, kept in (("docs", "true"), ("removed", "false"))
            if col in have[view]
        ]
        if not parts:
            continue
        res = con.execute(" UNION ALL ".join(parts) + " ORDER BY kept DESC, v").fetchnumpy()
        v, kept = np.asarray(res["v"], dtype=np.float64), np.asarray(res["kept"], dtype=bool)
        finite = np.isfinite(v)
        v, kept = v[finite], kept[finite]
        body.append(f"<h3>{e(col)}</h3>")
        if v.size == 0:
            body.append(note(f"The run has a {col} column but no scored row."))
            continue
        ts = thresholds(manifest, col)
        qs = (1, 5, 10, 25, 50, 75, 90, 95, 99)
        pct = np.percentile(v, qs)
        body.append(
            table(
                ["scored", "kept", "removed", *[f"p{q}" for q in qs]],
                [[int(v.size), int(kept.sum()), int((~kept).sum()), *[float(p) for p in pct]]],
            )
        )
        body.append(note("Thresholds: " + "; ".join(t for t, _ in ts)) if ts else note("No threshold on this column."))
        body.append(charts.score_histogram(col, v[kept], v[~kept], ts))
    if not body:
        body.append(note(f"The run has none of the score columns {', '.join(SCORE_COLUMNS)}."))
    return Section("scores", "Scores and thresholds", "\n".join(body))


def dedup(manifest: dict, con) -> Section:
    """Exact-duplicate group sizes and the MinHash plan, S-curve and cluster sizes."""
    from pipelines import charts

    body: list[str] = []
    for s in _stages_of(manifest, "exact_dedup"):
        rep = dict(s.get("report") or {})
        hist = rep.pop("group_size_histogram", None)
        body.append(f"<h3>{e(s['stage'])} (exact)</h3>")
        body.append(table(list(rep) or ["report"], [list(rep.values()) or ["none recorded"]]))
        title = f"{s['stage']}: duplicate groups by size"
        if hist is None:
            body.append(note("Group sizes were not recorded by the run (made before Sluice recorded them)."))
        else:
            body.append(charts.cluster_sizes(hist, title) if hist else note("No duplicates."))
    for s in _stages_of(manifest, "minhash_dedup"):
        rep = s.get("report") or {}
        plan = rep.get("plan") or {}
        body.append(f"<h3>{e(s['stage'])} (MinHash LSH)</h3>")
        keys = ("config", "threshold", "bands", "rows", "expected_fp", "expected_fn", "p_at_threshold")
        body.append(table(list(keys), [[plan.get(k, "") for k in keys]]))
        stats = ("candidate_pairs", "verified_pairs", "clusters", "documents_in_clusters", "duplicates_removed")
        body.append(table(list(stats), [[rep.get(k, "") for k in stats]]))
        if plan.get("bands") and plan.get("rows"):
            body.append(
                charts.minhash(
                    int(plan["bands"]),
                    int(plan["rows"]),
                    float(plan.get("threshold", 0.0)),
                    plan.get("s_curve", {}),
                    rep.get("candidate_jaccard_histogram", {}),
                    rep.get("cluster_size_histogram", {}),
                )
            )
    if not body:
        body.append(note("The run has no dedup stage."))
    return Section("dedup", "Deduplication", "\n".join(body))


def samples(manifest: dict, con, per_reason: int = 3, chars: int = 600) -> Section:
    """A few removed documents per (stage, reason), chosen by a hash of the id, truncated and escaped."""
    have = columns(con, "removed")
    extra = [c if c in have else f"NULL AS {c}" for c in ("dup_of", "error", "raw")]
    rows = con.execute(
        f"""
        SELECT stage, reason, id, domain, {", ".join(extra)}, left(text, ?) AS head, length(text) AS n
        FROM (SELECT *, row_number() OVER (PARTITION BY stage, reason ORDER BY md5(coalesce(id, '')), id) AS k
              FROM removed)
        WHERE k <= ? ORDER BY stage, reason, k
        """,
        [chars, per_reason],
    ).fetchall()
    if not rows:
        return Section("removed", "Removed documents", note("No document was removed."))
    order = {s["stage"]: i for i, s in enumerate(manifest.get("stages", []))}
    rows.sort(key=lambda r: (order.get(r[0], len(order)), r[0], r[1]))
    body: list[str] = [note(f"Up to {per_reason} per reason, first {chars} characters.")]
    current = None
    for stage, reason, doc_id, domain, dup_of, error, raw, head, n in rows:
        if (stage, reason) != current:
            current = (stage, reason)
            body.append(f"<h3>{e(stage)}: {e(reason)}</h3>")
        meta = [f"id <code>{e(doc_id)}</code>", f"domain {e(domain)}"]
        if dup_of:
            meta.append(f"duplicate of <code>{e(dup_of)}</code>")
        if error:
            meta.append(f"error: {e(error[:300])}")
        if head is not None:
            text = head + (f" … [{n - chars:,} more characters]" if n and n > chars else "")
        elif raw is not None:
            text = "raw input: " + bytes(raw[:chars]).decode("utf-8", "replace")
        else:
            text = "(no text)"
        body.append(f'<div class="sample"><div>{" · ".join(meta)}</div><pre>{e(text)}</pre></div>')
    return Section("removed", "Removed documents", "\n".join(body))


# ---------------------------------------------------------------- the page
def calibration(manifest: dict) -> Section:
    """The table `sluice calibrate` wrote into the recipe: per stage, domain and rule, the threshold
    before and after, and the share of reference and corpus it removes."""
    rec = (manifest.get("recipe") or {}).get("calibration")
    if not rec:
        return Section("calibration", "Filter calibration", note("The recipe was not calibrated (`sluice calibrate`)."))

    def pct(v: Any) -> str:
        return "" if v is None else f"{100 * v:.1f}%"

    rows = [
        [
            r["stage"],
            r["domain"],
            r["param"],
            r["before"],
            r["after"],
            pct(r["reference_removed_before"]),
            pct(r["reference_removed_after"]),
            pct(r["corpus_removed_before"]),
            pct(r["corpus_removed_after"]),
        ]
        for r in rec.get("rules", [])
    ]
    heads = ["stage", "domain", "rule", "before", "after", "ref. removed", "→ after", "corpus removed", "→ after"]
    intro = note(
        f"Thresholds relaxed per domain to keep {100 * rec.get('keep', 0):.0f}% of a trusted reference "
        f"({', '.join(f'{d}: {n}' for d, n in rec.get('reference_docs', {}).items())} documents); "
        "a document is counted under the first rule it fails."
    )
    return Section("calibration", "Filter calibration", intro + table(heads, rows))


def build_report(out_dir: str, *, per_reason: int = 3, chars: int = 600) -> str:
    """The report of the finished run in ``out_dir`` as one HTML string."""
    from storage.views import connect

    manifest = read_manifest(out_dir)
    con = connect(out_dir, manifest)
    sections = [
        overview(manifest, out_dir),
        funnel(manifest, con),
        composition(manifest, con),
        scores(manifest, con),
        dedup(manifest, con),
        calibration(manifest),
        samples(manifest, con, per_reason, chars),
    ]
    nav = " ".join(f'<a href="#{s.id}">{e(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Sluice report: {e(out_dir)}</title><style>{CSS}</style></head><body>",
        f"<h1>Sluice run report</h1><p class='note'>{e(out_dir)}</p><nav>{nav}</nav>",
    ]
    parts += [f'<section id="{s.id}"><h2>{e(s.title)}</h2>\n{s.body}\n</section>' for s in sections]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(out_dir: str, dest: str | None = None) -> str:
    """Write the report of ``out_dir`` to ``dest`` (default ``OUT/report.html``) through a temporary name.

    Refuses to write anywhere inside the run but ``OUT/report.html``, or over an existing file
    that is not a Sluice report.
    """
    out_dir = out_dir.rstrip("/")
    dest = dest or f"{out_dir}/{REPORT}"
    rd = RunDir(out_dir)
    target = real(dest)
    inside = target == rd.root or target.startswith(rd.root + "/")
    if inside and target != f"{rd.root}/{REPORT}":
        raise UnsafePathError(f"refusing to write the report to {dest!r}: inside the run only {REPORT} is the report's")
    page = build_report(out_dir).encode("utf-8")
    fs, path = resolve(dest)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        raise UnsafePathError(f"refusing to write the report to {dest!r}: it is a directory")
    if info.type == pafs.FileType.File:
        with fs.open_input_stream(path) as f:
            head = f.read(4096)
        if b"<title>Sluice report" not in head:
            raise UnsafePathError(f"refusing to overwrite {dest!r}: it exists and is not a Sluice report")
    with rd.lock("sluice report") if inside else contextlib.nullcontext():
        atomic_write(fs, path, page)
    logger.info("report: %s (%d bytes)", dest, len(page))
    return dest
