"""HTML to main text: the ``extract`` operator, with resiliparse or trafilatura as the backend."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import StrictBool

from operators.base import Operator, mark_removed, register
from storage.schema import ERROR, with_column

#: the column ``keep_html: true`` stores the page's HTML in (declared in storage.schema.SCORE_FIELDS)
HTML_COLUMN = "html"


def resiliparse_backend() -> Callable[[str], str]:
    """resiliparse's ``extract_plain_text`` in main-content mode: no alt texts, links, form fields,
    ``noscript`` content or comment sections; paragraphs on their own lines, list items with bullets."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    def run(html: str) -> str:
        return extract_plain_text(
            HTMLTree.parse(html),
            preserve_formatting=True,
            main_content=True,
            list_bullets=True,
            alt_texts=False,
            links=False,
            form_fields=False,
            noscript=False,
            comments=False,
        )

    return run


def trafilatura_backend() -> Callable[[str], str]:
    """trafilatura's ``extract`` as FineWeb ran it (``favor_precision``, no comments), tables kept,
    without its cross-document ``deduplicate`` cache (results would depend on which worker saw what).
    Its per-page log lines ("empty HTML tree", "discarding data") are silenced: the stage's reason
    codes count those pages."""
    import trafilatura

    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)

    def run(html: str) -> str:
        return (
            trafilatura.extract(
                html, favor_precision=True, include_comments=False, include_tables=True, deduplicate=False
            )
            or ""
        )

    return run


BACKENDS: dict[str, Callable[[], Callable[[str], str]]] = {
    "resiliparse": resiliparse_backend,
    "trafilatura": trafilatura_backend,
}
#: what each backend needs installed (pip name)
PACKAGES = {"resiliparse": "resiliparse", "trafilatura": "trafilatura"}


@register("extract")
class Extract(Operator):
    """Turn the HTML in ``text`` into the page's main text, in place.

    Rows whose page yields no text (only navigation, scripts, an empty body) are removed with
    ``extract_empty``; a page the backend raises on is removed with ``extract_failed`` and the
    exception in ``error``. Removed rows keep the HTML in ``text``. Kept rows lose the HTML unless
    ``keep_html`` stores it in the ``html`` column (null on rows the stage did not touch). Apply it
    to HTML only (a WARC input's rows, or ``domains:`` naming the HTML domains): plain text passes
    through a parser that may rejoin or drop its lines.

    Args:
        backend: ``resiliparse`` (default: much faster, higher recall, lower precision; BENCHMARKS.md
            "Crawl input") or ``trafilatura`` (FineWeb's extractor, in its precision mode).
        keep_html: also store each page's HTML in the ``html`` column.
    """

    def __init__(
        self,
        *,
        backend: Literal["resiliparse", "trafilatura"] = "resiliparse",
        keep_html: StrictBool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            self.extract = BACKENDS[backend]()
        except ImportError as e:
            raise ValueError(
                f"extract backend {backend!r} needs the {PACKAGES[backend]!r} package "
                f"(pip install {PACKAGES[backend]}): {e}"
            ) from None
        self.backend, self.keep_html = backend, keep_html
        self.adds = (HTML_COLUMN,) if keep_html else ()

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        pages = batch.column("text").to_pylist()
        texts = list(pages)
        errors = batch.column(ERROR).to_pylist()
        gone: list[int] = []
        reasons: list[str] = []
        for i in np.flatnonzero(active).tolist():
            try:
                out = self.extract(pages[i] or "")
            except Exception as e:  # a backend's failure on one page removes that page, not the run
                gone.append(i)
                reasons.append("extract_failed")
                errors[i] = f"{self.backend}: {type(e).__name__}: {e}"[:1000]
                continue
            if not out.strip():
                gone.append(i)
                reasons.append("extract_empty")
            else:
                texts[i] = out
        batch = with_column(batch, "text", pa.array(texts, pa.string()))
        if self.keep_html:
            html = [p if a else None for p, a in zip(pages, active.tolist())]
            batch = with_column(batch, HTML_COLUMN, pa.array(html, pa.string()))
        if "extract_failed" in reasons:
            batch = with_column(batch, ERROR, pa.array(errors, pa.string()))
        if gone:
            batch = mark_removed(batch, np.asarray(gone), reasons, self.stage)
        return batch
