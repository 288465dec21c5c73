"""PII scrubbing: e-mail addresses, IP addresses, phone numbers, card numbers (regex or presidio) replaced in text."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from operators import pii_presidio
from operators.base import Operator, Probability, check_params, register
from storage.schema import seeded_hash, with_column

Kind = Literal["email", "ip", "phone", "card", "iban", "ssn", "person", "location"]
#: the kinds the regex backend finds; presidio finds these and the rest of ``Kind``
REGEX_KINDS = ("email", "ip", "phone", "card")

EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
IPV4_RE = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{1,4})*(?![\w:])")
#: separators are spaces or hyphens (not dots: versions, IPs); not part of a longer run of digit groups
PHONE_RE = re.compile(
    r"(?<![\w+])(?<!\d[ -])(?:\+\d{1,3}[ -]?)?(?:\(\d{2,4}\)[ -]?|\d{2,4}[ -])\d{3,4}[ -]\d{3,4}(?![\w])(?![ -]?\d)"
)
CARD_RE = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")

#: replacements, as datatrove's PII formatter uses: realistic values, so the text stays natural
EMAIL_REPLACEMENT = "email@example.com"
IP_REPLACEMENTS = (
    "22.214.171.124",
    "126.96.36.199",
    "188.8.131.52",
    "184.108.40.206",
    "220.127.116.11",
    "18.104.22.168",
)
IPV6_REPLACEMENT = "2001:db8::1"
PHONE_REPLACEMENT = "555-0100"
CARD_REPLACEMENT = "0000 0000 0000 0000"
#: the presidio backend's further kinds, in the same spirit (values no one holds)
IBAN_REPLACEMENT = "DE00 0000 0000 0000 0000 00"
SSN_REPLACEMENT = "000-00-0000"
PERSON_REPLACEMENT = "Jane Doe"
LOCATION_REPLACEMENT = "Anytown"
FIXED = {
    "email": EMAIL_REPLACEMENT,
    "phone": PHONE_REPLACEMENT,
    "iban": IBAN_REPLACEMENT,
    "ssn": SSN_REPLACEMENT,
    "person": PERSON_REPLACEMENT,
    "location": LOCATION_REPLACEMENT,
}


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum that card numbers carry."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@register("pii")
class PII(Operator):
    """Replace personal data in ``text``: e-mail addresses with ``email@example.com``, public IPv4/IPv6
    addresses with fixed public placeholders (private, loopback and reserved ones are kept, as
    datatrove does by default), phone numbers with ``555-0100`` and card numbers (13-19 digits passing
    the Luhn check) with zeros. The replacement for an address depends only on the address (a seeded
    hash), so reruns give the same text. The manifest records counts per kind (``report.pii``).
    Nothing is removed: a document keeps its row, with the text scrubbed.

    ``backend: presidio`` finds the entities with presidio-analyzer's recognizers instead (``pip install
    presidio-analyzer`` and a spaCy model; checked when the recipe is validated) and replaces them with the same
    values, the same IP rules and the same counts. Its kinds are presidio entities: ``email`` EMAIL_ADDRESS,
    ``ip`` IP_ADDRESS, ``phone`` PHONE_NUMBER (the ``phonenumbers`` library), ``card`` CREDIT_CARD, and
    presidio only: ``iban`` IBAN_CODE (-> ``DE00 0000 …``), ``ssn`` US_SSN (-> ``000-00-0000``), ``person``
    PERSON (-> ``Jane Doe``) and ``location`` LOCATION (-> ``Anytown``). All but person and location are
    pattern recognizers that need no trained model: a blank pipeline (``spacy.blank("en").to_disk(PATH)``)
    serves them; person and location need a spaCy model with named-entity recognition (presidio's default
    ``en_core_web_lg``). The model is given by package name or directory and never downloaded; it is loaded
    once per worker process. Where results overlap the higher-scored (then the longer) one wins.

    Args:
        kinds: which kinds to replace; ``iban``, ``ssn``, ``person`` and ``location`` need ``backend: presidio``.
        public_ips_only: replace only globally routable IP addresses (private/reserved kept).
        backend: ``regex`` (this module's patterns) or ``presidio`` (presidio-analyzer's recognizers).
        spacy_model: presidio only: an installed spaCy pipeline's name or a saved pipeline's directory; null is
            presidio's default, ``en_core_web_lg``.
        min_score: presidio only: drop results scored below this; null keeps each recognizer's own threshold.
    """

    metrics_key: ClassVar[str] = "pii"

    def __init__(
        self,
        *,
        kinds: tuple[Kind, ...] = REGEX_KINDS,
        public_ips_only: bool = True,
        backend: Literal["regex", "presidio"] = "regex",
        spacy_model: str | None = None,
        min_score: Probability | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kinds, self.public_ips_only = set(kinds), public_ips_only
        self.presidio = (
            pii_presidio.PresidioFinder(spacy_model or pii_presidio.DEFAULT_SPACY_MODEL, self.kinds, min_score)
            if _check_backend(self.kinds, backend, spacy_model, min_score)
            else None
        )
        self._counts: dict[str, int] = {}

    @classmethod
    def validate_params(cls, **params: Any) -> None:
        """The presidio backend is checked without loading its model (installed, present, fit for the kinds)."""
        check_params(cls, params)
        kinds = set(params.get("kinds", REGEX_KINDS))
        spacy_model = params.get("spacy_model")
        if _check_backend(kinds, params.get("backend", "regex"), spacy_model, params.get("min_score")):
            pii_presidio.check(kinds, spacy_model or pii_presidio.DEFAULT_SPACY_MODEL)

    def _replacement(self, kind: str, found: str) -> str | None:
        """What replaces ``found``, a match of ``kind``; None keeps it (a private IP, a non-Luhn number)."""
        if kind == "ip":
            return self._ip(found)
        if kind == "card":
            digits = re.sub(r"\D", "", found)
            return CARD_REPLACEMENT if 13 <= len(digits) <= 19 and luhn_ok(digits) else None
        return FIXED[kind]

    def _ip(self, addr: str) -> str | None:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return None
        if self.public_ips_only and not ip.is_global:
            return None
        if ip.version == 6:
            return IPV6_REPLACEMENT
        return IP_REPLACEMENTS[seeded_hash(addr, 0) % len(IP_REPLACEMENTS)]

    def _regex_spans(self, text: str) -> list[tuple[int, int, str, str]]:
        """Every kind is found in the original text; where matches overlap the earlier kind wins (e-mail,
        card, IP, phone), so a replacement is never matched again."""
        rules = (("email", EMAIL_RE), ("card", CARD_RE), ("ip", IPV4_RE), ("ip", IPV6_RE), ("phone", PHONE_RE))
        taken: list[tuple[int, int, str, str]] = []
        for kind, pattern in rules:
            if kind not in self.kinds:
                continue
            for m in pattern.finditer(text):
                a, b = m.span()
                if any(a < e and s < b for s, e, _, _ in taken):
                    continue
                new = self._replacement(kind, m.group())
                if new is not None:
                    taken.append((a, b, new, kind))
        return taken

    def _presidio_spans(self, text: str, found: list[tuple[int, int, str, float]]) -> list[tuple[int, int, str, str]]:
        """presidio's results without overlaps: the higher score wins, then the longer match, then the earlier."""
        taken: list[tuple[int, int, str, str]] = []
        for a, b, kind, _ in sorted(found, key=lambda r: (-r[3], r[0] - r[1], r[0])):
            if any(a < e and s < b for s, e, _, _ in taken):
                continue
            new = self._replacement(kind, text[a:b])
            if new is not None:
                taken.append((a, b, new, kind))
        return taken

    def _splice(self, text: str, taken: list[tuple[int, int, str, str]]) -> str:
        if not taken:
            return text
        out, pos = [], 0
        for a, b, new, kind in sorted(taken):
            out += [text[pos:a], new]
            pos = b
            self._counts[kind] = self._counts.get(kind, 0) + 1
        return "".join(out) + text[pos:]

    def scrub_all(self, texts: list[str]) -> list[str]:
        """``texts`` with the chosen kinds of personal data replaced (presidio analyses them as one batch)."""
        if self.presidio is None:
            return [self._splice(t, self._regex_spans(t)) for t in texts]
        found = self.presidio.find(texts)
        return [self._splice(t, self._presidio_spans(t, f)) for t, f in zip(texts, found)]

    def scrub(self, text: str) -> str:
        """``text`` with the chosen kinds of personal data replaced."""
        return self.scrub_all([text])[0]

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        texts = batch.column("text").to_pylist()
        idx = [i for i in np.flatnonzero(active).tolist() if texts[i]]
        changed = False
        for i, new in zip(idx, self.scrub_all([texts[i] for i in idx])):
            if new != texts[i]:
                texts[i], changed = new, True
        return with_column(batch, "text", pa.array(texts, pa.string())) if changed else batch

    def drain_metrics(self) -> dict[str, Any]:
        out, self._counts = self._counts, {}
        return out


def _check_backend(kinds: set[str], backend: str, spacy_model: str | None, min_score: float | None) -> bool:
    """Whether the presidio backend is chosen; ValueError for settings that belong to the other backend."""
    if backend == "presidio":
        return True
    extra = sorted(kinds - set(REGEX_KINDS))
    if extra:
        raise ValueError(f"pii: kinds {extra} need `backend: presidio`; the regex backend finds {list(REGEX_KINDS)}")
    for name, value in (("spacy_model", spacy_model), ("min_score", min_score)):
        if value is not None:
            raise ValueError(f"pii: {name} applies to `backend: presidio`, not {backend}; got {value!r}")
    return False
