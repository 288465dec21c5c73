"""pii: e-mails, public IPs, phones and Luhn-valid card numbers replaced; private IPs and look-alikes kept."""

import pytest

from operators.pii import PII, luhn_ok
from pipelines.recipe import parse_recipe
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
