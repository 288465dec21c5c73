"""LLM rephrasing (WRAP / Nemotron-CC): chunk, rephrase in styles, check, rejoin per parent."""

from __future__ import annotations

import inspect
import logging
import time
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.base import NOT_BOOL, AtLeastOne, NonNegative, Operator, Share, check_params, mark_removed, register
from operators.rephrase.backends import (
    Endpoint,
    OpenAIBackend,
    Request,
    Result,
    Sampling,
    TransformersBackend,
    VLLMBackend,
    vllm_missing,
)
from operators.rephrase.prompts import STYLE_RE, STYLES, Chunk, Template, chunk_text
from storage.run import check_name
from storage.schema import ERROR, REASON, STAGE, metadata_columns, unit_hash, with_column

logger = logging.getLogger(__name__)


def synthetic_id(parent_id: str, style: str) -> str:
    """The id of ``parent_id`` rephrased in ``style``: stable, and after the parent in byte order."""
    return f"{parent_id}/{style}"


@register("rephrase")
class Rephrase(Operator):
    """Rephrase documents with an LLM (WRAP / Nemotron-CC) and add the results as new rows.

    Each live, non-synthetic document in ``domains`` is split into ~``chunk_tokens`` chunks
    (:func:`chunk_text`); every chunk is rephrased in every style; a document's chunk outputs
    are rejoined in order into one new row per style with ``id`` = ``<parent_id>/<style>``,
    ``parent_id``, ``style``, ``synthetic`` = true, ``generator`` (backend, model, sampling),
    ``rephrase_tokens_in`` / ``rephrase_tokens_out``, ``source`` of the parent and ``domain``
    from ``domain_template``. A new row carries its parent's input metadata (``url``, ``date``,
    ``license``…: a rephrasing derives from its parent, so its provenance and licence travel
    with it). Other score columns are null, so later stages score the
    synthetic rows like any others (closed loop). New rows follow the batch's rows.

    Checks (Nemotron-CC), per chunk, in this order; the first failing chunk decides the row's
    reason, the detail goes to ``error`` and the raw outputs to ``text``:
    ``rephrase_backend_error`` (request failed after retries), ``rephrase_too_long`` (cut at
    ``max_new_tokens`` unless ``allow_truncated``, or over ``max_output_tokens``),
    ``rephrase_missing_prefix`` (the style's required prefix missing), ``rephrase_empty``.
    With ``keep_original: false`` every rephrased original is removed as ``rephrase_replaced``.

    Cost and memory bounds: a document longer than ``max_chars`` characters, or with more than
    ``max_chunks`` chunks, is left as it is (not rephrased, not removed, whatever
    ``keep_original``). The ``max_chars`` check reads only the length, so the tokenizer never
    sees such a document (chunking tokenizes every sentence of a document in one call).

    Args:
        styles: styles to write, built-in (``wiki``, ``qa``, ``easy``, ``hard``) or from ``templates``.
        templates: user styles by name: ``{prompt, system, prefix, strip_prefix}`` (see :class:`Template`).
        backend: ``transformers`` (local), ``openai`` (any OpenAI-compatible HTTP endpoint) or ``vllm``.
        model: the model for ``transformers`` / ``vllm`` (``packaged:smollm2-135m``, a directory, a hub id).
        endpoint: for ``openai``: ``{base_url, model, concurrency, max_retries, backoff_s, timeout_s, qps, …}``.
        tokenizer: tokenizer for chunking and counting (default: ``model``'s; for ``openai`` the packaged
            SmolLM2 tokenizer, so chunk sizes are approximate for a served model with another vocabulary).
        chunk_tokens: target chunk size in tokens.
        temperature: sampling temperature (0: greedy).
        top_p: nucleus sampling mass.
        max_new_tokens: generation cap per chunk.
        seed: base seed; each request's seed is derived from it and the request key.
        max_output_tokens: reject chunk outputs longer than this (null: only the cap applies).
        allow_truncated: accept outputs cut at ``max_new_tokens``.
        keep_original: keep the original next to its rephrasings (WRAP mixes real and synthetic 1:1).
        domain_template: domain of new rows; ``{domain}`` and ``{style}`` are filled in.
        sample_fraction: rephrase only this fraction of eligible documents, chosen by a hash of
            (seed, id), so the choice is deterministic and independent of batching.
        max_chunks: leave documents with more chunks than this as they are (a cost bound).
        max_chars: leave documents longer than this many characters as they are, unchunked (a
            memory bound); null: no limit.
        batch_size: prompts per generate call (``transformers``).
        engine_kwargs: extra ``vllm.LLM`` arguments (``vllm``).
    """

    adds = ("parent_id", "style", "synthetic", "generator", "rephrase_tokens_in", "rephrase_tokens_out")
    uses_accelerator = True
    adds_rows: ClassVar[bool] = True

    def __init__(
        self,
        *,
        styles: list[str] | None = None,
        templates: dict[str, Template] | None = None,
        backend: Literal["transformers", "openai", "vllm"] = "transformers",
        model: str = "packaged:smollm2-135m",
        endpoint: Endpoint | None = None,
        tokenizer: str | None = None,
        chunk_tokens: Annotated[int, NOT_BOOL, Field(ge=16)] = 300,
        temperature: NonNegative = 0.5,
        top_p: Share = 0.9,
        max_new_tokens: AtLeastOne = 512,
        seed: int = 0,
        max_output_tokens: AtLeastOne | None = None,
        allow_truncated: bool = False,
        keep_original: bool = True,
        domain_template: str = "{domain}.{style}",
        sample_fraction: Share = 1.0,
        max_chunks: AtLeastOne | None = None,
        max_chars: AtLeastOne | None = 1_000_000,
        batch_size: AtLeastOne = 8,
        engine_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.styles, self.templates, self.endpoint = _resolve(
            styles=styles, templates=templates, backend=backend, endpoint=endpoint, domain_template=domain_template
        )
        self.seed = seed
        self.sample_fraction = sample_fraction
        self.max_chunks = max_chunks
        self.max_chars = max_chars
        self.sampling = Sampling(temperature, top_p, max_new_tokens, seed)
        self.chunk_tokens = chunk_tokens
        self.max_output_tokens = max_output_tokens
        self.allow_truncated = allow_truncated
        self.keep_original = keep_original
        self.domain_template = domain_template
        self.backend: Any
        if backend == "transformers":
            self.backend = TransformersBackend(model, self.sampling, batch_size)
        elif backend == "vllm":
            self.backend = VLLMBackend(model, self.sampling, dict(engine_kwargs or {}))
        if tokenizer is None and backend == "transformers":
            self.tok = self.backend.tok
        else:
            from operators.models import load_tokenizer

            self.tok = load_tokenizer(tokenizer or (model if backend == "vllm" else "packaged:smollm2-135m"))
        if backend == "openai":  # counts tokens with self.tok when the server reports no usage
            self.backend = OpenAIBackend(self.endpoint, self.sampling, self.count_tokens)
        self.generator = f"{self.backend.generator}|{self.sampling}"

    @classmethod
    def validate_params(cls, **params: Any) -> None:
        from operators.models import check_spec

        check_params(cls, params)
        init = inspect.signature(cls.__init__).parameters
        settings = {p.name: p.default for p in init.values() if p.kind is p.KEYWORD_ONLY} | params
        _resolve(**{k: settings[k] for k in inspect.signature(_resolve).parameters})
        backend = params.get("backend", "transformers")
        if backend == "vllm" and vllm_missing():
            raise ValueError(vllm_missing())
        if backend != "openai":
            check_spec(params.get("model", "packaged:smollm2-135m"))
        if params.get("tokenizer"):
            check_spec(params["tokenizer"])

    @classmethod
    def wants_accelerator(cls, params: dict[str, Any]) -> bool:
        """An ``openai`` stage runs in a CPU actor (its HTTP clients and rate limit live there)."""
        return params.get("backend", "transformers") != "openai"

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(x) for x in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def drain_metrics(self) -> dict[str, Any]:
        """Generation counters since the last call, keyed by backend (the runner sums them per stage)."""
        got = self.backend.counters.drain()
        return {self.backend.name: got} if got else {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = super().__call__(batch)
        return with_column(out, "synthetic", pc.fill_null(out.column("synthetic"), False))

    def active(self, batch: pa.Table) -> np.ndarray:
        """Live rows in ``domains``, not synthetic themselves (no rephrasing of rephrasings), in the sample."""
        mask = super().active(batch)
        if "synthetic" in batch.column_names:
            mask &= ~np.asarray(batch.column("synthetic").fill_null(False).to_numpy(zero_copy_only=False), bool)
        if self.sample_fraction < 1.0:
            ids = batch.column("id").to_pylist()
            mask &= np.array([unit_hash(x, self.seed) < self.sample_fraction for x in ids], dtype=bool)
        return mask

    # ------------------------------------------------------------------ work
    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        rows = np.flatnonzero(active)
        col = batch.column("text").take(pa.array(rows))
        if self.max_chars is not None:  # by length only: an over-long text is never copied or tokenized
            fits = pc.utf8_length(col).fill_null(0).to_numpy(zero_copy_only=False) <= self.max_chars
            rows, col = rows[fits], col.filter(pa.array(fits))
        chunks = {i: chunk_text(t or "", self.tok, self.chunk_tokens) for i, t in zip(rows.tolist(), col.to_pylist())}
        rows = [i for i in chunks if chunks[i] and (self.max_chunks is None or len(chunks[i]) <= self.max_chunks)]
        ids = batch.column("id").to_pylist()
        requests = []
        for i in rows:
            for style in self.styles:
                for k, c in enumerate(chunks[i]):
                    key = f"{ids[i]}/{style}/{k}"
                    requests.append(
                        Request(key, self.templates[style].messages(c.text), self.sampling.request_seed(key))
                    )
        t0 = time.perf_counter()
        results = iter(self.backend.generate(requests))
        seconds = time.perf_counter() - t0
        new: list[dict[str, Any]] = []
        for i in rows:
            for style in self.styles:
                new.append(self._row(batch, i, style, chunks[i], [next(results) for _ in chunks[i]]))
        self.backend.counters.add(
            requests=len(requests),
            tokens_in=sum(c.n_tokens for i in rows for c in chunks[i]) * len(self.styles),
            tokens_generated=sum(r["rephrase_tokens_out"] for r in new),
            seconds=seconds,
            errors=sum(r[REASON] == "rephrase_backend_error" for r in new),
        )
        if not self.keep_original and rows:
            batch = mark_removed(batch, np.asarray(rows), ["rephrase_replaced"] * len(rows), self.stage)
        for name in self.adds:  # the batch gets every column the new rows carry
            if name not in batch.column_names:
                batch = batch.append_column(name, pa.nulls(batch.num_rows, _field_type(name)))
        extra = pa.Table.from_pylist(new, schema=batch.schema) if new else batch.schema.empty_table()
        return pa.concat_tables([batch, extra])

    def _row(self, batch: pa.Table, i: int, style: str, chunks: list[Chunk], results: list[Result]) -> dict:
        """The new row for document ``i`` in ``style`` (removed with a reason if a chunk failed a check)."""
        tpl = self.templates[style]
        parts, reason, detail = [], None, None
        for k, (c, r) in enumerate(zip(chunks, results)):
            text, why, what = self._check(tpl, r)
            parts.append(c.sep * (k > 0) + text)
            if why is not None and reason is None:
                reason, detail = why, f"chunk {k + 1}/{len(chunks)}: {what}"
        parent = batch.slice(i, 1).to_pylist()[0]
        return {
            **{k: parent[k] for k in metadata_columns(batch.column_names)},  # the parent's input metadata
            "id": synthetic_id(parent["id"], style),
            "text": "".join(parts),
            "domain": self.domain_template.format(domain=parent["domain"], style=style),
            "source": parent.get("source"),
            REASON: reason,
            STAGE: self.stage if reason else None,
            ERROR: detail,
            "parent_id": parent["id"],
            "style": style,
            "synthetic": True,
            "generator": self.generator,
            "rephrase_tokens_in": sum(c.n_tokens for c in chunks),
            "rephrase_tokens_out": sum(r.n_tokens for r in results),
        }

    def _check(self, tpl: Template, r: Result) -> tuple[str, str | None, str | None]:
        """(text to keep, reason code or None, detail) for one chunk's result."""
        if r.error is not None:
            return "", "rephrase_backend_error", r.error
        if not r.finished and not self.allow_truncated:
            return r.text, "rephrase_too_long", f"cut at max_new_tokens={self.sampling.max_new_tokens}"
        if self.max_output_tokens is not None and r.n_tokens > self.max_output_tokens:
            return r.text, "rephrase_too_long", f"{r.n_tokens} tokens > max_output_tokens={self.max_output_tokens}"
        text = r.text.strip()
        if tpl.prefix is not None:
            if not text.startswith(tpl.prefix):
                return r.text, "rephrase_missing_prefix", f"output does not start with {tpl.prefix!r}"
            if tpl.strip_prefix:
                text = text[len(tpl.prefix) :].strip()
        if not text:
            return r.text, "rephrase_empty", "empty output"
        return text, None, None


def _field_type(name: str) -> pa.DataType:
    from storage.schema import score_field

    return score_field(name).type


def _resolve(
    *,
    styles: list[str] | None,
    templates: dict[str, Any] | None,
    backend: str,
    endpoint: Endpoint | dict | None,
    domain_template: str,
) -> tuple[list[str], dict[str, Template], Endpoint | None]:
    """Check how the settings fit together (ranges are on the annotations); return (styles, every
    known template, endpoint)."""
    user = {k: v if isinstance(v, Template) else Template.model_validate(v) for k, v in (templates or {}).items()}
    for name in user:
        if not STYLE_RE.match(name):
            raise ValueError(f"rephrase: template name {name!r} must match {STYLE_RE.pattern}")
    known = {**STYLES, **user}
    styles = ["wiki"] if styles is None else list(styles)
    if not styles or len(set(styles)) != len(styles):
        raise ValueError(f"rephrase: styles must be a non-empty list without repeats, got {styles}")
    for s in styles:
        if s not in known:
            raise ValueError(f"rephrase: unknown style {s!r}; known styles: {', '.join(sorted(known))}")
    if backend == "openai" and endpoint is None:
        raise ValueError("rephrase: backend 'openai' needs `endpoint: {base_url: ..., model: ...}`")
    if backend != "openai" and endpoint is not None:
        raise ValueError(f"rephrase: `endpoint` is only for backend 'openai', not {backend!r}")
    ep = None if endpoint is None else endpoint if isinstance(endpoint, Endpoint) else Endpoint.model_validate(endpoint)
    try:
        domain_template.format(domain="web", style=styles[0])
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"rephrase: domain_template {domain_template!r} may use only {{domain}} and {{style}} ({e!r})"
        ) from None
    for style in styles:  # every synthetic domain names a shard directory
        try:
            check_name("domain", domain_template.format(domain="web", style=style))
        except ValueError as e:
            raise ValueError(f"rephrase: domain_template {domain_template!r} with style {style!r}: {e}") from None
    return styles, known, ep
