import random
from collections import Counter

import pytest

from operators.base import REGISTRY, params_model
from operators.heuristics import C4Quality, FineWebQuality, GopherQuality, GopherRepetition, Length, NGrams
from tests.conftest import make_batch

GOOD = """The quick brown fox jumps over the lazy dog near the river bank.
She said that the weather would be warm and sunny for the whole week.
Researchers have found that regular exercise can improve memory and focus in adults.
Our town library opened a new reading room with comfortable chairs and large windows.
Many farmers in the valley grow apples, pears and plums on small family orchards.
The committee will meet again on Tuesday to discuss the budget for next year.
Children learn to read faster when parents share books with them every evening.
After the storm passed, volunteers helped to clear fallen branches from the streets."""
LINES = GOOD.split("\n")


@pytest.mark.parametrize("cls", [GopherQuality, GopherRepetition, FineWebQuality, Length])
def test_good_document_passes_every_filter(cls):
    assert cls(stage="s").check(GOOD) is None


def test_good_document_passes_c4_unchanged():
    assert C4Quality(stage="c4").filter_text(GOOD) == (None, GOOD)


# --- gopher_quality -------------------------------------------------------------------------------------------
def gq(text, **kw):
    return GopherQuality(stage="gopher_quality", **kw).check(text)


def test_gopher_short_and_long():
    assert gq("The cat sat on the mat with the hat.") == "gopher_short_doc"
    assert gq(GOOD, min_doc_words=10, max_doc_words=20) == "gopher_long_doc"
    assert gq("The cat sat on the mat with the hat.", min_doc_words=None) is None


def test_gopher_average_word_length():
    short_words = " ".join(["I am a cat and so is he, to be or not to be."] * 6)
    assert gq(short_words) == "gopher_below_avg_threshold"
    long_words = " ".join(["The extraordinarily incomprehensible characteristically uncharacteristic"] * 15)
    assert gq(long_words) == "gopher_above_avg_threshold"


def test_gopher_hashes_and_ellipsis():
    assert gq(GOOD + "\n" + " ".join(["#tag"] * 30)) == "gopher_too_many_hashes"
    assert gq(GOOD + "\n" + " ".join(["wait..."] * 30)) == "gopher_too_many_ellipsis"
    assert gq(GOOD + "\n" + " ".join(["wait…"] * 30)) == "gopher_too_many_ellipsis"


def test_gopher_bullets():
    bullets = "\n".join(f"- {line}" for line in LINES)
    assert gq(bullets) == "gopher_too_many_bullets"
    assert gq("\n".join(f"• {line}" for line in LINES)) == "gopher_too_many_bullets"
    assert gq(bullets, max_bullet_lines_ratio=None) is None


def test_gopher_lines_ending_in_ellipsis():
    text = "\n".join(line[:-1] + "..." if i < 3 else line for i, line in enumerate(LINES))
    assert gq(text) == "gopher_too_many_end_ellipsis"


def test_gopher_alpha_words():
    numbers = " ".join(str(1000 + i) for i in range(40))
    assert gq(GOOD + "\n" + numbers) == "gopher_below_alpha_threshold"


def test_gopher_stop_words():
    text = " ".join(["Cats sleep often while dogs bark loudly outside during windy nights."] * 6)
    assert gq(text) == "gopher_enough_stop_words"
    # case-sensitive, like datatrove: "The" is not "the"
    assert gq(text + " The To") == "gopher_enough_stop_words"
    assert gq(text + " the to") is None
    assert gq(text, stop_words=["cats", "dogs", "Cats", "dogs"]) is None


def test_gopher_symbol_tokens_are_not_words():
    # 49 words plus punctuation: still short
    text = " ".join(["word"] * 49) + " ! ? ... -- ## ."
    assert gq(text, min_stop_words=None) == "gopher_short_doc"


# --- gopher_repetition ----------------------------------------------------------------------------------------
def gr(text, **kw):
    return GopherRepetition(stage="gopher_repetition", **kw).check(text)


def test_duplicate_paragraphs():
    para = "A paragraph that says something."
    assert gr(f"{para}\n\n{para}\n\n{para}\n\nAnother one.") == "dup_para_frac"
    long = " ".join(LINES[:4])
    assert gr(f"{long}\n\n{long}\n\nshort one.\n\nshort two.") == "dup_para_char_frac"


def test_duplicate_lines():
    assert gr("alpha line\nbeta line\nalpha line\nalpha line\ngamma line") == "dup_line_frac"
    long = " ".join(LINES[:4])
    assert gr(f"{long}\n{long}\nshort one.\nshort two.") == "dup_line_char_frac"


def test_top_n_grams():
    assert gr(" ".join(["the cat"] * 20)) == "top_2_gram"
    text = " ".join(f"{w} red fox" for w in LINES[0].split())
    assert gr(text, top_n_grams=[(3, 0.1)], dup_n_grams=[]) == "top_3_gram"
    assert gr(text, top_n_grams=[(4, 0.2)], dup_n_grams=[]) is None
    assert gr(text, top_n_grams=[], dup_n_grams=[]) is None


def test_duplicated_n_grams():
    repeated = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    text = f"{LINES[0]} {repeated} {LINES[1]} {repeated} {LINES[2]}"
    assert gr(text) == "duplicated_6_n_grams"  # 5-grams cover 0.146 <= 0.15 of the text, 6-grams 0.146 > 0.14
    assert gr(text, dup_n_grams=[(5, 0.1)]) == "duplicated_5_n_grams"
    assert gr(text, dup_n_grams=[(8, 0.05)]) == "duplicated_8_n_grams"
    # the longest repeat is ". alpha ... mu" (13 words): no 14-gram repeats
    assert gr(text, dup_n_grams=[(13, 0.01)]) == "duplicated_13_n_grams"
    assert gr(text, dup_n_grams=[(14, 0.0)]) is None
    assert gr(GOOD, dup_n_grams=[(5, 0.0)]) is None


def test_empty_text_is_not_repetitive():
    assert gr("") is None


def _reference_top(words, n):
    grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


def _reference_duplicated(words, n):
    seen, total, i = set(), 0, 0
    while i < len(words) - n + 1:
        gram = tuple(words[i : i + n])
        if gram in seen:
            total += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return total


@pytest.mark.parametrize("seed", range(30))
def test_ngram_counts_match_a_plain_reference(seed):
    rng = random.Random(seed)
    vocab = ["a", "bb", "ccc", "the", "of", "x" * rng.randint(1, 9), "yes", "no"][: rng.randint(2, 8)]
    words = [rng.choice(vocab) for _ in range(rng.randint(0, 300))]
    grams = NGrams(words)
    for n in (2, 3, 4, 1, 5, 6, 7, 8, 9, 10):  # out of order on purpose: hashes are recomputed
        assert grams.top_chars(n) == _reference_top(words, n)
        assert grams.duplicated_chars(n) == _reference_duplicated(words, n)


# --- c4 -------------------------------------------------------------------------------------------------------
def c4(text, **kw):
    return C4Quality(stage="c4", **kw).filter_text(text)


def test_c4_removes_bad_lines_and_keeps_good_ones():
    noisy = [
        LINES[0],
        "Click here to subscribe",  # no terminal punctuation
        LINES[1] + "[1]",  # citation removed
        "Please enable JavaScript to view the comments.",  # javascript
        LINES[2],
        "Too short.",  # fewer than 3 words
        "Read our Privacy Policy for details.",  # policy
        "This site uses cookies to improve your experience.",
        "Wait for it...",  # ellipsis is not terminal punctuation
        LINES[3],
        "word " + "x" * 1001 + " ends here.",  # word longer than 1000 characters
        "  " + LINES[4] + "  ",  # stripped
    ]
    reason, text = c4("\n".join(noisy))
    assert reason is None
    assert text == "\n".join([LINES[0], LINES[1], LINES[2], LINES[3], LINES[4]])


def test_c4_document_rules():
    assert c4(GOOD + "\nLorem ipsum dolor sit amet.")[0] == "lorem_ipsum"
    assert c4(GOOD + "\nUse the {braces} like this.")[0] == "curly_bracket"
    assert c4("\n".join(LINES[:3]))[0] == "too_few_sentences"
    # several sentences on one line count separately
    assert c4("One two three. Four five six! Seven eight nine? Ten and more. Last one here.")[0] is None
    assert c4("Mr. Smith went to Washington. He saw the U.S. capitol. It was 3.5 miles away.")[0] == (
        "too_few_sentences"
    )


def test_c4_document_rules_only_look_at_kept_lines():
    # like datatrove, "lorem ipsum" or "{" on a line that is dropped anyway does not remove the document
    assert c4(GOOD + "\nlorem ipsum dolor sit amet")[0] is None
    assert c4(GOOD + "\nfunction() { return javascript; }.")[0] is None


def test_c4_switches():
    assert c4("\n".join(LINES[:3]), min_num_sentences=-1)[0] is None
    assert c4("Click here to subscribe\n" + GOOD, filter_no_terminal_punct=False)[1].startswith("Click here")
    assert c4(GOOD + "\nLorem ipsum dolor sit amet.", filter_lorem_ipsum=False)[0] is None
    assert c4("a b.\n" + GOOD, min_words_per_line=-1)[1].startswith("a b.")
    cited = LINES[0][:-1] + "[2]."
    assert c4(cited + "\n" + GOOD)[1].startswith(LINES[0] + "\n")
    assert c4(cited + "\n" + GOOD, remove_citations=False)[1].startswith(cited + "\n")


def test_c4_operator_rewrites_only_active_rows():
    noisy = "Menu Home About\n" + GOOD
    batch = make_batch(
        [noisy, noisy, noisy, "\n".join(LINES[:2])],
        domains=["web", "code", "web", "web"],
        reasons=[None, None, "earlier_reason", None],
    )
    out = C4Quality(stage="c4", domains=["web"])(batch)
    assert out.column("text").to_pylist() == [GOOD, noisy, noisy, "\n".join(LINES[:2])]
    assert out.column("reason").to_pylist() == [None, None, "earlier_reason", "too_few_sentences"]
    assert out.column("stage").to_pylist() == [None, None, "earlier", "c4"]
    assert out.schema == batch.schema


# --- fineweb_quality ------------------------------------------------------------------------------------------
def fw(text, **kw):
    return FineWebQuality(stage="fineweb_quality", **kw).check(text)


def test_fineweb_rules():
    assert fw(" \n\t\n") == "empty"
    no_punct = "\n".join(line.rstrip(".") for line in LINES)
    assert fw(no_punct) == "line_punct_ratio"
    assert fw(no_punct, line_punct_exclude_zero=True) is None
    short = "\n".join(f"Item number {i} is here." for i in range(10)) + "\n" + LINES[0]
    assert fw(short) == "short_line_ratio"
    assert fw(GOOD + "\n" + LINES[0]) == "char_dup_ratio"
    listy = "\n".join(f"Supercalifragilistic{i} extraordinarily." for i in range(12))
    assert fw(listy) == "list_ratio"


def test_fineweb_stop_chars():
    text = "\n".join(line[:-1] + ";" for line in LINES)
    assert fw(text) == "line_punct_ratio"
    assert fw(text, stop_chars=[";"]) is None


# --- length ---------------------------------------------------------------------------------------------------
def test_length_rules():
    assert Length(stage="length").check("") == "length_too_short"
    assert Length(stage="length").check("x") is None
    assert Length(stage="length", min_chars=10).check("short") == "length_too_short"
    assert Length(stage="length", max_chars=10).check("much too long") == "length_too_long"
    assert Length(stage="length", min_words=3).check("two words") == "length_too_few_words"
    assert Length(stage="length", max_words=1).check("two words") == "length_too_many_words"
    assert Length(stage="length", min_words=2, max_words=2).check("two   words\n") is None


# --- shared operator behaviour --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, bad", [(GopherQuality, ""), (GopherRepetition, "a\na\na"), (FineWebQuality, ""), (Length, "")]
)
def test_filters_respect_domains_and_removed_rows(cls, bad):
    batch = make_batch([bad, bad, bad, GOOD], domains=["web", "code", "web", "web"], reasons=[None, None, "old", None])
    out = cls(stage="s", domains=["web"])(batch)
    reasons = out.column("reason").to_pylist()
    assert reasons[1] is None and reasons[2] == "old" and reasons[3] is None
    assert reasons[0] is not None and out.column("stage").to_pylist()[0] == "s"
    assert out.column("text").to_pylist() == batch.column("text").to_pylist()


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (GopherQuality, {"max_bullet_lines_ratio": 1.5}, r"max_bullet_lines_ratio: .*less than or equal to 1, got 1.5"),
        (GopherQuality, {"min_doc_words": -1}, r"min_doc_words: .*greater than or equal to 0, got -1"),
        (GopherQuality, {"min_doc_words": True}, r"min_doc_words: .*not true/false"),
        (GopherQuality, {"min_doc_words": 100, "max_doc_words": 10}, "min_doc_words=100 is greater"),
        (GopherQuality, {"min_avg_word_length": 5, "max_avg_word_length": 4}, "min_avg_word_length"),
        (GopherQuality, {"stop_words": "the"}, r"stop_words: Input should be a valid list"),
        (GopherRepetition, {"dup_line_frac": 2}, r"dup_line_frac: .*less than or equal to 1, got 2"),
        (GopherRepetition, {"top_n_grams": [(0, 0.2)]}, r"top_n_grams.0.0: .*greater than or equal to 1, got 0"),
        (GopherRepetition, {"dup_n_grams": [(5, 1.5)]}, r"dup_n_grams.0.1: .*less than or equal to 1, got 1.5"),
        (GopherRepetition, {"dup_n_grams": [5, 0.1]}, r"dup_n_grams.0: Input should be a valid"),
        (C4Quality, {"min_num_sentences": -2}, r"min_num_sentences: .*greater than or equal to -1, got -2"),
        (C4Quality, {"max_word_length": 1.5}, r"max_word_length: .*valid integer.*got 1.5"),
        (FineWebQuality, {"line_punct_thr": -0.1}, r"line_punct_thr: .*greater than or equal to 0, got -0.1"),
        (FineWebQuality, {"stop_chars": []}, r"stop_chars: .*at least 1 item"),
        (Length, {"min_chars": -1}, r"min_chars: .*greater than or equal to 0, got -1"),
        (Length, {"min_words": 5, "max_words": 2}, "min_words=5 is greater"),
    ],
)
def test_parameter_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(stage="s", **kwargs)


@pytest.mark.parametrize("op", ["gopher_quality", "gopher_repetition", "c4", "fineweb_quality", "length"])
def test_registered_and_params_model_round_trip(op):
    cls = REGISTRY[op]
    params = params_model(cls).model_validate({}).model_dump()
    cls(stage=op, **params)  # defaults validate and build


def test_params_model_accepts_yaml_shaped_values():
    model = params_model(GopherRepetition)
    params = model.model_validate({"top_n_grams": [[2, 0.25]], "dup_n_grams": [[5, 0.2], [6, 0.1]]}).model_dump()
    op = GopherRepetition(stage="r", **params)
    assert op.top_n_grams == ((2, 0.25),) and op.dup_n_grams == ((5, 0.2), (6, 0.1))
    with pytest.raises(Exception, match="max_symbol_word_ratio"):
        params_model(GopherQuality).model_validate({"max_symbol_word_ratio": "lots"})
