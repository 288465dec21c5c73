"""Sluice operators: one module per family, each a Ray Data transform over pyarrow batches."""

import importlib

#: modules that register operators; imported lazily so `import operators` stays cheap
FAMILIES = (
    "normalize",
    "heuristics",
    "dedup",
    "ids",
    "minhash",
    "faults",
    "tokenize",
    "selection",
    "perplexity",
    "classifier",
    "betr",
    "rephrase",
)


def load_all() -> None:
    """Import every operator family so that REGISTRY is complete."""
    for name in FAMILIES:
        try:
            importlib.import_module(f"operators.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"operators.{name}":
                raise
