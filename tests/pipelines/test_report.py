"""sluice report: sections, numbers that agree with the run, inline PNGs, escaping, and a real browser."""

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from operators.classifier import train_classifier
from pipelines.cli import app
from pipelines.recipe import parse_recipe
from pipelines.report import build_report, write_report
from pipelines.runner import run
from storage.shards import read_shards
from tests.conftest import write_jsonl
from tests.operators.test_classifier import topic_doc

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE_TEXT = '<script>alert("pwned")</script>'
HOSTILE_ID = "<img src=x onerror=alert(1)>"
SECTIONS = ("overview", "funnel", "composition", "scores", "dedup", "calibration", "removed")


def _near(text: str) -> str:
    """The same document with its fifth word replaced (word 5-gram Jaccard ≈ 0.9 at 120 words)."""
    words = text.split(" ")
    words[4] = "zucchini"
    return " ".join(words)


@pytest.fixture(scope="module")
def curated(tmp_path_factory, ray_session):
    """Two domains, exact and near duplicates, quality scores with a top-half band, hostile removed rows."""
    root = tmp_path_factory.mktemp("report")
    write_jsonl(root / "pos.jsonl", [{"text": topic_doc("cooking", i)} for i in range(40)])
    write_jsonl(root / "neg.jsonl", [{"text": topic_doc("sports", i)} for i in range(40)])
    train_classifier([str(root / "pos.jsonl")], [str(root / "neg.jsonl")], str(root / "q.bin"), epoch=20, bucket=20_000)
    cook = [{"id": f"c{i:02d}", "text": topic_doc("cooking", 100 + i, 120)} for i in range(14)]
    cook += [{"id": f"cnear{i}", "text": _near(cook[i]["text"])} for i in range(3)]
    cook.append({"id": HOSTILE_ID, "text": HOSTILE_TEXT})
    sport = [{"id": f"s{i:02d}", "text": topic_doc("sports", 100 + i, 120)} for i in range(14)]
    sport += [{"id": f"sdup{i}", "text": sport[i]["text"].upper()} for i in range(3)]
    write_jsonl(root / "in" / "cook.jsonl", [*cook, b'{"id": "x", "text": "<script>bad()</script>'])
    write_jsonl(root / "in" / "sport.jsonl", sport)
    m = run(
        parse_recipe(
            f"""inputs:
  - {{path: "{root}/in/cook.jsonl", domain: cook, id_field: id}}
  - {{path: "{root}/in/sport.jsonl", domain: sport, id_field: id}}
stages:
  - {{op: normalize}}
  - {{op: length, min_chars: 60}}
  - {{op: exact_dedup}}
  - {{op: minhash_dedup, threshold: 0.8}}
  - {{op: quality_classifier, model: "{root}/q.bin", top_fraction: 0.5}}
output: {{dir: "{root}/run", shard_mb: 0.002}}
"""
        )
    )
    assert m["conservation"]["ok"]
    return root / "run", m


@pytest.fixture(scope="module")
def page(curated):
    out, _ = curated
    path = write_report(str(out))
    return Path(path).read_text()


class Tables(HTMLParser):
    """Rows of every table inside each <section>, as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[list[list[str]]]] = {}
        self._section: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self._section = dict(attrs)["id"]
            self.sections[self._section] = []
        elif tag == "table" and self._section:
            self.sections[self._section].append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append("".join(self._cell or []))
            self._cell = None
        elif tag == "tr" and self._section and self._row is not None:
            self.sections[self._section][-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _tables(html: str) -> dict[str, list[list[list[str]]]]:
    p = Tables()
    p.feed(html)
    return p.sections


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def _num(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_sections_and_numbers_agree_with_the_run(curated, page):
    out, m = curated
    tables = _tables(page)
    assert tuple(tables) == SECTIONS
    funnel = tables["funnel"][0]
    assert funnel[0][:5] == ["stage", "op", "docs in", "docs out", "removed"]
    got = [(r[0], _num(r[2]), _num(r[3])) for r in funnel[1:]]
    assert got == [(s["stage"], s["rows_in"], s["rows_out"]) for s in m["stages"]]
    kept_words = sum(len(t.split()) for t in read_shards(str(out / "shards")).column("text").to_pylist())
    assert _num(funnel[-1][6]) == kept_words  # tokens out of the last stage = words of the kept shards
    assert "exact_duplicate 3" in funnel[[r[0] for r in funnel].index("exact_dedup")][7]
    comp = {r[0]: r for r in tables["composition"][0][1:]}
    assert set(comp) == {"cook", "sport"}
    kept = {d["domain"]: d["docs"] for d in m["domains"]}
    assert {d: _num(r[3]) for d, r in comp.items() if _num(r[3])} == kept
    assert sum(_num(r[1]) for r in comp.values()) == m["conservation"]["read"]
    # the quality band's threshold is on the histogram; minhash plan and S-curve are there
    assert "<h3>quality</h3>" in page and "quality_classifier_top: p50" in page
    assert 'alt="MinHash S-curve' in page and "w5ng_14bs_9hs" in page
    assert 'alt="exact_dedup: duplicate groups by size"' in page
    for reason in ("input_bad_json", "length_too_short", "exact_duplicate", "minhash_duplicate", "quality_below_band"):
        assert f": {reason}</h3>" in page


def test_images_are_inline_pngs_that_decode(page):
    import matplotlib.image

    pngs = _pngs(page)
    # funnel + reasons, composition, one score histogram, exact groups, minhash
    assert len(pngs) == 6
    for data in pngs:
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert float(np.std(pixels[..., :3])) > 0.01  # not a blank canvas
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_hostile_text_is_escaped(page):
    assert "<script" not in page  # no scripts at all, and removed text cannot inject one
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page
    assert "&lt;script&gt;bad()&lt;/script&gt;" in page  # raw bytes of a malformed input line
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_report_is_deterministic(curated, page):
    out, _ = curated
    assert build_report(str(out)) == page


def test_sections_degrade_when_the_run_lacks_stages(tmp_path, ray_session):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": f"a{i}", "text": f"document number {i}"} for i in range(5)])
    run(
        parse_recipe(
            f'inputs:\n  - {{path: "{tmp_path}/in/a.jsonl", domain: web, id_field: id}}\n'
            f'output: {{dir: "{tmp_path}/run"}}\n'
        )
    )
    html = build_report(str(tmp_path / "run"))
    assert tuple(_tables(html)) == SECTIONS
    assert "The run has none of the score columns ppl, quality, betr." in html
    assert "The run has no dedup stage." in html
    assert "No document was removed." in html
    assert len(_pngs(html)) == 2  # funnel and composition


def test_cli_writes_the_report_and_prints_its_path(curated, tmp_path):
    out, _ = curated
    dest = tmp_path / "sub" / "r.html"
    res = CliRunner().invoke(app, ["report", str(out), "-o", str(dest)])
    assert res.exit_code == 0, res.output
    assert f"Report: {dest}" in res.output and dest.read_text().startswith("<!DOCTYPE html>")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "no manifest.json" in res.output


PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images).map(i => (i.complete ? i.naturalWidth : 0) + "x" + i.naturalHeight);
  const secs = Array.from(document.querySelectorAll("section")).map(s => s.id + ":" + Math.round(s.offsetHeight));
  document.body.setAttribute("data-images", imgs.join(","));
  document.body.setAttribute("data-sections", secs.join(","));
});
</script>
"""


def test_renders_in_headless_chromium(page, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"headless Chromium not found at {CHROMIUM}: `apt-get install chromium` (.ci/run installs it)")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))  # the test's script, not the report's
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probe.as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    assert res.returncode == 0, res.stderr[-2000:]
    images = re.search(r'data-images="([^"]*)"', res.stdout)
    sections = re.search(r'data-sections="([^"]*)"', res.stdout)
    assert images and sections, res.stdout[:500]
    sizes = [tuple(int(v) for v in s.split("x")) for s in images.group(1).split(",")]
    assert len(sizes) == len(_pngs(page)) and all(w > 100 and h > 100 for w, h in sizes)
    heights = dict(s.split(":") for s in sections.group(1).split(","))
    assert list(heights) == list(SECTIONS) and all(int(h) > 40 for h in heights.values())
