"""PII scrubbing: e-mail addresses, IP addresses, phone numbers and card numbers replaced in the text."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from operators.base import Operator, register
from storage.schema import seeded_hash, with_column

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

    Args:
        kinds: which kinds to replace (``email``, ``ip``, ``phone``, ``card``).
        public_ips_only: replace only globally routable IP addresses (private/reserved kept).
    """

    metrics_key: ClassVar[str] = "pii"

    def __init__(
        self,
        *,
        kinds: tuple[Literal["email", "ip", "phone", "card"], ...] = ("email", "ip", "phone", "card"),
        public_ips_only: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kinds, self.public_ips_only = set(kinds), public_ips_only
        self._counts: dict[str, int] = {}

    def _ip(self, m: re.Match) -> str | None:
        addr = m.group()
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return None
        if self.public_ips_only and not ip.is_global:
            return None
        if ip.version == 6:
            return IPV6_REPLACEMENT
        return IP_REPLACEMENTS[seeded_hash(addr, 0) % len(IP_REPLACEMENTS)]

    @staticmethod
    def _card(m: re.Match) -> str | None:
        digits = re.sub(r"\D", "", m.group())
        return CARD_REPLACEMENT if 13 <= len(digits) <= 19 and luhn_ok(digits) else None

    def scrub(self, text: str) -> str:
        """``text`` with the chosen kinds of personal data replaced. Every kind is found in the original
        text; where matches overlap the earlier kind wins (e-mail, card, IP, phone), so a replacement is
        never matched again."""
        rules = (
            ("email", EMAIL_RE, lambda m: EMAIL_REPLACEMENT),
            ("card", CARD_RE, self._card),
            ("ip", IPV4_RE, self._ip),
            ("ip", IPV6_RE, self._ip),
            ("phone", PHONE_RE, lambda m: PHONE_REPLACEMENT),
        )
        taken: list[tuple[int, int, str, str]] = []
        for kind, pattern, repl in rules:
            if kind not in self.kinds:
                continue
            for m in pattern.finditer(text):
                a, b = m.span()
                if any(a < e and s < b for s, e, _, _ in taken):
                    continue
                new = repl(m)
                if new is not None:
                    taken.append((a, b, new, kind))
        if not taken:
            return text
        out, pos = [], 0
        for a, b, new, kind in sorted(taken):
            out += [text[pos:a], new]
            pos = b
            self._counts[kind] = self._counts.get(kind, 0) + 1
        return "".join(out) + text[pos:]

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        texts = batch.column("text").to_pylist()
        changed = False
        for i in np.flatnonzero(active).tolist():
            new = self.scrub(texts[i] or "")
            if new != texts[i]:
                texts[i], changed = new, True
        return with_column(batch, "text", pa.array(texts, pa.string())) if changed else batch

    def drain_metrics(self) -> dict[str, Any]:
        out, self._counts = self._counts, {}
        return out
