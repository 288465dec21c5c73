"""Online mixing: which domains a trainer's next batches come from, decided while it trains.

- :mod:`mixers.algorithms`: the mixing algorithms (static … Aioli, DGA, ODM, DoReMi).
- :mod:`mixers.server`: the Arrow Flight batch server (``sluice serve``); no torch.
- :mod:`mixers.trainer`: the trainer side: ``MixtureStream`` and the measurements mixers ask for.
- :mod:`mixers.tools`: the reference trainer and a simulated trainer, to try mixers.
- :mod:`mixers.hashing`, :mod:`mixers.checks`: seeded hashing and number checks shared by them.

``mixers.client``, ``mixers.trainer_utils``, ``mixers.train``, ``mixers.simulate`` and ``mixers.cli``
are the older import paths, kept as re-exports.
"""
