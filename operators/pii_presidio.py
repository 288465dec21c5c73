"""The ``pii`` op's presidio backend: presidio-analyzer's recognizers over a local spaCy pipeline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

#: the tested release (the Makefile installs it for the tests); presidio-analyzer pulls spaCy
PRESIDIO_DIST = "presidio-analyzer==2.2.366"
#: presidio's default spaCy model (`spacy download` fetches it from GitHub: install it where there is network)
DEFAULT_SPACY_MODEL = "en_core_web_lg"
INSTALL = (
    f"`pip install {PRESIDIO_DIST}` and a spaCy model (`python -m spacy download {DEFAULT_SPACY_MODEL}`, "
    "or `spacy_model: PATH` to a pipeline saved with nlp.to_disk)"
)

#: each ``pii`` kind and the presidio entity it stands for
ENTITIES = {
    "email": "EMAIL_ADDRESS",
    "ip": "IP_ADDRESS",
    "phone": "PHONE_NUMBER",
    "card": "CREDIT_CARD",
    "iban": "IBAN_CODE",
    "ssn": "US_SSN",
    "person": "PERSON",
    "location": "LOCATION",
}
KIND_OF = {entity: kind for kind, entity in ENTITIES.items()}
#: kinds that only a spaCy named-entity recognizer finds (the others are presidio's pattern recognizers), with
#: the model labels presidio's default configuration (conf/default.yaml) maps to them
NER_LABELS = {"person": {"PER", "PERSON"}, "location": {"LOC", "LOCATION", "GPE", "FAC"}}
NER_KINDS = frozenset(NER_LABELS)
#: characters analysed in one call: longer documents are cut at line breaks (spaCy refuses texts over its
#: ``max_length``, 1M characters, and an NER model needs about 1 GB per 100k characters)
PIECE_CHARS = 100_000


def require_presidio() -> None:
    """Raise ValueError saying how to install presidio-analyzer when it is not installed (found without
    importing it: presidio imports torch and transformers where they are installed, seconds of work)."""
    for module in ("presidio_analyzer", "spacy"):
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"pii: backend presidio needs presidio-analyzer ({module} is not installed): {INSTALL}")


def model_meta(spacy_model: str) -> dict[str, Any]:
    """The meta.json of a spaCy pipeline given as a directory or an installed package's name, read without
    loading it; nothing is downloaded (presidio itself would run ``spacy download``, which needs network)."""
    path = Path(spacy_model).expanduser()
    if not path.is_dir():
        spec = importlib.util.find_spec(spacy_model) if spacy_model.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(
                f"pii: spaCy model {spacy_model!r} is neither an installed package nor a directory (runs are "
                f"offline: it is not downloaded); install it (`python -m spacy download {spacy_model}` where "
                "there is network) or give `spacy_model: PATH` to a pipeline saved with nlp.to_disk. The pattern "
                "kinds (email, ip, phone, card, iban, ssn) need no trained model: "
                "`python -c \"import spacy; spacy.blank('en').to_disk('PATH')\"`"
            )
        path = Path(next(iter(spec.submodule_search_locations)))
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"pii: spacy_model {spacy_model!r} is not a saved spaCy pipeline: {e}") from None


def check(kinds: set[str], spacy_model: str) -> dict[str, Any]:
    """Cheap checks (nothing imported or loaded): presidio installed, the model present, and for person and
    location a model whose named-entity labels give them. Returns the model's meta."""
    require_presidio()
    meta = model_meta(spacy_model)
    labels = {label for comp in (meta.get("labels") or {}).values() for label in comp}
    missing = sorted(k for k in NER_KINDS & kinds if not labels & NER_LABELS[k])
    if missing:
        raise ValueError(
            f"pii: kinds {missing} need a spaCy model with named-entity recognition (e.g. {DEFAULT_SPACY_MODEL}); "
            f"{spacy_model!r} has components {meta.get('pipeline', [])} and gives none of them"
        )
    return meta


def pieces(text: str, size: int) -> list[tuple[int, str]]:
    """``text`` as (offset, piece) with pieces of at most ``size`` characters, cut after the last line break
    (else space) before the limit so that no entity on one line is split."""
    out, pos = [], 0
    while len(text) - pos > size:
        cut = text.rfind("\n", pos, pos + size) + 1 or text.rfind(" ", pos, pos + size) + 1
        if cut <= pos:
            cut = pos + size
        out.append((pos, text[pos:cut]))
        pos = cut
    out.append((pos, text[pos:]))
    return out


def _offline_email_recognizer(lang: str) -> Any:
    """presidio's e-mail recognizer checking the domain's suffix against tldextract's bundled Public Suffix List
    (presidio's own calls tldextract's module default, which fetches the list over the network on first use)."""
    from presidio_analyzer.predefined_recognizers import EmailRecognizer
    from tldextract import TLDExtract

    suffixes = TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return suffixes(pattern_text).fqdn != ""

    return OfflineEmailRecognizer(supported_language=lang, name="EmailRecognizer")


class PresidioFinder:
    """presidio's AnalyzerEngine, restricted to the entities of ``kinds``, over one spaCy pipeline.

    Args:
        spacy_model: an installed spaCy package name or a saved pipeline's directory.
        kinds: ``pii`` kinds to find (keys of ``ENTITIES``).
        min_score: drop results scored below this; None keeps presidio's per-recognizer thresholds.
        batch_size: texts per ``nlp.pipe`` batch.
    """

    def __init__(self, spacy_model: str, kinds: set[str], min_score: float | None, batch_size: int = 32) -> None:
        meta = check(kinds, spacy_model)
        try:
            import presidio_analyzer
            import spacy
            import yaml
            from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine
            from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
        except ImportError as e:
            raise ValueError(f"pii: backend presidio cannot import presidio-analyzer ({e}): {INSTALL}") from None

        # presidio's default NER settings (labels mapped to entities, labels ignored), with this model, which is
        # loaded here: SpacyNlpEngine.load() would download a model it cannot find
        conf = yaml.safe_load((Path(presidio_analyzer.__file__).parent / "conf" / "default.yaml").read_text())
        lang, path = meta.get("lang", "en"), Path(spacy_model).expanduser()
        nlp_engine = SpacyNlpEngine(
            models=[{"lang_code": lang, "model_name": spacy_model}],
            ner_model_configuration=NerModelConfiguration.from_dict(conf["ner_model_configuration"]),
        )
        nlp_engine.nlp = {lang: spacy.load(path if path.is_dir() else spacy_model)}
        analyzer = AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=[lang])
        analyzer.registry.remove_recognizer("EmailRecognizer")
        analyzer.registry.add_recognizer(_offline_email_recognizer(lang))
        self.batch = BatchAnalyzerEngine(analyzer_engine=analyzer)
        self.lang, self.min_score, self.batch_size = lang, min_score, batch_size
        self.entities = [ENTITIES[k] for k in sorted(kinds)]

    def find(self, texts: list[str]) -> list[list[tuple[int, int, str, float]]]:
        """Per text, every result as (start, end, kind, score); results may overlap."""
        cut = [pieces(t, PIECE_CHARS) for t in texts]
        flat = [p for ps in cut for _, p in ps]
        results = self.batch.analyze_iterator(
            flat,
            language=self.lang,
            batch_size=self.batch_size,
            entities=self.entities,
            score_threshold=self.min_score,
        )
        out: list[list[tuple[int, int, str, float]]] = []
        it = iter(results)
        for ps in cut:
            found = []
            for offset, _ in ps:
                for r in next(it):
                    if r.entity_type in KIND_OF:
                        found.append((offset + r.start, offset + r.end, KIND_OF[r.entity_type], r.score))
            out.append(found)
        return out
