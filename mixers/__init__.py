"""Online mixing: mixing algorithms, the Arrow Flight batch server and the trainer-side client."""

from __future__ import annotations


def load_all() -> None:
    """Import every built-in mixing algorithm so the registry knows them."""
    from mixers import aioli, dga, doremi, odm, static  # noqa: F401
