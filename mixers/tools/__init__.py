"""Tools, not the library: :mod:`.train`, a reference trainer (a tiny GPT trained from a mixer server),
and :mod:`.simulate`, a simulated trainer to try mixing algorithms without a model."""
