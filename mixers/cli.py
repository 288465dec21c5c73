"""Moved to :mod:`mixers.server.cli`; this path stays for ``pipelines.cli`` (``from mixers.cli import serve``)
and ``python -m mixers.cli``."""

from mixers.server.cli import DEFAULTS, main, serve

__all__ = ["DEFAULTS", "main", "serve"]

if __name__ == "__main__":  # pragma: no cover
    main()
