import pytest

from operators.words import PUNCTUATION_CHARS, TERMINAL_PUNCTUATION, count_sentences, split_words

# expected token lists are what datatrove's English split_into_words (spaCy) returns for the same text
SPACY_CASES = [
    ("The cat sat on the mat.", ["The", "cat", "sat", "on", "the", "mat", "."]),
    ("don't can't won't Don't isn't", ["do", "n't", "ca", "n't", "wo", "n't", "Do", "n't", "is", "n't"]),
    ("dont cannot gonna its", ["do", "nt", "can", "not", "gon", "na", "its"]),
    (
        "I'm it's John's we're they've I'll I'd",
        ["I", "'m", "it", "'s", "John", "'s", "we", "'re", "they", "'ve", "I", "'ll", "I", "'d"],
    ),
    ("o'clock rock'n'roll O'Brien dogs'", ["o'clock", "rock'n'roll", "O'Brien", "dogs", "'"]),
    (
        "well-known COVID-19 3-year-old 2020-2021 1e-5",
        ["well", "-", "known", "COVID-19", "3", "-", "year", "-", "old", "2020", "-", "2021", "1e-5"],
    ),
    (
        "and/or 1/2 km/h 10:30 a:b 1,000 a,b",
        ["and/or", "1/2", "km", "/", "h", "10:30", "a", ":", "b", "1,000", "a", ",", "b"],
    ),
    (
        "3.5 U.S. e.g. etc. Mr. John F. Kennedy USA. end.Next",
        ["3.5", "U.S.", "e.g.", "etc", ".", "Mr.", "John", "F.", "Kennedy", "USA", ".", "end", ".", "Next"],
    ),
    ("50% $5 #tag @user a&b AT&T", ["50", "%", "$", "5", "#", "tag", "@user", "a&b", "AT&T"]),
    (
        "(hello) [1] \"quoted\" 'single' “dq”",
        ["(", "hello", ")", "[", "1", "]", '"', "quoted", '"', "'", "single", "'", "“", "dq", "”"],
    ),
    ("Hello… a...b x.... — -- word- -word", ["Hello", "…", "a", "...", "b", "x", "....", "—", "--", "word-", "-word"]),
    (
        "See https://example.com/page. Or www.x.org, or basic-client.py!",
        ["See", "https://example.com/page", ".", "Or", "www.x.org", ",", "or", "basic-client.py", "!"],
    ),
    ("foo.bar() foo(bar) C++ C# snake_case", ["foo.bar", "(", ")", "foo(bar", ")", "C++", "C", "#", "snake_case"]),
    ("==== |===| -=", ["=", "=", "=", "=", "|===|", "-="]),
    (
        "5km 3.5kg 4K 10am 13am ±3 5°C y'all see example.com/path.",
        [
            "5",
            "km",
            "3.5",
            "kg",
            "4",
            "K",
            "10",
            "am",
            "13am",
            "±3",
            "5",
            "°",
            "C",
            "y'",
            "all",
            "see",
            "example.com/path",
            ".",
        ],
    ),
    ("word\n\nnext\tline   spaces", ["word", "next", "line", "spaces"]),
]


@pytest.mark.parametrize("text, expected", SPACY_CASES)
def test_split_words_follows_spacy(text, expected):
    assert split_words(text) == expected


def test_split_words_empty_and_whitespace():
    assert split_words("") == []
    assert split_words(" \n\t ") == []


@pytest.mark.parametrize(
    "text, n",
    [
        ("Hello there.", 1),
        ("Hello there. This is Mr. Smith! Is it? Yes... okay.", 4),
        ('He said "hi." Then he left.', 2),
        ("It costs 3.5 dollars in the U.S. today.", 1),
        ("end.Next one", 2),
        ("", 1),
    ],
)
def test_count_sentences(text, n):
    assert count_sentences(text) == n


def test_punctuation_tables():
    assert {".", "!", "?", "。", "؟", "।"} <= set(TERMINAL_PUNCTUATION)
    assert not {",", ";", '"', "'"} & set(TERMINAL_PUNCTUATION)
    assert set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~…—–“”’«»") <= PUNCTUATION_CHARS
    assert not {"a", "1", "\t", "\n", " ", "‘", "©"} & PUNCTUATION_CHARS


def test_agrees_with_datatrove_when_installed():
    text_mod = pytest.importorskip("datatrove.utils.text")
    pytest.importorskip("spacy")
    for text, _ in SPACY_CASES:
        assert split_words(text) == text_mod.split_into_words(text)
    assert PUNCTUATION_CHARS == text_mod.PUNCTUATION_SET
    assert set(TERMINAL_PUNCTUATION) == text_mod.TERMINAL_PUNCTUATION
