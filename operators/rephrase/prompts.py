"""Rephrasing text: WRAP / Nemotron-CC prompt templates, and chunking on sentence or paragraph bounds."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, field_validator

#: system prompt of WRAP and Nemotron-CC
CHAT_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the questions."
)
PARA_RE = re.compile(r"\n[ \t]*\n\s*")
SENT_RE = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+")
STYLE_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class Template(BaseModel):
    """A rephrasing style: chat prompt and the output check. ``prompt`` contains ``{text}``.

    Args:
        prompt: the user message; ``{text}`` is replaced by the chunk (no other braces are special).
        system: the system message (null: none).
        prefix: the output must start with this (leading whitespace ignored), else ``rephrase_missing_prefix``.
        strip_prefix: remove ``prefix`` from accepted outputs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str
    system: str | None = CHAT_SYSTEM
    prefix: str | None = None
    strip_prefix: bool = True

    @field_validator("prompt")
    @classmethod
    def _has_text(cls, v: str) -> str:
        if v.count("{text}") != 1:
            raise ValueError("a template prompt must contain `{text}` exactly once")
        return v

    def messages(self, text: str) -> tuple[dict[str, str], ...]:
        user = {"role": "user", "content": self.prompt.replace("{text}", text)}
        return ({"role": "system", "content": self.system}, user) if self.system else (user,)


#: built-in styles. wiki: Nemotron-CC's Wikipedia-style prompt and required prefix; easy, hard,
#: qa: WRAP's (Maini et al. 2024) prompts, qa's output must open with a "Question:" tag.
STYLES: dict[str, Template] = {
    "wiki": Template(
        prompt="For the following paragraph give me a diverse paraphrase of the same in high quality English "
        'language as in sentences on Wikipedia. Begin your answer on a separate line with "Here is a '
        'paraphrased version:".\n\nText: {text}',
        prefix="Here is a paraphrased version:",
    ),
    "qa": Template(
        prompt='Convert the following paragraph into a conversational format with multiple tags of "Question:" '
        'followed by "Answer:":\n\n{text}',
        prefix="Question:",
        strip_prefix=False,
    ),
    "easy": Template(
        prompt="For the following paragraph give me a paraphrase of the same using a very small vocabulary and "
        "extremely simple sentences that a toddler will understand:\n\n{text}"
    ),
    "hard": Template(
        prompt="For the following paragraph give me a paraphrase of the same using very terse and abstruse "
        "language that only an erudite scholar will understand. Replace simple words and phrases with rare "
        "and complex ones:\n\n{text}"
    ),
}


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: its text, token count, and the separator before it in the source."""

    text: str
    n_tokens: int
    sep: str


def chunk_text(text: str, tok, target: int) -> list[Chunk]:
    """Split ``text`` into chunks of about ``target`` tokens on sentence or paragraph bounds.

    Sentences are packed greedily; a chunk also ends at a paragraph break once it holds 2/3 of
    the target; a sentence longer than the target is cut at token bounds. ``Chunk.sep``
    (``" "`` or ``"\\n\\n"``) is what joined the chunk to the previous one, for rejoining.
    """
    units: list[tuple[str, str]] = []  # (sentence, separator before it)
    for p, para in enumerate(x for x in PARA_RE.split(text) if x.strip()):
        for k, sent in enumerate(s for s in SENT_RE.split(para.strip()) if s):
            units.append((sent, ("\n\n" if p else "") if k == 0 else " "))
    if not units:
        return []
    counts = [len(x) for x in tok([u for u, _ in units], add_special_tokens=False)["input_ids"]]
    chunks: list[Chunk] = []
    cur: list[str] = []
    cur_n, cur_sep = 0, ""
    for (sent, sep), n in zip(units, counts):
        if cur and (cur_n + n > target or (sep == "\n\n" and cur_n >= target * 2 / 3)):
            chunks.append(Chunk("".join(cur), cur_n, cur_sep))
            cur, cur_n = [], 0
        if n > target:  # one overlong sentence: cut at token bounds
            ids = tok(sent, add_special_tokens=False)["input_ids"]
            for s in range(0, len(ids), target):
                piece = tok.decode(ids[s : s + target])
                chunks.append(Chunk(piece, len(ids[s : s + target]), sep if s == 0 else ""))
            continue
        if not cur:
            cur_sep = sep
            sep = ""
        cur.append(sep + sent)
        cur_n += n
    if cur:
        chunks.append(Chunk("".join(cur), cur_n, cur_sep))
    return chunks
