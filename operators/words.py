"""Fast English word and sentence splitting that tracks datatrove's (spaCy-based) tokenizer."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Sentence-terminal characters (Unicode ``Sentence_Terminal`` as datatrove lists it, plus three Khmer signs):
# FineWeb counts a line as "ending in punctuation" when its last character is one of these.
_TERMINAL_RANGES = (
    (0x21, 0x21), (0x2E, 0x2E), (0x3F, 0x3F), (0x589, 0x589), (0x61D, 0x61F), (0x6D4, 0x6D4), (0x700, 0x702),
    (0x7F9, 0x7F9), (0x837, 0x837), (0x839, 0x839), (0x83D, 0x83E), (0x964, 0x965), (0x104A, 0x104B),
    (0x1362, 0x1362), (0x1367, 0x1368), (0x166E, 0x166E), (0x1735, 0x1736), (0x17D4, 0x17D6), (0x17D9, 0x17DA),
    (0x1803, 0x1803), (0x1809, 0x1809), (0x1944, 0x1945), (0x1AA8, 0x1AAB), (0x1B5A, 0x1B5B), (0x1B5E, 0x1B5F),
    (0x1B7D, 0x1B7E), (0x1C3B, 0x1C3C), (0x1C7E, 0x1C7F), (0x203C, 0x203D), (0x2047, 0x2049), (0x2E2E, 0x2E2E),
    (0x2E3C, 0x2E3C), (0x2E53, 0x2E54), (0x3002, 0x3002), (0xA4FF, 0xA4FF), (0xA60E, 0xA60F), (0xA6F3, 0xA6F3),
    (0xA6F7, 0xA6F7), (0xA876, 0xA877), (0xA8CE, 0xA8CF), (0xA92F, 0xA92F), (0xA9C8, 0xA9C9), (0xAA5D, 0xAA5F),
    (0xAAF0, 0xAAF1), (0xABEB, 0xABEB), (0xFE52, 0xFE52), (0xFE56, 0xFE57), (0xFF01, 0xFF01), (0xFF0E, 0xFF0E),
    (0xFF1F, 0xFF1F), (0xFF61, 0xFF61), (0x10A56, 0x10A57), (0x10F55, 0x10F59), (0x10F86, 0x10F89),
    (0x11047, 0x11048), (0x110BE, 0x110C1), (0x11141, 0x11143), (0x111C5, 0x111C6), (0x111CD, 0x111CD),
    (0x111DE, 0x111DF), (0x11238, 0x11239), (0x1123B, 0x1123C), (0x112A9, 0x112A9), (0x1144B, 0x1144C),
    (0x115C2, 0x115C3), (0x115C9, 0x115D7), (0x11641, 0x11642), (0x1173C, 0x1173E), (0x11944, 0x11944),
    (0x11946, 0x11946), (0x11A42, 0x11A43), (0x11A9B, 0x11A9C), (0x11C41, 0x11C42), (0x11EF7, 0x11EF8),
    (0x11F43, 0x11F44), (0x16A6E, 0x16A6F), (0x16AF5, 0x16AF5), (0x16B37, 0x16B38), (0x16B44, 0x16B44),
    (0x16E98, 0x16E98), (0x1BC9F, 0x1BC9F), (0x1DA88, 0x1DA88),
)  # fmt: skip
TERMINAL_PUNCTUATION: tuple[str, ...] = tuple(chr(c) for a, b in _TERMINAL_RANGES for c in range(a, b + 1))

# Characters that make a token a "symbol" for Gopher (a word made only of these is not a word): ASCII punctuation,
# control characters other than tab and newline, common typographic and full-width punctuation, and the
# sentence terminals above.
PUNCTUATION_CHARS = frozenset(
    r"""!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~"""
    + "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)]))
    + "—–”“„’´«»…►━∶〈〉《》「」【】、，；：．？！（）～％１。"
    + "".join(TERMINAL_PUNCTUATION)
)

# --- word splitting ----------------------------------------------------------------------------------------------
# spaCy's English tokenizer (which datatrove's ``split_into_words`` uses) splits text on whitespace, then peels
# prefixes (brackets, quotes, currency, most punctuation) and suffixes (punctuation, quotes, "'s", a "." after a
# lowercase letter/digit or two capitals) off each chunk, and splits the rest only at a few infixes (hyphens and
# ":<>=/" before a letter, "," between letters, "." between lower- and uppercase, ellipses, arithmetic between
# digits). Everything else stays glued ("a.b.c", "e-5", "foo(bar", "AT&T"). One regex reproduces those rules;
# exceptions (abbreviations, contractions) are handled in the pattern or in a cheap fix-up pass.
_W = r"[^\W_]"  # a letter or digit
_L = r"[^\W\d_]"  # a letter
_PUNCT = re.escape("…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪")  # peeled from both ends of a chunk
_QUOTES = re.escape("'\"”“`‘´’‚„»«「」『』（）〔〕【】《》〈〉")  # likewise
_CURRENCY = re.escape("$£€¥฿₽₴₹₩₪₫₱₺₿")
_ICONS = "©®°™\u2300-\u23ff\u2500-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff"  # symbols (So), peeled
_PREFIX = _PUNCT + _QUOTES + _CURRENCY + _ICONS + re.escape("§%=—–+")
# characters that stick to the word after them at the start of a chunk ("-5", "/usr", "±3", ".env")
_GLUE_START = r"[^\s\w." + _PREFIX + "]"
# ... and to the word before them at its end ("word-", "x=", "US$"; "%", "$" and "+" split off after a digit)
_GLUE_END = r"(?:[^\s\w." + _PUNCT + _QUOTES + _ICONS + _CURRENCY + r"%+—–]|(?<!\d)[" + _CURRENCY + "%+])"
_END = r"(?:\w|" + _GLUE_END + ")"  # a character that would glue onto a chunk (so it is no lone special case)
#: units spaCy splits off a number ("5km" -> "5" "km"); "1am".."12pm" are split the same way
_UNITS = "km|cm|mm|µm|nm|dm|ha|yd|in|ft|kg|mg|µg|lb|oz|kmh|mph|hPa|Pa|mbar|mb|MB|kb|KB|gb|GB|tb|TB|m|g|t|T|G|M|K"
_ABBREVIATIONS = (
    "Mr Mrs Ms Dr St Jr Sr Prof Gen Gov Rep Sen Rev Adm Bros Co co Corp Inc Ltd Messrs Mt vs v.s "
    "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec Ph.D a.m p.m e.g E.g E.G i.e I.e I.E "
    "Ak Ala Ariz Ark Calif Colo Conn Del Fla Ga Ia Id Ill Ind Kan Kans Ky La Mass Md Mich Minn Miss Mo Mont "
    "Neb Nebr Nev Okla Ore Pa Tenn Va Wash Wis D.C N.C N.D N.H N.J N.M N.Y S.C"
)
#: contractions written without an apostrophe that spaCy splits in two ("dont" -> "do" "nt")
_NT_STEMS = "do does did is are was were has have had ca wo ai could should would must might need dare ought sha may"
_GLUED = {s + "nt": s for s in _NT_STEMS.split()} | {
    "cannot": "can", "gonna": "gon", "gotta": "got", "im": "i", "ive": "i", "id": "i", "hes": "he", "shes": "she",
    "hed": "he", "wed": "we", "weve": "we", "youre": "you", "youve": "you", "youd": "you", "youll": "you",
    "theyre": "they", "theyve": "they", "theyd": "they", "theyll": "they", "thats": "that", "thatd": "that",
    "thatll": "that", "whats": "what", "whatre": "what", "whatd": "what", "whatll": "what", "whatve": "what",
    "whos": "who", "whod": "who", "wholl": "who", "whove": "who", "wheres": "where", "whered": "where",
    "wherell": "where", "wherere": "where", "whereve": "where", "theres": "there", "thered": "there",
    "therell": "there", "therere": "there", "thereve": "there", "itll": "it", "itd": "it", "hows": "how",
    "howd": "how", "howll": "how", "howre": "how", "howve": "how", "whys": "why", "whyd": "why", "whyll": "why",
    "whyre": "why", "whyve": "why", "whens": "when", "whend": "when", "whenll": "when", "whenre": "when",
    "whenve": "when", "thiss": "this", "thisd": "this", "thisll": "this", "thesed": "these", "thesell": "these",
    "thesere": "these", "theseve": "these", "thosed": "those", "thosell": "those", "thosere": "those",
    "thoseve": "those", "couldve": "could", "shouldve": "should", "wouldve": "would", "mustve": "must",
    "mightve": "might",
}  # fmt: skip
_SPLITS: dict[str, tuple[str, str]] = {}
for _word, _stem in _GLUED.items():
    _SPLITS[_word] = (_stem, _word[len(_stem) :])
    _SPLITS[_word.capitalize()] = (_stem.capitalize(), _word[len(_stem) :])
_SPLITS |= {"y'all": ("y'", "all"), "Y'all": ("Y'", "all"), "y’all": ("y’", "all"), "Y’all": ("Y’", "all")}
_SPLIT_KEYS = frozenset(_SPLITS)


def _abbreviation_lookbehinds() -> str:
    by_len: dict[int, list[str]] = {}
    for a in _ABBREVIATIONS.split():
        by_len.setdefault(len(a), []).append(re.escape(a))
    alts = [f"(?<=\\b(?:{'|'.join(v)}))" for _, v in sorted(by_len.items())]
    return "|".join([*alts, r"(?<=(?<![\w.])[a-z])"])  # single lowercase letters: "a." ... "z."


_CLITIC = r"['’](?:s|S|d|ll|re|m|ve)(?!" + _END + r")"
_CONNECTOR = (  # one character that stays inside a token when a letter or digit follows it
    r"\.(?!\.)(?<!\.\.)(?:(?<![a-z'\"`]\.)|(?![A-Z'\"`]))"  # '.', except lower.Upper and ellipses
    r"|,(?:(?<!" + _L + r",)|(?!" + _L + r"))"  # ',' unless between two letters
    r"|(?!(?<=" + _W + r")(?:-{1,3}|[–—~])(?=" + _L + r"))(?!(?<=\d)-(?=[\d-]))[-–—~]"  # hyphens
    r"|[:<>=/](?:(?<!" + _W + r".)|(?!" + _L + r"))"  # unless alnum on the left and a letter on the right
    r"|[+*^](?:(?<!\d.)|(?![\d-]))"  # unless between digits
    r"|(?!" + _CLITIC + r")['’]"  # apostrophes, except a clitic suffix ("John's" -> "John" "'s")
    r"|[^\s\w.,\-–—~:<>=/'’+*^…" + _ICONS + "]|_"  # anything else that is not a space, an ellipsis or an icon
)
_WORD = _W + r"+(?:(?=[^\s\w]|_)(?:" + _CONNECTOR + r")+" + _W + r"+)*"
_TRAIL = (  # a "." kept on abbreviations and initials ("Mr.", "U.S.", "F."), and characters spaCy never peels
    r"(?:(?=\.)(?:(?<=[A-Z])(?<![A-Z]{2})|" + _abbreviation_lookbehinds() + r")\.(?!\.|" + _END + r")"
    r"|" + _GLUE_END + "+(?!" + _END + r"))?"
)
_SUFFIX_RUN = r"[.,;:!?)\]}>\"'”’`_*#&]*(?:\s|$)"  # punctuation spaCy peels off the end of a chunk
_CHUNK_START = r"(?<![^\s(\[<\"'“‘`*_])"  # at the start of a whitespace chunk, after any opening punctuation
_HOST = r"(?:[^\W_](?:[\w-]{0,62}[^\W_])?\.)+[a-z]{2,63}(?::\d{2,5})?"  # spaCy's URL_MATCH, roughly
_URL = r"(?=[hw])" + _CHUNK_START + r"(?:https?://|www\.)\S+?(?=" + _SUFFIX_RUN + ")"
# host names with a hyphen or a path, and e-mail addresses, which spaCy keeps whole
_HOST_PATH = _CHUNK_START + r"(?=[^\s\-/]*[-/])(?:[\w.+-]+@)?" + _HOST + r"(?:[/?#]\S*?)?(?=" + _SUFFIX_RUN + ")"
_NUMBER_UNIT = (  # the number in "5km", "3.5kg", "10am"
    r"(?=\d)(?<![\w.,])(?:\d+(?:[.,]\d+)*(?=(?:" + _UNITS + ")(?!" + _END + "))"
    r"|(?:1[0-2]|[1-9])(?=[ap]m(?!" + _END + ")))"
)
_GLUED_WORD = r"(?<!" + _W + r")(?:" + _GLUE_START + r"|\.(?!\.))+" + _WORD + _TRAIL  # "-word", "./configure"
_SYMBOL_CHUNK = (  # a chunk of symbols that spaCy does not split: "|===|", "-=", "//"
    r"(?<![^\s" + _PREFIX + "])" + _GLUE_START + r"(?:[^\s\w.…" + _ICONS + r"]|_)*?"
    r"(?=[.,;:!?()\[\]{}<>\"'”’`_*#&" + _ICONS + r"]*(?:\s|$))"
)
_TOKEN_PARTS = (
    _URL,
    _HOST_PATH,
    r"(?=a)and/or(?!" + _END + ")",
    _NUMBER_UNIT,
    _WORD + _TRAIL,
    _GLUED_WORD,
    r"\+(?=\d)" + _WORD + _TRAIL,  # "+5"
    _SYMBOL_CHUNK,
    _CLITIC,
    r":\*|\[:|:\]|:-\)|\):|:\)|''",  # emoticons spaCy re-merges
    r"\.{2,}|-+|[/\\|^~@]+|\S",
)
_TOKEN_RE = re.compile("|".join(_TOKEN_PARTS))
# most documents have no such host name; they skip that (comparatively costly) alternative
_TOKEN_RE_NO_HOST = re.compile("|".join(p for p in _TOKEN_PARTS if p is not _HOST_PATH))
_MAYBE_HOST = re.compile(r"-[\w.+@-]*\.[a-z]{2}|\.[a-z]{2,63}(?::\d{2,5})?[/?#]")


def split_words(text: str) -> list[str]:
    """Split ``text`` into words and punctuation tokens, as datatrove's English ``split_into_words`` does.

    datatrove tokenizes with spaCy's blank English tokenizer; this is a regex that follows its rules
    (contractions, abbreviations, URLs and host names, units, hyphen and period infixes), much faster
    (BENCHMARKS.md). On
    English prose the token lists are identical for nearly all documents. Known differences, mostly in HTML,
    markdown and code: some symbol runs inside a chunk ("/></a", "100%|"), spaCy's re-merged emoticons beyond
    the common ones, units after a slash ("153M/352M") and spelled-out times ("5p.m."). Whitespace is never a
    token.
    """
    tokens = (_TOKEN_RE if _MAYBE_HOST.search(text) else _TOKEN_RE_NO_HOST).findall(text)
    if "n't" not in text and "n’t" not in text and _SPLIT_KEYS.isdisjoint(tokens):
        return tokens
    out: list[str] = []
    for w in tokens:
        if w in _SPLITS:
            out.extend(_SPLITS[w])
        elif len(w) > 3 and w[-1] == "t" and w[-3] == "n" and w[-2] in "'’" and w[:-3].isalpha():
            out.append(w[:-3])  # "don't" -> "do" "n't", "can't" -> "ca" "n't"
            out.append(w[-3:])
        else:
            out.append(w)
    return out


# --- sentences -----------------------------------------------------------------------------------------------
_SENTENCE_END = frozenset(TERMINAL_PUNCTUATION)


@lru_cache(maxsize=4096)
def _is_punct(token: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in token)


def count_sentences(text: str) -> int:
    """Number of sentences in ``text`` as spaCy's rule-based sentencizer (datatrove's English splitter) counts.

    A sentence ends at a token that is a terminal punctuation mark ("." "!" "?" ...) once a following token is
    not punctuation; so "Mr. Smith", "3.5", "e.g. this" and a trailing "..." do not end sentences.
    Returns 1 for text without tokens, like datatrove.
    """
    n = 1
    seen_end = False
    for tok in split_words(text):
        if tok in _SENTENCE_END:
            seen_end = True
        elif seen_end and not _is_punct(tok):
            n += 1
            seen_end = False
    return n
