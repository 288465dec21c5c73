"""extract: HTML to main text in place with either backend; empty and failing pages removed with their HTML."""

import pyarrow as pa
import pytest

from operators.extract import BACKENDS, Extract
from tests.conftest import GOOD_WORDS, make_batch, prose

pytest.importorskip("resiliparse")

MENU = ["Home", "World news", "Technology", "Sports desk", "About us", "Contact"]


def page(i: int, layout: str = "semantic") -> str:
    """A news page: cookie banner, menu, breadcrumbs, sidebar and footer around three paragraphs."""
    tags = ("header", "nav", "aside", "footer") if layout == "semantic" else ("div",) * 4
    header, nav, aside, footer = tags
    menu = "".join(f'<li><a href="/{k}">{m}</a></li>' for k, m in enumerate(MENU))
    paras = "".join(f"<p>{prose(i * 10 + k)}</p>" for k in range(3))
    return (
        "<!DOCTYPE html><html><head><title>Story</title><style>p{margin:0}</style>"
        "<script>window.track = function () { return 1; };</script></head><body>"
        '<div class="cookie-banner"><p>We use cookies to improve your experience. By continuing you agree to our use '
        "of cookies.</p><a href='#'>Accept all</a></div>"
        f'<{header} class="site-header"><a href="/">The Daily Example</a><{nav} class="menu"><ul>{menu}</ul></{nav}>'
        f"</{header}><main><article><h1>Story number {i}</h1>{paras}</article></main>"
        f'<{aside} class="sidebar"><h3>Popular posts</h3><ul><li><a href="/p1">Ten tips for gardens</a></li>'
        f'<li><a href="/p2">Why rivers flood</a></li></ul></{aside}>'
        f'<{footer} class="site-footer"><p>© 2024 The Daily Example. All rights reserved.</p>'
        f'<ul><li><a href="/privacy">Privacy policy</a></li><li><a href="/terms">Terms of use</a></li></ul></{footer}>'
        "</body></html>"
    )


def _backends():
    out = ["resiliparse"]
    try:
        import trafilatura  # noqa: F401

        out.append("trafilatura")
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("backend", _backends())
def test_main_text_replaces_the_html_and_leaves_the_menu_out(backend):
    batch = make_batch([page(1), page(2, layout="div")])
    out = Extract(stage="extract", backend=backend)(batch)
    assert out.column("reason").null_count == 2 and "html" not in out.column_names
    for i, text in zip((1, 2), out.column("text").to_pylist()):
        for k in range(3):
            assert f"Story {i * 10 + k} part 7: {GOOD_WORDS}" in text  # every paragraph, whole
        assert "<" not in text and "window.track" not in text and "margin" not in text
        lines = {ln.strip(" •*-") for ln in text.splitlines()}
        assert not lines & {"World news", "Technology", "Sports desk", "Privacy policy", "Terms of use"}


def test_keep_html_stores_the_page_and_removed_rows_pass_through():
    pages = [page(1), page(2)]
    batch = make_batch(pages, reasons=[None, "earlier_reason"])
    out = Extract(stage="extract", keep_html=True)(batch)
    assert out.column("html").to_pylist() == [pages[0], None]
    assert out.column("text").to_pylist()[1] == pages[1]  # removed earlier: untouched
    assert out.column("reason").to_pylist() == [None, "earlier_reason"]
    assert out.schema.field("html").type == pa.string()
    none_live = Extract(stage="extract", keep_html=True)(make_batch([page(3)], reasons=["gone"]))
    assert none_live.column("html").to_pylist() == [None]  # the column exists in every batch


@pytest.mark.parametrize("backend", _backends())
def test_pages_without_text_are_extract_empty_and_keep_their_html(backend):
    empty = [
        "<html><head><title>t</title><script>var a = 1;</script></head><body></body></html>",
        "<html><body><div>  </div><img src='photo.jpg'><script>document.write('x')</script></body></html>",
        "",
    ]
    batch = make_batch([*empty, page(4)])
    out = Extract(stage="x", backend=backend)(batch)
    assert out.column("reason").to_pylist() == ["extract_empty"] * 3 + [None]
    assert out.column("stage").to_pylist() == ["x"] * 3 + [None]
    assert out.column("text").to_pylist()[:3] == empty  # removed rows keep the page as it was


def test_a_backend_that_raises_removes_only_that_page():
    op = Extract(stage="extract")
    real = op.extract

    def flaky(html):
        if "explode" in html:
            raise RecursionError("maximum recursion depth exceeded")
        return real(html)

    op.extract = flaky
    bad = "<html><body><p>explode</p></body></html>"
    out = op(make_batch([page(5), bad]))
    assert out.column("reason").to_pylist() == [None, "extract_failed"]
    assert out.column("error").to_pylist() == [None, "resiliparse: RecursionError: maximum recursion depth exceeded"]
    assert out.column("text").to_pylist()[1] == bad


def test_bad_parameters_fail_at_construction():
    with pytest.raises(ValueError, match="backend"):
        Extract(stage="extract", backend="readability")
    with pytest.raises(ValueError, match="keep_html"):
        Extract(stage="extract", keep_html="yes")
    assert set(BACKENDS) == {"resiliparse", "trafilatura"}
