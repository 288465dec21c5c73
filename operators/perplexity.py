"""Perplexity scoring with a causal LM, and selection by absolute cutoffs or percentile bands."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from operators.base import AtLeastOne, Operator, Positive, check_params, mark_removed, register
from operators.models import text_heads
from operators.percentile import PercentileBand, band_stage
from storage.schema import with_column

logger = logging.getLogger(__name__)

#: logits elements (batch x positions x vocab) computed at once; bounds memory to ~128 MB in float32
LOGITS_BUDGET = 1 << 25
#: characters kept per token of ``max_tokens`` before tokenizing, so the tokenizer never sees a whole huge
#: document. Text averages ~4 characters a token; only text averaging more than 16 (long runs of one symbol
#: or of indentation, which single tokens of up to ~80 characters cover) gets fewer than ``max_tokens`` tokens.
CHARS_PER_TOKEN_CAP = 16


class KeepBand(BaseModel):
    """``keep: {percentile_band: [low, high], per_domain: false}``: keep rows between two percentiles."""

    model_config = ConfigDict(extra="forbid")
    percentile_band: PercentileBand
    per_domain: bool = False


def _check_order(max_ppl: float | None, min_ppl: float | None) -> None:
    """A relation between two parameters (each one's own range is on its annotation)."""
    if max_ppl is not None and min_ppl is not None and min_ppl >= max_ppl:
        raise ValueError(f"perplexity: min_ppl ({min_ppl}) must be below max_ppl ({max_ppl})")


@register("perplexity")
class Perplexity(Operator):
    """Score ``ppl`` = exp(mean token NLL) and ``n_tokens_ppl`` (tokens scored) with a causal LM.

    Each document is truncated to ``max_tokens`` tokens and prefixed with a document-separator
    token (``bos``) so that every document token is predicted: the score is that of this
    prefix. Before tokenizing, the text is cut to its first ``max_tokens`` x
    ``CHARS_PER_TOKEN_CAP`` (16) characters (in Arrow, before it becomes a Python string), so
    the work per document is bounded whatever its length; the stored text is not changed.
    Within a Ray batch the documents are sorted by length, scored ``batch_size`` at a time with
    right padding (so little compute goes to padding), and the scores are put back in the
    batch's order. The loss is computed from the backbone's hidden states in position chunks,
    so logits never exceed ``LOGITS_BUDGET`` elements however long the batch. bf16 on a GPU,
    float32 on CPU.

    Selection (optional): ``max_ppl`` / ``min_ppl`` remove rows row-wise (``ppl_too_high``,
    ``ppl_too_low``). ``keep: {percentile_band: [lo, hi], per_domain: bool}`` expands the stage
    into this scoring stage plus a ``percentile_filter`` stage named ``<name>_band``, which
    computes the thresholds over the whole dataset (reasons ``ppl_below_band`` /
    ``ppl_above_band``; thresholds in the manifest). CCNet's head/middle/tail are the bands
    [0, 30], [30, 60], [60, 100].

    Args:
        model: causal LM spec (``packaged:smollm2-135m``, a local directory or a hub id).
        max_tokens: truncate every document to this many tokens.
        batch_size: documents per forward pass.
        bos: separator token put before each document: ``auto`` (``<|endoftext|>`` if the
            vocabulary has it, else the tokenizer's BOS), a token string, or null (the first
            token is then not scored).
        max_ppl: remove rows with ``ppl`` above this (``ppl_too_high``).
        min_ppl: remove rows with ``ppl`` below this (``ppl_too_low``; boilerplate, repeats).
        keep: a percentile band over the whole dataset (see above).
    """

    adds = ("ppl", "n_tokens_ppl")
    uses_accelerator = True

    def __init__(
        self,
        *,
        model: str = "packaged:smollm2-135m",
        max_tokens: AtLeastOne = 1024,
        batch_size: AtLeastOne = 16,
        bos: str | None = "auto",
        max_ppl: Positive | None = None,
        min_ppl: Positive | None = None,
        keep: KeepBand | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_order(max_ppl, min_ppl)
        if keep is not None:
            raise ValueError(
                "perplexity: `keep` is applied by a percentile_filter stage that recipes add automatically "
                "(Operator.expand); in Python, run Perplexity without it and PercentileFilter after it"
            )
        import torch

        from operators.models import load_causal_lm

        self.spec = model
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.max_ppl, self.min_ppl = max_ppl, min_ppl
        self.model, self.tok = load_causal_lm(model)
        self.device = next(self.model.parameters()).device
        self.prefix = self._prefix_id(bos)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.prefix or 0)
        backbone = getattr(self.model, "base_model", None)
        self.head = self.model.get_output_embeddings()
        separate = backbone is not None and backbone is not self.model and self.head is not None
        self.backbone = backbone if separate else None
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        self.torch = torch

    def _prefix_id(self, bos: str | None) -> int | None:
        if bos is None:
            return None
        vocab = self.tok.get_vocab()
        if bos == "auto":
            if "<|endoftext|>" in vocab:
                return vocab["<|endoftext|>"]
            return self.tok.bos_token_id
        if bos not in vocab:
            raise ValueError(f"perplexity: bos token {bos!r} is not in the vocabulary of {self.spec!r}")
        return vocab[bos]

    @classmethod
    def validate_params(cls, **params: Any) -> None:
        from operators.models import check_spec

        check_params(cls, params)
        _check_order(params.get("max_ppl"), params.get("min_ppl"))
        check_spec(params.get("model", "packaged:smollm2-135m"))

    @classmethod
    def expand(cls, name: str, params: dict[str, Any]) -> list[dict[str, Any]] | None:
        keep = params.get("keep")
        if not keep:
            return None
        score = {k: v for k, v in params.items() if k != "keep"}
        band = band_stage(f"{name}_band", "ppl", keep["percentile_band"], keep["per_domain"], params.get("domains"))
        return [{"op": cls.op_name, "name": name, **score}, band]

    # ------------------------------------------------------------------ scoring
    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text: the separator, then at most ``max_tokens`` document tokens.

        The tokenizer sees at most ``max_tokens * CHARS_PER_TOKEN_CAP`` characters of each text.
        """
        cap = self.max_tokens * CHARS_PER_TOKEN_CAP
        enc = self.tok(
            [t[:cap] for t in texts],
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_tokens,
            return_attention_mask=False,
        )["input_ids"]
        pre = [] if self.prefix is None else [self.prefix]
        return [pre + ids for ids in enc]

    def score_ids(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(sum of token NLL, tokens scored) per sequence; length-sorted batches, input order restored."""
        n = len(ids)
        nll = np.zeros(n, dtype=np.float64)
        count = np.array([max(0, len(x) - 1) for x in ids], dtype=np.int64)
        order = sorted(range(n), key=lambda i: -len(ids[i]))  # longest first: a memory problem shows at once
        order = [i for i in order if count[i] > 0]
        for s in range(0, len(order), self.batch_size):
            chunk = order[s : s + self.batch_size]
            nll[chunk] = self._forward([ids[i] for i in chunk])
        return nll, count

    def _forward(self, seqs: list[list[int]]) -> np.ndarray:
        torch = self.torch
        b, length = len(seqs), max(len(x) for x in seqs)
        input_ids = torch.full((b, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, length), dtype=torch.long)
        for r, x in enumerate(seqs):
            input_ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            if self.backbone is None:  # no separate head: the model's own logits
                logits = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1]
                return self._nll(logits, input_ids, mask, 0).cpu().numpy()
            hidden = self.backbone(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
            step = max(1, LOGITS_BUDGET // (b * self.head.weight.shape[0]))
            total = torch.zeros(b, dtype=torch.float64, device=self.device)
            for p in range(0, length - 1, step):
                total += self._nll(self.head(hidden[:, p : min(p + step, length - 1)]), input_ids, mask, p)
            return total.cpu().numpy()

    def _nll(self, logits, input_ids, mask, start: int):
        """Summed NLL per row of the tokens that ``logits`` (positions ``start``… ) predict."""
        torch = self.torch
        logits = logits.float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        span = logits.shape[1]
        target = input_ids[:, start + 1 : start + 1 + span]
        weight = mask[:, start + 1 : start + 1 + span].float()
        b = logits.shape[0]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(b * span, -1), target.reshape(b * span), reduction="none"
        )  # 2-D and contiguous: several times faster on CPU than (B, V, L)
        return (loss.view(b, span) * weight).sum(1).double()

    def perplexities(self, texts: list[str]) -> list[float | None]:
        """Perplexity per text (of its first ``max_tokens`` tokens; None when nothing is scored)."""
        nll, count = self.score_ids(self.encode([t[: self.max_tokens * CHARS_PER_TOKEN_CAP] for t in texts]))
        return [math.exp(a / c) if c else None for a, c in zip(nll.tolist(), count.tolist(), strict=True)]

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        idx = np.flatnonzero(active)
        texts = text_heads(batch.column("text").take(pa.array(idx)), self.max_tokens * CHARS_PER_TOKEN_CAP)
        nll, count = self.score_ids(self.encode(texts))
        ppl: list[float | None] = [None] * batch.num_rows
        ntok: list[int | None] = [None] * batch.num_rows
        for k, i in enumerate(idx.tolist()):
            ntok[i] = int(count[k])
            ppl[i] = math.exp(nll[k] / count[k]) if count[k] else None
        batch = with_column(batch, "ppl", pa.array(ppl, pa.float64()))
        batch = with_column(batch, "n_tokens_ppl", pa.array(ntok, pa.int64()))
        if self.max_ppl is None and self.min_ppl is None:
            return batch
        rows, reasons = [], []
        for i in idx.tolist():
            v = ppl[i]
            if v is None:
                continue
            if self.max_ppl is not None and v > self.max_ppl:
                rows.append(i)
                reasons.append("ppl_too_high")
            elif self.min_ppl is not None and v < self.min_ppl:
                rows.append(i)
                reasons.append("ppl_too_low")
        return mark_removed(batch, np.asarray(rows), reasons, self.stage) if rows else batch
