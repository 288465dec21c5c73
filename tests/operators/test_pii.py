"""pii: e-mails, public IPs, phones and Luhn-valid card numbers replaced (regex and presidio backends); private IPs
and look-alikes kept."""

import sys

import pytest

from operators.pii import PII, luhn_ok
from pipelines.recipe import RecipeError, parse_recipe
from pipelines.runner import run
from tests.conftest import make_batch, prose, write_jsonl


def scrub(text, **kw):
    return PII(stage="pii", **kw).scrub(text)


def test_each_kind_is_replaced_and_counted():
    op = PII(stage="pii")
    text = (
        "Write to jane.doe+news@mail.example.org or call +1 415-555-2671. "
        "Server 8.8.8.8 answered, 10.0.0.7 did not; v6 2606:4700:4700::1111 too. "
        "Card 4111 1111 1111 1111, order 1234 5678 9012 3456."
    )
    out = op.scrub(text)
    assert "jane.doe" not in out and "email@example.com" in out
    assert "8.8.8.8" not in out and "10.0.0.7" in out  # private addresses are not personal
    assert "2606:4700" not in out and "2001:db8::1" in out
    assert "4111 1111 1111 1111" not in out and "0000 0000 0000 0000" in out
    assert "1234 5678 9012 3456" in out  # fails the Luhn check: not a card number
    assert "415-555-2671" not in out
    assert op.drain_metrics() == {"email": 1, "phone": 1, "ip": 2, "card": 1}
    assert scrub("8.8.8.8", public_ips_only=False) == scrub("8.8.8.8") != "8.8.8.8"
    assert scrub("10.0.0.7", public_ips_only=False) != "10.0.0.7"


def test_replacements_are_deterministic_and_kinds_selectable():
    assert scrub("at 1.2.3.4 and 1.2.3.4") == scrub("at 1.2.3.4 and 1.2.3.4")
    assert scrub("me@example.net 8.8.8.8", kinds=["ip"]).startswith("me@example.net")
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    text = prose(1) + " version 3.12.1 on 2024-05-01"
    assert scrub(text) == text  # versions and dates are not PII


def test_the_manifest_counts_per_kind(tmp_path, ray_session):
    docs = [{"id": f"d{i}", "text": prose(i) + f" Contact me at user{i}@example.com."} for i in range(6)]
    write_jsonl(tmp_path / "in" / "web.jsonl", docs)
    text = (
        f"inputs:\n  - {{path: {tmp_path}/in/web.jsonl, domain: web, id_field: id}}\n"
        f"stages:\n  - {{op: pii}}\noutput: {{dir: {tmp_path}/out}}\n"
    )
    m = run(parse_recipe(text), recipe_text=text)
    st = next(s for s in m["stages"] if s["op"] == "pii")
    assert st["report"]["pii"] == {"email": 6} and st["removed"] == {}


def test_unknown_kinds_fail_at_construction():
    with pytest.raises(ValueError, match="kinds"):
        PII(stage="pii", kinds=["ssn"])
    batch = make_batch(["no personal data here"])
    assert PII(stage="pii")(batch).column("text").to_pylist() == ["no personal data here"]


# ---------------------------------------------------------------- backend: presidio
REAL = (
    "Hi team, the staging box moved to 8.8.8.8 (the old 192.168.1.20 stays on the LAN). "
    "Questions to ops.lead@acme-corp.com or (212) 555-0199. "
    "Refund to Visa 4111-1111-1111-1111; wire to DE89 3704 0044 0532 0130 00."
)


@pytest.fixture(scope="module")
def blank_model(tmp_path_factory):
    """A blank English spaCy pipeline on disk: tokenizer only, no NER (presidio's pattern recognizers need no more)."""
    spacy = pytest.importorskip("spacy")
    pytest.importorskip("presidio_analyzer")
    path = tmp_path_factory.mktemp("spacy") / "blank_en"
    spacy.blank("en").to_disk(path)
    return str(path)


@pytest.fixture(scope="module")
def presidio_pii(blank_model):
    return PII(stage="pii", backend="presidio", spacy_model=blank_model, kinds=["email", "ip", "phone", "card", "iban"])


def test_presidio_replaces_each_kind_with_the_regex_backends_values(presidio_pii):
    out = presidio_pii.scrub(REAL)
    assert "ops.lead" not in out and "email@example.com" in out
    assert "8.8.8.8" not in out and "192.168.1.20" in out  # private addresses are kept, as with regex
    assert "555-0199" not in out and "555-0100" in out
    assert "4111-1111-1111-1111" not in out and "0000 0000 0000 0000" in out
    assert "DE89" not in out and "DE00 0000 0000 0000 0000 00" in out
    assert presidio_pii.drain_metrics() == {"email": 1, "ip": 1, "phone": 1, "card": 1, "iban": 1}
    four = ["email", "ip", "phone", "card"]  # the kinds both backends find: the same text comes out
    assert PII(stage="pii", kinds=four).scrub(REAL) == presidio_pii.scrub(REAL).replace(
        "DE00 0000 0000 0000 0000 00", "DE89 3704 0044 0532 0130 00"
    )


def test_presidio_leaves_text_without_pii_unchanged(presidio_pii):
    clean = [prose(1) + " version 3.12.1 on 2024-05-01, ½ ünïcode — “quoted”\r\n\ttabs  and  spaces ", "", "x"]
    batch = make_batch(clean)
    presidio_pii.drain_metrics()  # counters left by other tests
    assert presidio_pii(batch) is batch  # no text replaced: the same batch, byte for byte
    assert [presidio_pii.scrub(t) for t in clean] == clean and presidio_pii.drain_metrics() == {}


def test_presidio_scrubs_long_documents_piece_by_piece(presidio_pii, monkeypatch):
    from operators import pii_presidio

    monkeypatch.setattr(pii_presidio, "PIECE_CHARS", 80)
    text = "\n".join(f"line {i}: write to user{i}@example.com or visit 8.8.4.{i}" for i in range(12))
    assert all(len(p) <= 80 for _, p in pii_presidio.pieces(text, 80))
    assert "".join(p for _, p in pii_presidio.pieces(text, 80)) == text
    out = presidio_pii.scrub(text)
    assert "@example.com" in out and "user" not in out and "8.8.4." not in out
    assert presidio_pii.drain_metrics() == {"email": 12, "ip": 12}


def test_presidio_needs_its_model_and_ner_for_names(blank_model, tmp_path):
    with pytest.raises(ValueError, match=r"not downloaded.*spacy download"):
        PII(stage="pii", backend="presidio", spacy_model=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"\['location', 'person'\] need a spaCy model with named-entity"):
        PII(stage="pii", backend="presidio", spacy_model=blank_model, kinds=["email", "person", "location"])


def test_presidio_missing_is_a_recipe_error_naming_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # as if not installed
    with pytest.raises(ValueError, match="pip install presidio-analyzer"):
        PII(stage="pii", backend="presidio")
    write_jsonl(tmp_path / "in" / "web.jsonl", [{"id": "d0", "text": "x"}])
    text = (
        f"inputs:\n  - {{path: {tmp_path}/in/web.jsonl, domain: web, id_field: id}}\n"
        f"stages:\n  - {{op: pii, backend: presidio}}\noutput: {{dir: {tmp_path}/out}}\n"
    )
    with pytest.raises(RecipeError, match=r"line \d+.*pip install presidio-analyzer"):
        parse_recipe(text)


def test_settings_of_the_other_backend_fail_at_construction():
    with pytest.raises(ValueError, match=r"kinds \['iban'\] need `backend: presidio`"):
        PII(stage="pii", kinds=["email", "iban"])
    with pytest.raises(ValueError, match="min_score applies to `backend: presidio`"):
        PII(stage="pii", min_score=0.5)
    with pytest.raises(ValueError, match="backend"):
        PII(stage="pii", backend="spacy")
