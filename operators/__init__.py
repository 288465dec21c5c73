"""Sluice operators: one module (or one package, for a large family) per family, each a Ray Data
transform over pyarrow batches.

Which op lives where (the op names recipes use):

- ``normalize``: :mod:`operators.normalize` — ``length``, ``gopher_quality``, ``gopher_repetition``,
  ``c4``, ``fineweb_quality``: :mod:`operators.heuristics` (word splitting in :mod:`operators.words`)
- ``input_ids``: :mod:`operators.ids` — ``exact_dedup`` and ``minhash_dedup``: :mod:`operators.dedup`
- ``decontaminate``: :mod:`operators.decontaminate` (n-gram overlap with eval sets) — ``pii``: :mod:`operators.pii`
- ``language_id``: :mod:`operators.langid` — ``url_filter``: :mod:`operators.urlfilter` (block lists on the URL)
- ``extract``: :mod:`operators.extract` (HTML to main text)
- ``tokenize``: :mod:`operators.tokenize` — ``split``: :mod:`operators.split`
- ``percentile_filter``: :mod:`operators.percentile` — ``perplexity``: :mod:`operators.perplexity`
- ``quality_classifier``: :mod:`operators.classifier` — ``betr``: :mod:`operators.betr`
- ``rephrase``: :mod:`operators.rephrase` — ``inject_fault``: :mod:`operators.faults`
- model loading shared by the model stages: :mod:`operators.models`
"""

import importlib

#: modules that register operators; imported lazily so `import operators` stays cheap
FAMILIES = (
    "normalize",
    "heuristics",
    "ids",
    "dedup.exact",
    "dedup.minhash",
    "decontaminate",
    "pii",
    "extract",
    "langid",
    "urlfilter",
    "faults",
    "tokenize",
    "split",
    "percentile",
    "perplexity",
    "classifier",
    "betr",
    "rephrase.op",
)


def load_all() -> None:
    """Import every operator family so that REGISTRY is complete."""
    for name in FAMILIES:
        try:
            importlib.import_module(f"operators.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"operators.{name}":
                raise
