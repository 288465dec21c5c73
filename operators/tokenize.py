"""Tokenize for training: token ids (EOS appended) and a deterministic train/holdout split."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa

from operators.base import Operator, register
from storage.schema import score_field, with_column


@register("tokenize")
class Tokenize(Operator):
    """Write ``tokens`` (list<int32>, EOS appended) and ``n_tokens`` with a Hugging Face fast tokenizer.

    Args:
        tokenizer: model spec whose tokenizer to use (``packaged:<name>``, a path or a hub id).
        add_eos: append the tokenizer's EOS id to every document (the packer's separator).
        max_tokens: truncate documents to this many tokens (before EOS); None keeps all.
    """

    adds = ("tokens", "n_tokens")

    def __init__(
        self,
        *,
        tokenizer: str = "packaged:smollm2-135m",
        add_eos: bool = True,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"tokenize: max_tokens must be >= 1 or null, got {max_tokens}")
        from operators.models import load_tokenizer

        self.spec = tokenizer
        self.tok = load_tokenizer(tokenizer)
        if add_eos and self.tok.eos_token_id is None:
            raise ValueError(f"tokenize: tokenizer {tokenizer!r} has no EOS token; set add_eos: false")
        self.eos = self.tok.eos_token_id if add_eos else None
        self.max_tokens = max_tokens

    @classmethod
    def validate_params(cls, **params: Any) -> None:
        from operators.models import check_spec

        check_spec(params.get("tokenizer", "packaged:smollm2-135m"))
        if params.get("max_tokens") is not None and params["max_tokens"] < 1:
            raise ValueError(f"tokenize: max_tokens must be >= 1 or null, got {params['max_tokens']}")

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        idx = np.flatnonzero(active)
        texts = batch.column("text").take(pa.array(idx)).to_pylist()
        enc = self.tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        tokens: list[list[int] | None] = [None] * batch.num_rows
        for i, ids in zip(idx.tolist(), enc):
            if self.max_tokens is not None:
                ids = ids[: self.max_tokens]
            tokens[i] = [*ids, self.eos] if self.eos is not None else ids
        counts = [None if t is None else len(t) for t in tokens]
        batch = with_column(batch, "tokens", pa.array(tokens, score_field("tokens").type))
        return with_column(batch, "n_tokens", pa.array(counts, pa.int64()))


def unit_hash(key: str, seed: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, key)."""
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


@register("split")
class Split(Operator):
    """Assign ``split`` = ``holdout`` to a deterministic fraction of each domain, ``train`` to the rest.

    The choice is a hash of (seed, id), so it does not depend on order, batching or cluster
    size, and re-running gives the same split.

    Args:
        holdout_fraction: fraction for every domain, or a mapping domain -> fraction
            (domains not in the mapping use ``default_fraction``).
        default_fraction: fraction for domains missing from a mapping.
        seed: changes which documents are held out.
    """

    adds = ("split",)

    def __init__(
        self,
        *,
        holdout_fraction: float | dict[str, float] = 0.01,
        default_fraction: float = 0.01,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        fracs = dict(holdout_fraction) if isinstance(holdout_fraction, dict) else {}
        checks = {**fracs, "default_fraction": default_fraction}
        if not fracs:
            checks["holdout_fraction"] = holdout_fraction
        for name, f in checks.items():
            if not 0.0 <= f < 1.0:
                raise ValueError(f"split: fraction for {name!r} must be in [0, 1), got {f}")
        self.fractions = fracs
        self.default = default_fraction if isinstance(holdout_fraction, dict) else holdout_fraction
        self.seed = seed

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        ids = batch.column("id").to_pylist()
        domains = batch.column("domain").to_pylist()
        out: list[str | None] = [None] * batch.num_rows
        for i in np.flatnonzero(active).tolist():
            frac = self.fractions.get(domains[i], self.default)
            out[i] = "holdout" if unit_hash(ids[i], self.seed) < frac else "train"
        return with_column(batch, "split", pa.array(out, pa.string()))
