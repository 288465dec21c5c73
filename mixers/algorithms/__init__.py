"""Mixing algorithms: what weights the server serves, and how trainer feedback moves them.

===============  ==============  ===========================================================
``--mixer``      module          weights
===============  ==============  ===========================================================
``static``       :mod:`.static`  fixed user weights
``stratified``   :mod:`.static`  uniform over the domains with training tokens
``temperature``  :mod:`.static`  ∝ train tokens^(1/T)
``aioli``        :mod:`.aioli`   probe rounds → interaction matrix → exponentiated weights (``report_eval``)
``dga``          :mod:`.dga`     mirror descent on gradient alignment with a target (``report_alignment``)
``odm``          :mod:`.odm`     EXP3 bandit rewarded by training loss (``report``)
``doremi``       :mod:`.doremi`  excess loss over a reference model (``report`` with ``ref_loss_sum``)
``ado``          :mod:`.ado`     prior × learning speed from per-domain loss power laws (``report``)
``schedule``     :mod:`.static`  given weights from given steps on (a timetable)
===============  ==============  ===========================================================

:mod:`.base` holds the interface (:class:`~.base.MixingAlgorithm`), the feedback type and the
registry the ``@register`` decorator fills; importing this package imports every built-in
algorithm, so :func:`build` finds them all.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from mixers.algorithms import ado, aioli, dga, doremi, odm, static  # noqa: F401  (each registers its mixers)
from mixers.algorithms.base import REGISTRY, MixingAlgorithm


def build(name: str, domains: list[str], token_counts: Mapping[str, int], **params: Any) -> MixingAlgorithm:
    """Construct the registered algorithm ``name`` for ``domains`` with ``params``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown mixer {name!r}; known mixers: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    sig = inspect.signature(cls.__init__)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        allowed = sorted(set(sig.parameters) - {"self", "domains", "token_counts"})
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"{name}: unknown parameter(s) {unknown}; {name} takes {allowed or 'no parameters'}")
    return cls(domains, token_counts=token_counts, **params)


def takes(name: str, param: str) -> bool:
    """Whether the registered algorithm ``name`` has a constructor parameter ``param`` (e.g. ``total_steps``,
    which the server passes to the algorithms that plan by the run's length)."""
    cls = REGISTRY.get(name)
    return cls is not None and param in inspect.signature(cls.__init__).parameters
