"""Mixing algorithms: weights, validation, registry and state round trips."""

import math

import pytest

from mixers.algorithms import build
from mixers.algorithms.base import REGISTRY, Feedback, normalize_weights
from mixers.algorithms.static import parse_weights

DOMAINS = ["code", "math", "web"]
COUNTS = {"code": 100, "math": 400, "web": 1600}


def test_temperature_is_size_to_the_one_over_t():
    w = build("temperature", DOMAINS, COUNTS, temperature=2.0).weights()
    raw = {d: math.sqrt(n) for d, n in COUNTS.items()}  # 10, 20, 40
    assert w == pytest.approx({d: r / 70 for d, r in raw.items()})
    prop = build("temperature", DOMAINS, COUNTS, temperature=1.0).weights()
    assert prop == pytest.approx({d: n / 2100 for d, n in COUNTS.items()})
    flat = build("temperature", DOMAINS, COUNTS, temperature=1e6).weights()
    assert flat == pytest.approx(dict.fromkeys(DOMAINS, 1 / 3), rel=1e-4)
    assert build("temperature", DOMAINS, {**COUNTS, "math": 0}).weights()["math"] == 0


def test_temperature_rejects_bad_t():
    with pytest.raises(ValueError, match=r"`temperature` must be a number > 0, got -1"):
        build("temperature", DOMAINS, COUNTS, temperature=-1)


def test_stratified_is_uniform_over_domains_with_tokens():
    assert build("stratified", DOMAINS, COUNTS).weights() == pytest.approx(dict.fromkeys(DOMAINS, 1 / 3))
    w = build("stratified", DOMAINS, {**COUNTS, "web": 0}).weights()
    assert w == {"code": 0.5, "math": 0.5, "web": 0.0}


@pytest.mark.parametrize("spec", ["code=1,math=3", '{"code": 1, "math": 3}', {"code": 1, "math": 3}])
def test_static_weights_are_normalised_and_missing_domains_get_zero(spec):
    assert build("static", DOMAINS, COUNTS, weights=spec).weights() == {"code": 0.25, "math": 0.75, "web": 0.0}


@pytest.mark.parametrize(
    ("spec", "msg"),
    [
        ("code=1,poetry=2", r"unknown domain\(s\) \['poetry'\]"),
        ("code=-1", r"weight for 'code' must be a finite number >= 0"),
        ("code=0", r"positive sum"),
        ("code", r"expected DOMAIN=WEIGHT"),
        ("code=x", r"expected DOMAIN=WEIGHT"),
        ("{bad", r"not valid JSON"),
    ],
)
def test_static_rejects_bad_weights(spec, msg):
    with pytest.raises(ValueError, match=msg):
        build("static", DOMAINS, COUNTS, weights=spec)


def test_static_needs_weights_and_registry_names_the_problem():
    with pytest.raises(ValueError, match="static: `weights` is required"):
        build("static", DOMAINS, COUNTS)
    with pytest.raises(ValueError, match=r"unknown mixer 'aiolli'; known mixers: .*stratified"):
        build("aiolli", DOMAINS, COUNTS)
    with pytest.raises(ValueError, match=r"stratified: unknown parameter\(s\) \['weights'\]"):
        build("stratified", DOMAINS, COUNTS, weights="code=1")
    assert {"static", "stratified", "temperature"} <= set(REGISTRY)


@pytest.mark.parametrize("name,params", [("static", {"weights": "web=1"}), ("stratified", {}), ("temperature", {})])
def test_state_round_trip(name, params):
    a = build(name, DOMAINS, COUNTS, **params)
    b = build(name, DOMAINS, COUNTS, **params)
    state = a.state_dict()
    b.load_state_dict(state)
    assert b.state_dict() == state and b.weights() == a.weights()
    assert a.needs(0) == frozenset() and a.update(Feedback(step=0)) is None
    with pytest.raises(ValueError, match="newer than this code"):
        b.load_state_dict({"version": 99})


def test_feedback_train_loss_and_weight_normalisation():
    fb = Feedback(step=3, loss_sum={"web": 6.0, "code": 1.0}, tokens={"web": 3, "code": 0})
    assert fb.train_loss() == {"web": 2.0}
    assert normalize_weights({"web": 3, "code": 1}, DOMAINS, "t") == {"code": 0.25, "math": 0.0, "web": 0.75}
    with pytest.raises(ValueError, match=r"t: weight for 'web' must be a finite number >= 0, got nan"):
        normalize_weights({"web": float("nan")}, DOMAINS, "t")
    assert parse_weights(" web = 2 , code=1 ") == {"web": 2.0, "code": 1.0}
