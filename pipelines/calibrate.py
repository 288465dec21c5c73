"""Calibrate a recipe's filter thresholds per domain on a trusted reference sample.

The heuristic filters (Gopher, C4, FineWeb, length) carry web-text defaults; on documentation,
code or reference text they remove most of the good documents. ``sluice calibrate`` measures,
for every rule of every filter stage and every domain with a reference, the share of the
reference the rule removes (and its share of the corpus), and relaxes each rule along a fixed
ladder of looser values until it removes at most its share of the budget: with ``keep`` 0.99
and k rules, each may remove at most (1 − 0.99)/k of the reference, so together (a document is
counted once, under the first rule it fails) they keep at least 99% of it. A rule never gets
stricter. The result is a recipe whose filter stages are split per calibrated domain, with a
``calibration:`` block (the table) that the run's manifest and HTML report carry.

Model scores are calibrated too: a ``quality_classifier`` stage that selects with ``threshold``
(or a ``perplexity`` stage with ``max_ppl``) gets, per domain, the threshold at which it keeps
``keep`` of the reference (the reference's ``1 − keep`` quantile of ``quality``, its ``keep``
quantile of ``ppl``). Unlike a heuristic rule this may be stricter or looser than
the written value: a selection model's threshold only means something against text one trusts.
Score the reference with a model that was not trained on it, or the threshold is too optimistic.

Run: ``sluice calibrate recipe.yaml --reference clean/docs.jsonl=docs --reference clean/code/=code -o calibrated.yaml``
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from operators import load_all
from operators.base import REGISTRY
from pipelines.recipe import Recipe, stage_params
from storage.evalsets import load_eval_set

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Knob:
    """One tunable rule: a parameter, the reason codes it removes documents with, and its values
    from strict to loose (the last one switches the rule off)."""

    param: str
    reasons: tuple[str, ...]
    ladder: tuple[Any, ...]


def _scaled(factors: Sequence[float]) -> Callable[[tuple], list[tuple]]:
    return lambda pairs: [tuple((n, round(min(1.0, f * k), 4)) for n, f in pairs) for k in factors] + [()]


#: the rules calibration may relax, per op (web-text rules: all of these)
KNOBS: dict[str, tuple[Knob, ...]] = {
    "gopher_quality": (
        Knob("min_doc_words", ("gopher_short_doc",), (50, 20, 10, 5, 1, None)),
        Knob("max_doc_words", ("gopher_long_doc",), (100_000, 200_000, 500_000, None)),
        Knob("min_avg_word_length", ("gopher_below_avg_threshold",), (3, 2.5, 2, 1.5, 1, None)),
        Knob("max_avg_word_length", ("gopher_above_avg_threshold",), (10, 12, 15, 20, 30, None)),
        Knob(
            "max_symbol_word_ratio", ("gopher_too_many_hashes", "gopher_too_many_ellipsis"), (0.1, 0.2, 0.3, 0.5, None)
        ),
        Knob("max_bullet_lines_ratio", ("gopher_too_many_bullets",), (0.9, 0.95, 1.0, None)),
        Knob("max_ellipsis_lines_ratio", ("gopher_too_many_end_ellipsis",), (0.3, 0.5, 0.7, None)),
        Knob("min_alpha_words_ratio", ("gopher_below_alpha_threshold",), (0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, None)),
        Knob("min_stop_words", ("gopher_enough_stop_words",), (2, 1, None)),
    ),
    "gopher_repetition": (
        Knob("dup_para_frac", ("dup_para_frac",), (0.3, 0.4, 0.5, 0.7, None)),
        Knob("dup_para_char_frac", ("dup_para_char_frac",), (0.2, 0.3, 0.4, 0.5, 0.7, None)),
        Knob("dup_line_frac", ("dup_line_frac",), (0.3, 0.4, 0.5, 0.7, None)),
        Knob("dup_line_char_frac", ("dup_line_char_frac",), (0.2, 0.3, 0.4, 0.5, 0.7, None)),
        Knob("top_n_grams", ("top_*_gram",), ("scale",)),
        Knob("dup_n_grams", ("duplicated_*_n_grams",), ("scale",)),
    ),
    "c4": (
        Knob("min_num_sentences", ("too_few_sentences",), (5, 3, 2, 1, -1)),
        Knob("filter_curly_bracket", ("curly_bracket",), (True, False)),
        Knob("filter_lorem_ipsum", ("lorem_ipsum",), (True, False)),
    ),
    "fineweb_quality": (
        Knob("line_punct_thr", ("line_punct_ratio",), (0.12, 0.1, 0.05, 0.0)),
        Knob("short_line_thr", ("short_line_ratio",), (0.67, 0.8, 0.9, 1.0)),
        Knob("char_duplicates_ratio", ("char_dup_ratio",), (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)),
        Knob("new_line_ratio", ("list_ratio",), (0.3, 0.5, 1.0, 2.0, 1e9)),
    ),
    "length": (
        Knob("min_chars", ("length_too_short",), (1000, 500, 200, 100, 50, 20, 1, None)),
        Knob("max_chars", ("length_too_long",), (100_000, 200_000, 1_000_000, None)),
        Knob("min_words", ("length_too_few_words",), (200, 100, 50, 20, 10, 1, None)),
        Knob("max_words", ("length_too_many_words",), (20_000, 50_000, 200_000, None)),
    ),
}
SCALES = (1.0, 1.5, 2.0, 3.0)


def _matches(reason: str | None, patterns: tuple[str, ...]) -> bool:
    if reason is None:
        return False
    for p in patterns:
        head, _, tail = p.partition("*")
        if reason == p or ("*" in p and reason.startswith(head) and reason.endswith(tail)):
            return True
    return False


def _looser(knob: Knob, current: Any) -> list[Any]:
    """The values of ``knob`` looser than ``current``, strict to loose."""
    if knob.ladder == ("scale",):
        return _scaled(SCALES[1:])(tuple(current or ()))
    ladder = list(knob.ladder)
    if current in ladder:
        return ladder[ladder.index(current) + 1 :]
    if current is None or current is False:
        return []
    first, last = ladder[0], next((v for v in reversed(ladder) if isinstance(v, (int, float))), None)
    ascending = last is not None and last > first  # a max-rule: larger is looser
    looser = [v for v in ladder if v is None or v is False or (v > current if ascending else v < current)]
    return looser


@dataclass(frozen=True)
class Score:
    """A model-score stage's threshold: the parameter, whether higher scores are kept, how to score."""

    param: str
    keep_high: bool
    score: Callable[[Any, list[str]], list[float | None]]


#: model-score stages calibration sets a threshold for
SCORED: dict[str, Score] = {
    "quality_classifier": Score("threshold", True, lambda op, texts: [float(x) for x in op.predict(texts)]),
    "perplexity": Score("max_ppl", False, lambda op, texts: op.perplexities(texts)),
}


def score_threshold(scores: Sequence[float], keep: float, keep_high: bool) -> float:
    """The strictest threshold that removes at most ``1 - keep`` of ``scores``: removal is
    ``score < t`` when high scores are kept, ``score > t`` otherwise."""
    s = sorted(scores, reverse=not keep_high)
    return float(s[int((1.0 - keep) * len(s) + 1e-9)]) if s else 0.0


def calibrate_scored(
    op: str, params: dict[str, Any], reference: list[str], corpus: list[str], keep: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The threshold of a model-score stage at which it keeps ``keep`` of ``reference``, and its table row."""
    spec = SCORED[op]
    model = REGISTRY[op](stage=op, **{**params, spec.param: None})
    ref_scores = [x for x in spec.score(model, reference) if x is not None]
    corpus_scores = [x for x in spec.score(model, corpus) if x is not None] if corpus else []
    t = score_threshold(ref_scores, keep, spec.keep_high)
    # six decimals, rounded toward keeping: a rounded threshold never removes the quantile's own document
    after = (math.floor if spec.keep_high else math.ceil)(t * 1e6) / 1e6
    before = params[spec.param]

    def share(scores: list[float], t: float) -> float | None:
        if not scores:
            return None
        return round(sum((x < t) if spec.keep_high else (x > t) for x in scores) / len(scores), 4)

    row = {
        "param": spec.param,
        "before": before,
        "after": after,
        "reference_removed_before": share(ref_scores, before),
        "reference_removed_after": share(ref_scores, after),
        "corpus_removed_before": share(corpus_scores, before),
        "corpus_removed_after": share(corpus_scores, after),
    }
    return {**params, spec.param: after}, [row]


def reasons(op: str, params: dict[str, Any], texts: list[str]) -> list[str | None]:
    """The reason each text is removed with under ``params`` (None: kept)."""
    f = REGISTRY[op](stage=op, **params)
    if op == "c4":
        return [f.filter_text(t)[0] for t in texts]
    return [f.check(t) for t in texts]


def _share(op: str, params: dict[str, Any], texts: list[str], patterns: tuple[str, ...] | None) -> float:
    if not texts:
        return 0.0
    rs = reasons(op, params, texts)
    return sum(r is not None if patterns is None else _matches(r, patterns) for r in rs) / len(texts)


@dataclass
class Row:
    """One (stage, domain, rule) line of the calibration table."""

    stage: str
    domain: str
    param: str
    before: Any
    after: Any
    reference_removed_before: float
    reference_removed_after: float
    corpus_removed_before: float | None
    corpus_removed_after: float | None


def calibrate_stage(
    op: str, params: dict[str, Any], reference: list[str], corpus: list[str], keep: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Relaxed ``params`` for one filter stage on one domain, and the per-rule table."""
    knobs = KNOBS[op]
    budget = (1.0 - keep) / len(knobs)
    new = dict(params)
    for _ in range(2):  # a second pass: relaxing one rule can move documents onto a later rule
        for k in knobs:
            if _share(op, new, reference, k.reasons) <= budget + 1e-12:
                continue
            for value in _looser(k, new[k.param]):
                new[k.param] = value
                if _share(op, new, reference, k.reasons) <= budget + 1e-12:
                    break
    rows = []
    for k in knobs:
        rows.append(
            {
                "param": k.param,
                "before": params[k.param],
                "after": new[k.param],
                "reference_removed_before": round(_share(op, params, reference, k.reasons), 4),
                "reference_removed_after": round(_share(op, new, reference, k.reasons), 4),
                "corpus_removed_before": round(_share(op, params, corpus, k.reasons), 4) if corpus else None,
                "corpus_removed_after": round(_share(op, new, corpus, k.reasons), 4) if corpus else None,
            }
        )
    rows.append(
        {
            "param": "(all rules)",
            "before": None,
            "after": None,
            "reference_removed_before": round(_share(op, params, reference, None), 4),
            "reference_removed_after": round(_share(op, new, reference, None), 4),
            "corpus_removed_before": round(_share(op, params, corpus, None), 4) if corpus else None,
            "corpus_removed_after": round(_share(op, new, corpus, None), 4) if corpus else None,
        }
    )
    return new, rows


def corpus_sample(recipe: Recipe, per_domain: int) -> dict[str, list[str]]:
    """Up to ``per_domain`` documents of every input domain, read in input order (no Ray)."""
    from pipelines.readers import InputDatasource, read_file

    out: dict[str, list[str]] = {}
    for task in InputDatasource(recipe.inputs).tasks:
        got = out.setdefault(task.domain, [])
        if len(got) >= per_domain:
            continue
        for block in read_file(task):
            texts = block.filter(block.column("reason").is_null()).column("text").to_pylist()
            got.extend(texts[: per_domain - len(got)])
            if len(got) >= per_domain:
                break
    return out


def _normalize(recipe: Recipe, upto: int, domain: str, texts: list[str]) -> list[str]:
    """``texts`` as the filter at stage ``upto`` sees them: after the recipe's earlier normalize stages."""
    for st in recipe.stages[:upto]:
        params = stage_params(st)
        if st.op == "normalize" and (params.get("domains") is None or domain in params["domains"]):
            op = REGISTRY["normalize"](stage=st.stage_name, **params)
            texts = [op.normalize(t, not op.keeps_whitespace(domain, None)) for t in texts]
    return texts


def calibrate(
    recipe: Recipe, recipe_text: str, references: list[str], keep: float = 0.99, sample: int = 2000
) -> tuple[str, dict[str, Any]]:
    """A calibrated recipe (YAML text) and its calibration record.

    Args:
        recipe: the validated recipe; ``recipe_text`` its YAML (rewritten, comments are not kept).
        references: eval-set specs ``PATH`` or ``PATH=DOMAIN`` of trusted documents (the domain per
            record, else ``DOMAIN``, else the file name).
        keep: share of each domain's reference every filter stage must keep.
        sample: documents per domain read from the reference and from the corpus.
    """
    load_all()
    if not 0.5 <= keep < 1.0:
        raise ValueError(f"--keep must be in [0.5, 1), got {keep}")
    ref: dict[str, list[str]] = {}
    for spec in references:
        path, _, domain = spec.partition("=")
        for ex in load_eval_set(path, domain or None):
            if len(ref.setdefault(ex.domain, [])) < sample:
                ref[ex.domain].append(ex.text)
    corpus = corpus_sample(recipe, sample)
    unknown = sorted(set(ref) - set(corpus))
    if unknown:
        known = ", ".join(sorted(corpus))
        raise ValueError(f"reference domains not in the recipe's inputs: {', '.join(unknown)} (known: {known})")
    data = yaml.safe_load(recipe_text)
    table: list[dict[str, Any]] = []
    stages_out: list[dict[str, Any]] = []
    for i, st in enumerate(recipe.stages):  # the expanded stages (equivalent to the written ones)
        if st.op == "input_ids":
            continue  # added again when the calibrated recipe is read
        raw = {k: v for k, v in st.model_dump().items() if v is not None}
        params = stage_params(st)
        scored = st.op in SCORED and params.get(SCORED[st.op].param) is not None
        if st.op not in KNOBS and not scored:
            stages_out.append(raw)
            continue
        applies = [d for d in corpus if params.get("domains") is None or d in params["domains"]]
        calibrated = [d for d in applies if d in ref]
        if not calibrated:
            stages_out.append(raw)
            continue
        rest = [d for d in applies if d not in ref]
        if rest:  # domains without a reference keep the stage as written
            stages_out.append({**raw, "domains": rest})
        for d in calibrated:
            texts_ref = _normalize(recipe, i, d, ref[d])
            texts_corpus = _normalize(recipe, i, d, corpus[d])
            if scored:
                tuned, rows = calibrate_scored(st.op, params, texts_ref, texts_corpus, keep)
            else:
                tuned, rows = calibrate_stage(st.op, params, texts_ref, texts_corpus, keep)
            changed = {k: _yaml_value(v) for k, v in tuned.items() if v != params[k] and k != "domains"}
            stages_out.append({**raw, "name": f"{st.stage_name}_{d}", "domains": [d], **changed})
            table += [{"stage": st.stage_name, "domain": d, **r} for r in rows]
            logger.info("calibrated %s for %s: %s", st.stage_name, d, changed or "unchanged")
    record = {
        "keep": keep,
        "sample": sample,
        "references": list(references),
        "reference_docs": {d: len(v) for d, v in sorted(ref.items())},
        "corpus_docs": {d: len(v) for d, v in sorted(corpus.items())},
        "rules": [{k: _yaml_value(v) for k, v in r.items()} for r in table],
    }
    data["stages"] = stages_out
    data["calibration"] = record
    header = (
        "# Calibrated by `sluice calibrate` (keep "
        f"{keep}): filter thresholds relaxed per domain so that each stage keeps >= {keep:.0%} of the reference.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, width=120), record


def _yaml_value(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_yaml_value(x) for x in v]
    return v
