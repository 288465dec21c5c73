"""Web pages whose main text is known, for ``bench_extract``: Debian's HTML documentation, as-is and wrapped.

Three kinds of page, each with its known main text and its known boilerplate lines:

* ``python``   — pages of the Python 3.11 manual (``python3.11-doc``, Sphinx) as installed: the main
  text is the ``role="main"`` body; boilerplate is the navigation bars, the sidebar (table of
  contents, previous/next topic, "This Page") and the footer.
* ``postgres`` — pages of the PostgreSQL 15 manual (``postgresql-doc-15``, DocBook) as installed:
  the main text is everything but the ``navheader``/``navfooter`` tables.
* ``web``      — the main content of other pages of both manuals (its HTML, code blocks and tables
  included) inside a generated news/blog-style layout: a header with the site's menu, a cookie banner,
  breadcrumbs, share buttons, a "popular posts" sidebar, a newsletter box, related links and a footer.
  A third of the layouts use semantic tags (``header``, ``nav``, ``aside``, ``footer``), a third only
  ``div``s with descriptive class names, a third ``div``s with opaque generated class names (as
  CSS-in-JS sites have), so an extractor cannot lean on names. Page ``i`` is a pure function of (seed, i).

The packages are downloaded with ``apt-get download`` and unpacked with ``dpkg-deb -x``
(:func:`fetch_debs`). Pages whose main text has fewer than 50 words are left out (index pages).
"""

from __future__ import annotations

import html
import html.parser
import random
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("python3.11-doc", "postgresql-doc-15")
PYTHON_HTML = "usr/share/doc/python3.11/html"
POSTGRES_HTML = "usr/share/doc/postgresql-doc-15/html"


def fetch_debs(root: Path) -> Path:
    """Download the two packages with ``apt-get download`` and unpack them under ``root/tree``."""
    debs, tree = root / "debs", root / "tree"
    debs.mkdir(parents=True, exist_ok=True)
    for pkg in PACKAGES:
        if not list(debs.glob(f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True, capture_output=True)
    for pkg in PACKAGES:
        for deb in sorted(debs.glob(f"{pkg}_*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    return tree


@dataclass
class Page:
    """One page: its HTML, the main text a perfect extractor returns, and the boilerplate lines it must not."""

    name: str
    kind: str
    html: str
    truth: str
    boiler: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- regions of a page
BLOCK = frozenset((
    "p", "div", "br", "li", "ul", "ol", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd", "dl",
    "table", "title", "section", "article", "header", "footer", "nav", "aside", "blockquote", "form", "figure",
    "figcaption", "main", "caption",
))  # fmt: skip
VOID = frozenset(("meta", "link", "img", "br", "hr", "col", "input", "area", "base", "source", "wbr"))
BOILER_TAGS = frozenset({"nav", "header", "footer", "aside"})
BOILER_CLASSES = frozenset((
    "related", "sphinxsidebar", "footer", "navheader", "navfooter", "mobile-nav", "cookie-banner", "top-bar", "menu",
    "breadcrumbs", "share", "sidebar", "widget", "newsletter", "site-footer", "related-posts",
))  # fmt: skip
SKIP_TAGS = frozenset({"script", "style", "head", "noscript", "svg", "button", "label", "select"})
SKIP_CLASSES = frozenset({"headerlink"})


class Regions(html.parser.HTMLParser):
    """Split a page's visible text into main text and boilerplate lines.

    Main text is inside the ``role="main"`` element when the page has one (else the whole body)
    and outside every boilerplate region; boilerplate regions are ``nav``/``header``/``footer``/
    ``aside`` elements, ``role="navigation"`` and the classes in :data:`BOILER_CLASSES`.
    """

    def __init__(self, has_main: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.has_main = has_main
        self.stack: list[tuple[str, bool, bool, bool]] = []  # (tag, opens main, opens boiler, opens skip)
        self.main = self.boiler = self.skip = self.pre = 0
        self.main_parts: list[str] = []
        self.boiler_parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            if tag == "br":
                self._brk()
            return
        a = dict(attrs)
        cls = set((a.get("class") or "").split())
        is_main = a.get("role") == "main"
        is_boiler = tag in BOILER_TAGS or a.get("role") == "navigation" or bool(cls & BOILER_CLASSES)
        is_skip = tag in SKIP_TAGS or bool(cls & SKIP_CLASSES) or "hidden" in a
        self.stack.append((tag, is_main, is_boiler, is_skip))
        self.main += is_main
        self.boiler += is_boiler
        self.skip += is_skip
        self.pre += tag == "pre"
        if tag in BLOCK:
            self._brk()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID or not any(t == tag for t, *_ in self.stack):
            return
        while self.stack:
            t, m, b, s = self.stack.pop()
            self.main -= m
            self.boiler -= b
            self.skip -= s
            self.pre -= t == "pre"
            if t in BLOCK:
                self._brk()
            if t == tag:
                break

    def _brk(self) -> None:
        self.main_parts.append("\n")
        self.boiler_parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        text = data if self.pre else re.sub(r"\s+", " ", data)
        if self.boiler:
            self.boiler_parts.append(text)
        elif self.main or not self.has_main:
            self.main_parts.append(text)

    @staticmethod
    def _lines(parts: list[str]) -> list[str]:
        return [ln.strip() for ln in "".join(parts).splitlines() if ln.strip()]


def regions(markup: str) -> tuple[str, list[str]]:
    """(main text, boilerplate lines) of a page."""
    p = Regions(has_main='role="main"' in markup)
    p.feed(markup)
    p.close()
    return "\n".join(Regions._lines(p.main_parts)), Regions._lines(p.boiler_parts)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _main_html(markup: str, kind: str) -> str:
    """The HTML of a manual page's main content (what the ``web`` kind wraps)."""
    if kind == "python":
        m = re.search(
            r'<div class="body" role="main">(.*?)</div>\s*</div>\s*</div>\s*<div class="sphinxsidebar"', markup, re.S
        )
        return m.group(1) if m else ""
    body = re.search(r"<body[^>]*>(.*)</body>", markup, re.S | re.I)
    inner = body.group(1) if body else markup
    inner = re.sub(r'<div class="navheader">.*?</div>', "", inner, count=1, flags=re.S)
    return re.sub(r'<div class="navfooter">.*?</div>', "", inner, count=1, flags=re.S)


# ---------------------------------------------------------------- the generated layouts
SITES = ("The Daily Query", "Dev Notes Weekly", "Open Docs Hub", "Northwind Tech Review", "Byte Street Journal")
MENU = (
    "Home", "News", "Tutorials", "Reviews", "Downloads", "Community", "Events", "Podcast", "About us", "Contact",
    "Careers", "Advertise", "Newsletter", "Shop",
)  # fmt: skip
COOKIE = (
    "We use cookies to improve your experience on our site and to show you relevant advertising.",
    "By continuing to browse, you agree to our use of cookies as described in our Cookie Policy.",
)
COOKIE_BUTTONS = ("Accept all", "Reject all", "Manage preferences")
SHARE = ("Share on Facebook", "Share on X", "Share on LinkedIn", "Email this article", "Print")
NEWSLETTER = ("Subscribe to our newsletter", "Get the latest articles delivered to your inbox every week.", "Subscribe")
FOOTER_LINKS = ("Privacy policy", "Terms of use", "Cookie settings", "Imprint", "Accessibility", "Sitemap", "RSS")


def _ul(items: list[str], cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<ul{c}>" + "".join(f'<li><a href="/{i}">{html.escape(t)}</a></li>' for i, t in enumerate(items)) + "</ul>"


def web_page(rng: random.Random, title: str, main_html: str, others: list[str]) -> tuple[str, list[str], str]:
    """A news/blog-style page around ``main_html``; returns (html, boilerplate lines, layout)."""
    site = rng.choice(SITES)
    menu = rng.sample(MENU, rng.randint(6, 10))
    popular = rng.sample(others, min(5, len(others)))
    related = rng.sample(others, min(3, len(others)))
    crumbs = ["Home", rng.choice(["Tutorials", "Docs", "Guides", "Articles"]), title]
    year = rng.randint(2015, 2025)
    date = f"{rng.choice(['March', 'June', 'October', 'December'])} {rng.randint(1, 28)}, {year}"
    author = rng.choice(["Jane Smith", "Arjun Patel", "Mei Chen", "Lucas Martin", "Amara Okafor"])
    footer = [f"© {year} {site}. All rights reserved.", *rng.sample(FOOTER_LINKS, 5), "123 Market Street, Springfield"]
    # layouts: semantic tags; divs with descriptive classes; divs with opaque generated classes (CSS-in-JS)
    layout = rng.choice(["semantic", "named", "opaque"])
    cookie_top = rng.random() < 0.5
    H, N, A, F = ("header", "nav", "aside", "footer") if layout == "semantic" else ("div",) * 4
    opaque: dict[str, str] = {}

    def c(name: str) -> str:
        return opaque.setdefault(name, f"css-{rng.getrandbits(24):06x}") if layout == "opaque" else name

    boiler = [site, *menu, *COOKIE, *COOKIE_BUTTONS, *crumbs[:2], *SHARE, "Popular posts", *popular, *NEWSLETTER]
    boiler += ["Related articles", *related, *footer, f"By {author}", date]
    cookie = (
        f'<div class="{c("cookie-banner")}" id="cookies"><p>{COOKIE[0]} {COOKIE[1]}</p>'
        + "".join(f"<a href='#' class='{c('btn')}'>{b}</a>" for b in COOKIE_BUTTONS)
        + "</div>"
    )
    crumb_links = " &raquo; ".join(f'<a href="/{i}">{html.escape(x)}</a>' for i, x in enumerate(crumbs[:2]))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} | {site}</title>
<script>window.dataLayer=window.dataLayer||[];function gtag(){{dataLayer.push(arguments);}}</script>
<style>.{c("menu")} li{{display:inline}}</style></head>
<body>
{cookie if cookie_top else ""}
<{H} class="{c("top-bar")}"><a class="{c("logo")}" href="/">{site}</a>
<{N} class="{c("menu")}">{_ul(menu)}</{N}></{H}>
<div class="{c("breadcrumbs")}">{crumb_links}</div>
<div class="{c("container")}"><div class="{c("content")}">
<div class="{c("post-meta")}"><span class="{c("author")}">By {author}</span>
<span class="{c("date")}">{date}</span></div>
<div class="{c("share")}">{_ul(list(SHARE))}</div>
<div class="{c("entry-content")}">
<h1>{html.escape(title)}</h1>
{main_html}
</div>
<div class="{c("related-posts")}"><h3>Related articles</h3>{_ul(related)}</div>
</div>
<{A} class="{c("sidebar")}"><div class="{c("widget")}"><h3>Popular posts</h3>{_ul(popular)}</div>
<div class="{c("widget")} {c("newsletter")}"><h3>{NEWSLETTER[0]}</h3><p>{NEWSLETTER[1]}</p>
<form><input type="email" placeholder="Your e-mail">
<a href="#" class="{c("btn")}">{NEWSLETTER[2]}</a></form></div></{A}>
</div>
<{F} class="{c("site-footer")}"><p>{footer[0]}</p>{_ul(footer[1:6])}<p>{footer[6]}</p></{F}>
{"" if cookie_top else cookie}
</body></html>"""
    return page, boiler, layout


# ---------------------------------------------------------------- the page set
def _title(markup: str) -> str:
    m = re.search(r"<title>(.*?)</title>", markup, re.S | re.I)
    t = html.unescape(re.sub(r"<[^>]+>", "", m.group(1))).strip() if m else "Untitled"
    return re.split(r" — | &#8212; |: PostgreSQL", t)[0].strip()[:120]


def build_pages(tree: Path, per_kind: int = 100, seed: int = 0) -> list[Page]:
    """``per_kind`` pages of each kind (python, postgres, web) from the unpacked manuals under ``tree``."""
    rng = random.Random(seed)
    sources: dict[str, list[Path]] = {
        "python": sorted(p for p in (tree / PYTHON_HTML).rglob("*.html") if "_static" not in p.parts),
        "postgres": sorted((tree / POSTGRES_HTML).glob("*.html")),
    }
    if not all(sources.values()):
        raise SystemExit(f"no HTML manuals under {tree}; run with --fetch DIR to download them")
    pages: list[Page] = []
    wrap: list[tuple[str, Path]] = []
    for kind, files in sources.items():
        order = files[:]
        rng.shuffle(order)
        taken = wrapped = 0
        for p in order:
            markup = p.read_text("utf-8", "replace")
            truth, boiler = regions(markup)
            if len(words(truth)) < 50:
                continue
            if taken < per_kind:
                pages.append(Page(f"{kind}/{p.name}", kind, markup, truth, boiler))
                taken += 1
            elif wrapped < per_kind // 2:
                wrap.append((kind, p))
                wrapped += 1
            else:
                break
    titles = [_title(p.html) for p in pages]
    for i, (kind, p) in enumerate(wrap):
        markup = p.read_text("utf-8", "replace")
        title = _title(markup)
        body = _main_html(markup, kind)
        page, boiler, layout = web_page(random.Random(f"{seed}:{i}"), title, body, [t for t in titles if t != title])
        truth, _ = regions(f"<html><body><h1>{html.escape(title)}</h1>{body}</body></html>")
        if len(words(truth)) >= 50:
            pages.append(Page(f"web/{layout}/{kind}/{p.name}", "web", page, truth, boiler))
    return pages
