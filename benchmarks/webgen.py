"""Deterministic generator of an English web-like corpus for benchmarks, written as JSONL (id, text).

Document ``i`` is a pure function of (seed, i): good articles (some with navigation, cookie and share lines
that C4 strips), short snippets, boilerplate and spam, bullet lists, code, hashtag/ellipsis-heavy posts and
exact duplicates (some differing only in case and whitespace) of earlier documents, in fixed proportions.

Run:
    python -m benchmarks.webgen --docs 20000 -o /tmp/corpus.jsonl [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: kind -> share of the corpus
MIX = {
    "article": 0.55,
    "short": 0.08,
    "boilerplate": 0.08,
    "bullets": 0.07,
    "code": 0.05,
    "social": 0.04,
    "long": 0.03,
    "duplicate": 0.10,
}

NOUNS = _words(
    "city council school teacher student family garden river market company report study team player coach "
    "museum library village farmer artist engine network server phone camera recipe kitchen budget policy "
    "election storm forest island bridge highway hospital doctor nurse patient museum painting novel author "
    "festival concert audience winter summer harvest price customer product website update battery window "
    "software developer project community volunteer neighbor station train airport flight hotel beach mountain "
    "lake valley history science experiment result engineer factory worker union contract court judge lawyer "
    "river bank coffee breakfast dinner bakery bicycle road traffic weather forecast ocean climate energy "
    "planet telescope satellite mission museum collection exhibit season league match goal fan stadium"
)
ADJECTIVES = _words(
    "local new old small large quiet busy early late recent popular simple careful bright dark warm cold "
    "strong weak rapid slow modern ancient public private open safe difficult easy important useful famous "
    "green rural urban national regional annual daily weekly final first second major minor"
)
VERBS_PAST = _words(
    "opened closed announced reported found built visited praised criticized approved rejected changed "
    "improved delayed launched finished started studied measured explained described shared released moved "
    "expanded reduced replaced repaired organized welcomed discussed tested"
)
VERBS = _words(
    "open close announce report find build visit praise change improve launch finish start study measure "
    "explain describe share release move expand reduce replace repair organize welcome discuss test"
)
ADVERBS = _words("quickly slowly carefully finally recently quietly openly largely mostly nearly clearly")
NAMES = _words("Maria John Aisha Chen Lucas Emma Omar Sofia David Priya Tom Elena Kofi Hannah Diego Mei")
PLACES = _words("Springfield Riverton Oakdale Lakeside Brookfield Fairview Greenville Hillcrest Westport Ashford")
MONTHS = _words("January February March April May June July August September October November December")
TEMPLATES = (
    "The {adj} {noun} and the {adj} {noun} {vpast} together in {Place}.",
    "Most {noun}s in the {noun} {vpast} {adv} because the {noun} was {adj}.",
    "Many people believe that a {adj} {noun} can {verb} almost any {noun}.",
    "She {vpast} the {noun} and then {vpast} the {adj} {noun} on her own.",
    "When the {noun} {vpast}, the {noun} {vpast} with it as well.",
    "This {noun} has always been {adj}, and many {noun}s would like to keep it that way.",
    "He told us that the {noun} was {adj} but the {noun} was even more {adj}.",
    "For many years the {noun} in {Place} was known for its {adj} {noun}.",
    "If you want to {verb} a {noun}, you should first {verb} the {noun}.",
    "Some of the {noun}s were {adj}, while others were {adj} and {adj}.",
    "Later that day, the {noun} {vpast} the {noun} without any help from the {noun}.",
    "It is {adj} to {verb} the {noun} before the {noun} {vpast}.",
    "The {noun} was {adj} and the {noun} was {adj}, so everyone {vpast} the {noun}.",
    "Nobody expected the {adj} {noun} to {verb} the {noun} so {adv}.",
    "The {adj} {noun} {vpast} the {noun} last {month}.",
    "{Name} said that the {noun} would {verb} the {noun} by {year}.",
    "According to {Name}, about {pct}% of the {noun}s in {Place} are {adj}.",
    "It's not clear whether the {noun} can {verb} the {adj} {noun} this year.",
    "We don't know why the {noun} {vpast} so {adv}, but the {noun} was {adj}.",
    "In {Place}, a {adj}-looking {noun} {vpast} near the {noun} on {month} {day}.",
    'Dr. {Name} {vpast} the {noun} and called it "{adj} and {adj}".',
    "The {noun} (which {vpast} in {year}) is now {adj} again.",
    "Why would anyone {verb} a {noun} in the middle of {month}?",
    "Residents of {Place} {vpast} a {adj} {noun} worth ${num},000.",
    "There were {num} {noun}s, {num} {noun}s and one {adj} {noun}.",
    "{Name}'s {noun} {vpast} {adv} after the {adj} {noun}.",
    "A {noun} is {adj} when it can {verb} a {noun} without help.",
    "They've {vpast} the {noun}, and they'll {verb} it again next {month}.",
    "Experts, e.g. {Name} and {Name}, say the {noun} is {adj}.",
    "The U.S. {noun} {vpast} {num} {noun}s in {year}, up {pct}% from before.",
    "You can read more at https://www.{place}.org/{noun}s or ask the {noun}.",
    "What a {adj} {noun} it was!",
    "Nobody {vpast} the {noun}; the {noun} {vpast} it instead.",
    "Our {adj} {noun} has been {vpast} by the {adj} {noun} since {year}.",
    "Each {noun} costs about {num}.{day} dollars, which is {adj} for a {noun}.",
    "The {noun} of {Place} is {adj}, {adj} and surprisingly {adj}.",
    "As {Name} put it: \"The {noun} isn't {adj}, it's {adj}.\"",
    "Local {noun}s {vpast} a {num}-page report on the {adj} {noun}.",
)
BOILERPLATE_LINES = (
    "Home | About | Contact | Blog",
    "Share this article",
    "Posted by admin",
    "Click here to subscribe to our newsletter",
    "This website uses cookies to improve your experience.",
    "Please enable JavaScript to view the comments.",
    "Read our Privacy Policy and Terms of Use.",
    "All rights reserved.",
    "Related posts",
    "Leave a comment",
)
CODE = (
    "def {noun}_count(items):\n    total = 0\n    for item in items:\n        if item.{noun}:\n"
    "            total += 1\n    return total\n",
    "function {noun}Handler(event) {{\n  const value = event.target.value;\n  if (!value) {{ return null; }}\n"
    "  return value.trim();\n}}\n",
    ".{noun}-box {{\n  margin: 0 auto;\n  padding: {num}px;\n  color: #333;\n}}\n",
    '<div class="{noun}">\n  <a href="/{noun}s">{Noun}s</a>\n</div>\n',
    "SELECT {noun}, COUNT(*) FROM {noun}s WHERE year = {year} GROUP BY {noun};\n",
)


_SLOT_RE = re.compile(r"\{\{|\}\}|\{(\w+)\}")
_POOLS = {
    "noun": NOUNS,
    "adj": ADJECTIVES,
    "verb": VERBS,
    "vpast": VERBS_PAST,
    "adv": ADVERBS,
    "Name": NAMES,
    "Place": PLACES,
    "month": MONTHS,
}
_RANGES = {"num": (2, 99), "day": (1, 28), "pct": (2, 98), "year": (1990, 2024)}


def _fill(rng: random.Random, template: str) -> str:
    """Fill every ``{slot}`` with a fresh random value (``{{`` and ``}}`` are literal braces)."""

    def value(m: re.Match) -> str:
        key = m.group(1)
        if key is None:
            return m.group(0)[0]
        if key in _POOLS:
            return rng.choice(_POOLS[key])
        if key in _RANGES:
            return str(rng.randint(*_RANGES[key]))
        if key == "Noun":
            return rng.choice(NOUNS).capitalize()
        if key == "place":
            return rng.choice(PLACES).lower()
        raise KeyError(f"unknown slot {key!r} in template {template!r}")

    return _SLOT_RE.sub(value, template)


def sentence(rng: random.Random) -> str:
    return _fill(rng, rng.choice(TEMPLATES))


def paragraph(rng: random.Random, lo: int = 2, hi: int = 6) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(lo, hi)))


def _title(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES).capitalize()} {rng.choice(NOUNS)} in {rng.choice(PLACES)}"


def _article(rng: random.Random, paragraphs: tuple[int, int] = (3, 8)) -> str:
    parts = [_title(rng)]
    parts += [paragraph(rng) for _ in range(rng.randint(*paragraphs))]
    if rng.random() < 0.4:  # page chrome that C4 strips and FineWeb/Gopher tolerate
        parts.insert(0, rng.choice(BOILERPLATE_LINES[:4]))
        parts.append("\n".join(rng.sample(BOILERPLATE_LINES, rng.randint(1, 3))))
    if rng.random() < 0.15:  # a paragraph with hard line breaks
        parts.append("\n".join(sentence(rng) for _ in range(rng.randint(2, 5))))
    return "\n\n".join(parts)


def _boilerplate(rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:  # the same paragraph again and again
        para = paragraph(rng, 2, 3)
        return "\n\n".join([_title(rng)] + [para] * rng.randint(3, 6) + [paragraph(rng, 1, 2)])
    if style == 1:  # navigation and footer lines
        return "\n".join(rng.choice(BOILERPLATE_LINES) for _ in range(rng.randint(8, 25)))
    if style == 2:  # keyword spam
        phrase = f"best {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} online"
        return " ".join([phrase] * rng.randint(10, 40)) + ". " + paragraph(rng, 1, 2)
    return "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n\n" + _article(rng, (1, 3))


def _bullets(rng: random.Random) -> str:
    mark = rng.choice(("- ", "• ", "* "))
    items = [f"{mark}{rng.choice(ADJECTIVES).capitalize()} {rng.choice(NOUNS)}" for _ in range(rng.randint(5, 20))]
    if rng.random() < 0.5:
        items = [f"{mark}{sentence(rng)}" for _ in range(rng.randint(5, 12))]
    return sentence(rng) + "\n" + "\n".join(items)


def _code(rng: random.Random) -> str:
    blocks = [_fill(rng, rng.choice(CODE)) for _ in range(rng.randint(1, 4))]
    return paragraph(rng, 1, 3) + "\n\n" + "\n".join(blocks) + "\n" + paragraph(rng, 1, 2)


def _social(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(4, 12)):
        s = sentence(rng)
        if rng.random() < 0.5:
            s = s[:-1] + "..."
        tags = " ".join(f"#{rng.choice(NOUNS)}" for _ in range(rng.randint(0, 4)))
        lines.append(f"{s} {tags}".strip())
    return "\n".join(lines)


def make_doc(seed: int, i: int) -> str:
    """The text of document ``i``: a pure function of (seed, i)."""
    rng = random.Random(f"{seed}:{i}")
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    if kind == "duplicate" and i > 0:
        text = make_doc(seed, rng.randrange(max(0, i - 5000), i))
        if rng.random() < 0.3:  # same after normalization: case and whitespace
            text = text.upper() if rng.random() < 0.5 else text.replace(" ", "  ") + "\n"
        return text
    if kind == "short":
        return paragraph(rng, 1, 3)
    if kind == "boilerplate":
        return _boilerplate(rng)
    if kind == "bullets":
        return _bullets(rng)
    if kind == "code":
        return _code(rng)
    if kind == "social":
        return _social(rng)
    if kind == "long":
        return _article(rng, (20, 60))
    return _article(rng)


def generate(n_docs: int, seed: int = 0) -> Iterator[dict[str, str]]:
    """Yield ``{"id", "text"}`` records for documents 0..n_docs-1."""
    for i in range(n_docs):
        yield {"id": f"doc-{i:08d}", "text": make_doc(seed, i)}


def write_jsonl(path: str | Path, n_docs: int, seed: int = 0) -> Path:
    """Write the corpus to ``path`` (write-then-rename) and return the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in generate(n_docs, seed):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000, help="number of documents")
    parser.add_argument("-o", "--output", required=True, help="JSONL file to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.docs < 0:
        parser.error(f"--docs must be >= 0, got {args.docs}")
    write_jsonl(args.output, args.docs, args.seed)
    print(f"wrote {args.docs} documents to {args.output}")


if __name__ == "__main__":
    main()
