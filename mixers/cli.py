"""Moved to :mod:`mixers.server.cli`; this path stays for ``from mixers.cli import serve`` and
``python -m mixers.cli`` (benchmarks/bench_mixer.py runs the server that way)."""

from mixers.server.cli import DEFAULTS, main, serve

__all__ = ["DEFAULTS", "main", "serve"]

if __name__ == "__main__":  # pragma: no cover
    main()
