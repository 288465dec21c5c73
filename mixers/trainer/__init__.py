"""The trainer side of online mixing (needs torch): :mod:`.client` (``MixtureStream``, one per rank)
and :mod:`.utils` (the per-sequence losses, held-out losses and gradient alignments mixers ask for)."""
