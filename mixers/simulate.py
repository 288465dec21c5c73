"""Moved to :mod:`mixers.tools.simulate`; this path stays for ``from mixers.simulate import ...``."""

from mixers.tools.simulate import MixingLaw, SimulatedTrainer, Trace, run

__all__ = ["MixingLaw", "SimulatedTrainer", "Trace", "run"]
