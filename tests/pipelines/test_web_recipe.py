"""pipelines/recipes/web.yaml end to end on a small crawl: every kind of page ends where the recipe sends it."""

from __future__ import annotations

import ast
import json
import re
import sysconfig
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytest.importorskip("fastwarc")
pytest.importorskip("warcio")
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from operators.pii import EMAIL_REPLACEMENT, IP_REPLACEMENTS, PHONE_REPLACEMENT
from operators.words import split_words
from pipelines.recipe import parse_recipe
from pipelines.runner import run
from storage.shards import read_shards
from storage.views import connect
from tests.warcs import write_response

RECIPE = Path(__file__).parents[2] / "pipelines" / "recipes" / "web.yaml"
MULTILINGUAL = Path(__file__).parents[1] / "data" / "manpages_multilingual.jsonl"
HTML = [("Content-Type", "text/html; charset=UTF-8")]
EMAIL, PHONE, IP = "maria.keller@harbourtimes.example", "+1 415 555 2671", "93.184.216.34"
#: a recipe page's lines: short, unpunctuated
PANCAKES = (
    "a cup of flour, two large eggs, a pinch of salt, half a cup of milk, one spoon of sugar, some melted butter, "
    "mix the dry things, whisk in the eggs, pour in the milk, stir until smooth, rest for an hour, heat a heavy pan, "
    "add a little butter, pour a thin layer, cook until golden, turn it over once, serve with lemon, or with fresh "
    "berries, keep them warm, enjoy them hot"
)


def english_paragraphs() -> list[str]:
    """Prose paragraphs of the Python reference (pydoc's topics) and the standard library's docstrings: real
    English without code, markup or many symbols (a web page's article text, not its navigation)."""
    import pydoc_data.topics

    texts = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    lib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(lib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and (doc := ast.get_docstring(node)):
                texts.append(doc)
    out, seen = [], set()
    for text in texts:
        for p in re.split(r"\n\s*\n", text):
            p = " ".join(p.split())
            if len(p.split()) < 30 or not p.endswith(".") or not p[0].isupper() or p in seen:
                continue
            if re.search(r"[{}<>|\[\]=*`_]|>>>|\.\.\.|::", p):
                continue
            words = split_words(p)
            if sum(any(c.isalpha() for c in w) for w in words) / len(words) >= 0.84:
                seen.add(p)
                out.append(p)
    return out


def page(site: str, title: str, paragraphs: list[str], lang: str = "en") -> bytes:
    """A news-site page: header, navigation, the article, related links, a cookie banner and a footer."""
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8"><title>{title} | {site}</title>'
        "<script>window.dataLayer = window.dataLayer || []; function gtag(){dataLayer.push(arguments);}</script>"
        f'</head><body><header><a class="logo" href="/">{site}</a></header>'
        '<nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li><li><a href="/science">Science</a>'
        '</li><li><a href="/about">About us</a></li><li><a href="/contact">Contact</a></li></ul></nav>'
        f'<main><article><h1>{title}</h1><p class="byline">By Staff Writer, May 1, 2024</p>{body}</article>'
        '<aside><h2>Related</h2><ul><li><a href="/a">More from this section</a></li>'
        '<li><a href="/b">Most read this week</a></li></ul></aside></main>'
        '<div class="cookies">This site uses cookies. <a href="/privacy">Privacy policy</a></div>'
        f"<footer><p>© 2024 {site}. All rights reserved.</p></footer></body></html>"
    ).encode()


class Crawl:
    """Writes the WARC: a warcinfo record, then responses whose WARC-Record-IDs sort in the order they are added
    (so the first page of a group of near duplicates is the MinHash survivor), noting the reason each should get."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.w = WARCWriter(self.f, gzip=True)
        self.records = 1
        self.expect: dict[str, str | None] = {}  # url -> reason (None: kept)
        self.w.write_record(self.w.create_warcinfo_record(path.name, {"software": "sluice tests"}))

    def add(self, url: str, body: bytes, reason: str | None, headers=HTML, status: str = "200 OK") -> None:
        self.records += 1
        write_response(
            self.w, url, body, headers, status, rid=f"<urn:uuid:00000000-0000-4000-8000-{self.records:012d}>"
        )
        self.expect[url] = reason

    def request(self, url: str) -> None:
        self.records += 1
        req = StatusAndHeaders("GET / HTTP/1.1", [("Host", url.split("/")[2])], is_http_request=True)
        self.w.write_record(self.w.create_warc_record(url, "request", payload=None, http_headers=req))

    def close(self) -> None:
        self.f.close()


def build(root: Path) -> dict:
    """The crawl, block lists and eval set under ``root``; returns what the tests check against."""
    paras = english_paragraphs()
    assert len(paras) >= 123, len(paras)  # enough distinct prose for every article below
    art = [paras[i : i + 4] for i in range(0, 120, 4)]  # 30 articles of 4 paragraphs
    passages = paras[120:123]  # the eval set's reading passages; the second is planted in an article
    other = {r["lang"]: r["text"] for r in map(json.loads, MULTILINGUAL.read_text().splitlines())}
    news = "https://www.harbourtimes.example"

    (root / "crawl").mkdir(parents=True)
    c = Crawl(root / "crawl" / "CC-MAIN-2024-18-00000.warc.gz")
    for i in range(18):
        c.add(f"{news}/news/2024/05/story-{i}", page("Harbour Times", f"Story {i}", art[i]), None)
    c.request(f"{news}/news/2024/05/story-0")
    # near duplicates: a syndicated copy (other chrome, a credit line) and the page again with a tracking query;
    # a mirror of a blog post. The original has the lowest record id, so it survives.
    c.add(f"{news}/science/tides", page("Harbour Times", "Tides", art[18]), None)
    credit = "This article first appeared in the Harbour Times and is republished here with permission."
    syndicated = page("Daily Digest", "Tides explained", [*art[18], credit])
    c.add("https://dailydigest.example.net/syndicated/tides", syndicated, "minhash_duplicate")
    c.add(f"{news}/science/tides?utm_source=newsletter", page("Harbour Times", "Tides", art[18]), "minhash_duplicate")
    c.add("https://blog.example.org/2024/04/notes", page("Example Blog", "Notes", art[19]), None)
    c.add(
        "https://mirror.example.com/blog.example.org/2024/04/notes",
        page("Mirror", "Notes", art[19]),
        "minhash_duplicate",
    )
    # personal data: the page is kept with its e-mail address, phone number and public IP address replaced
    contact = (
        f"Readers who spot an error can write to the editor at {EMAIL} or call the newsroom on {PHONE} on weekdays. "
        f"The archive server at {IP} keeps every correction we have published since the spring."
    )
    c.add(
        f"{news}/about/corrections", page("Harbour Times", "Corrections", [*art[20][:2], contact, *art[20][2:]]), None
    )
    # a benchmark's passage copied verbatim into an article
    quiz = page("Quiz Corner", "Reading practice", [*art[21][:2], passages[1], *art[21][2:]])
    c.add("https://quizzes.example.org/reading/7", quiz, "decontaminated")
    # block lists: a domain (with its subdomains), a URL prefix, a word in the URL
    c.add("https://www.lucky-casino.example/blog/odds", page("Lucky", "Odds", art[22]), "url_blocked_domain")
    c.add("https://lucky-casino.example/", page("Lucky", "Welcome", art[23]), "url_blocked_domain")
    c.add("https://pages.example.net/~promo/offer", page("Promo", "Offer", art[24]), "url_blocked_url")
    c.add("https://shop.example.com/cheap-viagra-online", page("Shop", "Pills", art[25]), "url_blocked_word")
    # other languages (translated manual pages)
    fr = page("Exemple", "La commande test", [other["fr"]], "fr")
    c.add("https://www.exemple.fr/manuel/test", fr, "language_not_kept")
    de = page("Beispiel", "Das Handbuch", [other["de"]], "de")
    c.add("https://www.beispiel.de/handbuch/addftinfo", de, "language_not_kept")
    # what extraction and the web rules are for: an app shell with no text until its script runs, an index of links
    # (extraction keeps only its heading), a "not found" page sent with status 200, a page repeating one line, a
    # recipe whose lines are short and unpunctuated, a code tutorial
    shell = '<!DOCTYPE html><html><head><title>App</title></head><body><div id="root"></div>'
    shell += '<script src="/static/app.js"></script></body></html>'
    c.add("https://app.example.io/dashboard", shell.encode(), "extract_empty")
    links = "".join(f'<li><a href="/n/{i}">{p.split(".")[0][:60]}</a></li>' for i, p in enumerate(art[26]))
    index = f"<!DOCTYPE html><html><body><main><h1>Archive</h1><ul>{links}</ul></main></body></html>"
    c.add(f"{news}/archive", index.encode(), "language_low_score")
    sorry = "Sorry, we could not find the story you were looking for. Try the search box or our latest news."
    soft404 = page("Harbour Times", "Page not found", [sorry])
    c.add(f"{news}/news/2023/old-story", soft404, "gopher_short_doc")
    spam = page("Deals", "Best deals", ["Buy now and save big on the best deals of the year, only today."] * 12)
    c.add("https://deals.example.info/best-deals", spam, "dup_para_frac")
    intro = ["These are the pancakes my grandmother made every Sunday, and they take about an hour with the rest."]
    c.add(
        "https://recipes.example.org/pancakes",
        page("Recipes", "Pancakes", intro + PANCAKES.split(", ")),
        "line_punct_ratio",
    )
    tutorial = [*art[27][:2], 'The settings file is plain JSON, for example {"retries": 3, "timeout": 30} on one line.']
    c.add("https://docs.example.dev/tutorial/settings", page("Docs", "Settings", tutorial), "curly_bracket")
    # not documents
    pdf = [("Content-Type", "application/pdf")]
    c.add(f"{news}/media/report.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "input_not_html", headers=pdf)
    gone = b"<html><body><h1>Not Found</h1></body></html>"
    c.add(f"{news}/news/gone", gone, "input_http_status", status="404 Not Found")
    moved = [("Location", f"{news}/"), ("Content-Type", "text/html")]
    c.add("http://harbourtimes.example/", b"", "input_http_status", headers=moved, status="301 Moved Permanently")
    c.close()

    lists = root / "lists"
    lists.mkdir()
    (lists / "domains").write_text(
        "# one domain a line; subdomains are blocked too\nlucky-casino.example\nother.example\n"
    )
    (lists / "urls").write_text("pages.example.net/~promo\n")
    (lists / "banned_words.txt").write_text("viagra\nporn\n")
    evals = root / "evals" / "benchmarks.jsonl"
    evals.parent.mkdir()
    items = [
        {
            "id": f"rc-{i}",
            "context": p,
            "question": "Which statement does the passage make?",
            "answer": p.split(". ")[0],
        }
        for i, p in enumerate(passages)
    ]
    evals.write_text("".join(json.dumps(item) + "\n" for item in items))
    return {"expect": c.expect, "records": c.records, "evals": str(evals)}


def recipe_for(root: Path) -> str:
    """web.yaml as shipped, its input, lists, eval set and output pointed at the test's files."""
    r = yaml.safe_load(RECIPE.read_text())
    r["inputs"][0]["path"] = str(root / "crawl" / "*.warc.gz")
    for st in r["stages"]:
        if st["op"] == "url_filter":
            for key in ("block_domains", "block_urls", "block_words"):
                st[key] = str(root / "lists" / Path(st[key]).name)
        if st["op"] == "decontaminate":
            st["eval_sets"] = [str(root / "evals" / Path(st["eval_sets"][0]).name)]
    r["output"] = {"dir": str(root / "out"), "shard_mb": 0.01}  # several shards
    return yaml.safe_dump(r, sort_keys=False)


@pytest.fixture(scope="module")
def web(tmp_path_factory, ray_session):
    """One run of the recipe on the crawl: what was planted, the manifest, kept and removed rows, the run dir."""
    root = tmp_path_factory.mktemp("web")
    crawl = build(root)
    text = recipe_for(root)
    manifest = run(parse_recipe(text, source=str(RECIPE)), recipe_text=text)
    out = root / "out"
    kept, removed = (read_shards(str(out / d)).to_pylist() for d in ("shards", "removed"))
    return SimpleNamespace(crawl=crawl, manifest=manifest, kept=kept, removed=removed, out=out)


def test_the_shipped_recipe_runs_finewebs_steps_in_finewebs_order_with_its_values():
    r = yaml.safe_load(RECIPE.read_text())
    assert r["inputs"][0]["format"] == "warc"
    ops = [s["op"] for s in r["stages"]]
    assert ops == [
        "url_filter",
        "extract",
        "language_id",
        "gopher_repetition",
        "gopher_quality",
        "c4",
        "fineweb_quality",
        "minhash_dedup",
        "pii",
        "decontaminate",
        "tokenize",
        "split",
    ]
    st = {s["op"]: s for s in r["stages"]}
    assert st["language_id"]["languages"] == ["en"] and st["language_id"]["min_score"] == 0.65
    assert st["c4"]["filter_no_terminal_punct"] is False
    mh = st["minhash_dedup"]
    assert (mh["ngram"], mh["bands"], mh["rows"], mh["num_perm"]) == (5, 14, 8, 112)
    # the filters run at their defaults, which are FineWeb's (tests/operators check the defaults themselves)
    assert set(st["gopher_repetition"]) == set(st["gopher_quality"]) == set(st["fineweb_quality"]) == {"op"}


def test_every_kind_of_page_ends_with_its_reason(web):
    crawl, kept, removed = web.crawl, web.kept, web.removed
    pages = {r["url"]: r["reason"] for r in removed if r["reason"] != "input_not_response"}
    assert pages == {u: why for u, why in crawl["expect"].items() if why is not None}
    assert sorted(r["url"] for r in kept) == sorted(u for u, why in crawl["expect"].items() if why is None)
    others = sorted(r["error"] for r in removed if r["reason"] == "input_not_response")
    assert others == ["WARC-Type: request", "WARC-Type: warcinfo"]
    by_url = {r["url"]: r for r in removed}
    assert by_url["https://lucky-casino.example/"]["error"] == "block_domains: lucky-casino.example"
    assert by_url["https://shop.example.com/cheap-viagra-online"]["error"] == "block_words: viagra"
    # near duplicates point at the original, which is kept with its cluster's size
    kept_by_url = {r["url"]: r for r in kept}
    tides = kept_by_url["https://www.harbourtimes.example/science/tides"]
    notes = kept_by_url["https://blog.example.org/2024/04/notes"]
    assert (tides["dup_cluster_size"], notes["dup_cluster_size"]) == (3, 2)
    dup_of = {r["url"].split("/")[2]: r["dup_of"] for r in removed if r["reason"] == "minhash_duplicate"}
    assert dup_of == {
        "dailydigest.example.net": tides["id"],
        "www.harbourtimes.example": tides["id"],
        "mirror.example.com": notes["id"],
    }


def test_kept_pages_reach_the_shards_with_url_date_language_tokens_split_and_no_pii(web):
    kept = web.kept
    assert len(kept) == 21
    for r in kept:
        assert r["url"].startswith("https://") and r["warc_record_id"] == r["id"]
        assert r["date"] == datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
        assert r["language"] == "en" and r["language_score"] >= 0.65
        assert r["n_tokens"] == len(r["tokens"]) > 100 and r["split"] in ("train", "holdout")
        assert "Home" not in r["text"] and "All rights reserved" not in r["text"] and "cookies" not in r["text"]
    text = next(r["text"] for r in kept if r["url"].endswith("/about/corrections"))
    assert EMAIL_REPLACEMENT in text and PHONE_REPLACEMENT in text and any(ip in text for ip in IP_REPLACEMENTS)
    assert not any(pii in r["text"] for r in kept for pii in (EMAIL, PHONE, IP))


def test_the_manifest_balances_and_reports_each_stage(web):
    crawl, m, kept, removed = web.crawl, web.manifest, web.kept, web.removed
    assert m["conservation"]["ok"]
    assert (m["conservation"]["read"], m["conservation"]["kept"]) == (crawl["records"], len(kept))
    assert m["conservation"]["removed"] == len(removed)
    stages = {s["stage"]: s for s in m["stages"]}
    assert stages["url_filter"]["removed"] == {"url_blocked_domain": 2, "url_blocked_url": 1, "url_blocked_word": 1}
    assert stages["language_id"]["report"]["language_id"]["languages"]["fr"] == 1
    assert stages["minhash_dedup"]["report"]["duplicates_removed"] == 3
    assert stages["pii"]["report"]["pii"] == {"email": 1, "phone": 1, "ip": 1}
    found = stages["decontaminate"]["report"]["decontamination"]["sets"][crawl["evals"]]
    assert (found["items"], found["items_found"], found["documents"], found["items_hit"]) == (3, 1, 1, {"1": 1})
    assert stages["tokenize"]["rows_out"] == len(kept) and m["domains"][0]["tokens"] > 0


def test_inspect_finds_pages_by_url(web):
    con = connect(str(web.out))
    q = "SELECT reason, url FROM removed WHERE stage = 'url_filter' ORDER BY reason, url"
    assert [r[0] for r in con.execute(q).fetchall()] == [
        "url_blocked_domain",
        "url_blocked_domain",
        "url_blocked_url",
        "url_blocked_word",
    ]
    q = "SELECT count(*) FROM docs WHERE url LIKE 'https://www.harbourtimes.example/%' AND split IS NOT NULL"
    assert con.execute(q).fetchone()[0] == 20
