"""The mixer service: a run's tokenized shards served to trainers as mixture-weighted packed batches
over Arrow Flight, with the trainer's feedback moving the weights. Nothing here imports torch.

- :mod:`.corpus`: index the shards per domain and split; read row groups.
- :mod:`.sampler`: deterministic draws and packing; :class:`~.sampler.GlobalBatch`.
- :mod:`.feedback`, :mod:`.state`: validate feedback bodies and states; the weight schedule.
- :mod:`.ledger`: the engine's bookkeeping (algorithm, schedule, feedback per step, states).
- :mod:`.engine`: :class:`~.engine.MixerEngine`, which produces and serves the batches.
- :mod:`.flight`: the Flight service (the protocol); :func:`~.flight.start_server`.
- :mod:`.cli`: ``sluice serve``.
"""
