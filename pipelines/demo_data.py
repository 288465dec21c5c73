"""The embedded demo corpus, assembled offline from text every Python install has.

- ``code/``: standard-library modules (plain text files, one document each);
- ``docs/docs.jsonl.gz``: the long descriptions (READMEs) of installed distributions;
- ``legal/legal.jsonl.zst``: their LICENSE/COPYING/NOTICE files, which repeat heavily;
- ``docs/zz-malformed.jsonl``: a handful of broken records so the quarantine shows.

Run: ``sluice demo-data data/demo`` (``make curate`` does it for you).
"""

from __future__ import annotations

import gzip
import json
import shutil
import sysconfig
from importlib import metadata
from pathlib import Path

import zstandard

LICENSE_PREFIXES = ("license", "licence", "copying", "notice")

MALFORMED: list[bytes] = [
    b'{"id": "bad-json-1", "text": "an unterminated string}',
    b"this line is not JSON at all",
    b'{"id": "bad-utf8-1", "text": "caf\xe9 au lait, but in latin-1"}',
    b'{"id": "no-text-1", "body": "the text lives under the wrong key"}',
    b'{"id": "not-string-1", "text": 12345}',
    b'{"id": "empty-1", "text": "   "}',
    b'["a JSON array", "is not a record"]',
]


def _code_files(max_files: int) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if not any(part in {"site-packages", "test", "tests", "idlelib", "__pycache__"} for part in p.parts)
    )
    step = max(1, len(files) // max_files) if max_files else 1
    return files[::step][:max_files]


def _distributions() -> list[metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}
    for d in metadata.distributions():
        name = (d.metadata.get("Name") or "").lower()
        if name and name not in seen:
            seen[name] = d
    return [seen[k] for k in sorted(seen)]


DEMO_MARKER = ".sluice-demo"


def build(dest: str | Path, max_code: int = 400) -> dict[str, int]:
    """Write the demo corpus under ``dest``; return document counts per part."""
    dest = Path(dest)
    marker = dest / DEMO_MARKER
    ours = marker.exists()
    for sub in ("code", "docs", "legal"):
        if (dest / sub).exists() and not ours:
            raise FileExistsError(
                f"{dest / sub} exists and was not written by `sluice demo-data`; choose another directory"
            )
    dest.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by `sluice demo-data`; it replaces code/, docs/ and legal/ here\n")
    for sub in ("code", "docs", "legal"):
        shutil.rmtree(dest / sub, ignore_errors=True)
        (dest / sub).mkdir(parents=True, exist_ok=True)
    counts = {"code": 0, "docs": 0, "legal": 0, "malformed": len(MALFORMED)}

    root = Path(sysconfig.get_paths()["stdlib"])
    for p in _code_files(max_code):
        (dest / "code" / str(p.relative_to(root)).replace("/", "__")).write_bytes(p.read_bytes())
        counts["code"] += 1

    dists = _distributions()
    with gzip.open(dest / "docs" / "docs.jsonl.gz", "wt", encoding="utf-8") as f:
        for d in dists:
            text = d.metadata.get_payload() or d.metadata.get("Description") or ""
            if isinstance(text, str) and text.strip():
                name = d.metadata["Name"]
                f.write(json.dumps({"id": f"pkg:{name}", "text": text, "version": d.version}) + "\n")
                counts["docs"] += 1
    (dest / "docs" / "zz-malformed.jsonl").write_bytes(b"\n".join(MALFORMED) + b"\n")

    cctx = zstandard.ZstdCompressor()
    with open(dest / "legal" / "legal.jsonl.zst", "wb") as raw, cctx.stream_writer(raw) as f:
        for d in dists:
            for file in d.files or []:
                if file.name.lower().startswith(LICENSE_PREFIXES) and file.suffix.lower() in (
                    "",
                    ".txt",
                    ".md",
                    ".rst",
                ):
                    try:
                        text = file.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError, FileNotFoundError):
                        continue
                    rec = {"id": f"license:{d.metadata['Name']}:{file}", "text": text}
                    f.write((json.dumps(rec) + "\n").encode())
                    counts["legal"] += 1
    return counts
