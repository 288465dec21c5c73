"""Moved to :mod:`mixers.tools.train`; this path stays for ``python -m mixers.train`` and its imports."""

from mixers.tools.train import (
    DEFAULT_VOCAB,
    GPT,
    Block,
    GPTConfig,
    SelfAttention,
    TrainConfig,
    Trainer,
    VocabMap,
    lr_at,
    main,
    parse_args,
    pick_device,
    plot,
    save_figure,
    token_frequencies,
)

__all__ = [
    "DEFAULT_VOCAB",
    "GPT",
    "Block",
    "GPTConfig",
    "SelfAttention",
    "TrainConfig",
    "Trainer",
    "VocabMap",
    "lr_at",
    "main",
    "parse_args",
    "pick_device",
    "plot",
    "save_figure",
    "token_frequencies",
]

if __name__ == "__main__":
    main()
