"""Binding, bearer tokens and TLS."""

import json
import shutil
import subprocess

import pyarrow.flight as flight
import pytest

from mixers.client import MixtureStream
from mixers.engine import MixerConfig
from mixers.server import is_loopback, start_server
from tests.mixers.conftest import read_steps


def test_non_loopback_bind_without_token_is_refused_at_start(run_dir):
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(ValueError, match=r"not loopback.*requires a token"):
            start_server(str(run_dir[0]), MixerConfig(seq_len=32, global_batch=8), host=host, port=0)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


def _refused(location, headers):
    c = flight.connect(location)
    opts = flight.FlightCallOptions(headers=headers)
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(c.do_action(flight.Action("status", b"{}"), opts))
    with pytest.raises(flight.FlightUnauthenticatedError):
        c.do_get(flight.Ticket(json.dumps({"kind": "train"}).encode()), opts).read_all()
    c.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_token_is_required_when_set_and_wrong_tokens_are_refused(serve, host):
    srv = serve(host=host, token="s3cret")
    assert srv.location.startswith("grpc+tcp://127.0.0.1:")
    _refused(srv.location, [])
    _refused(srv.location, [(b"authorization", b"Bearer wrong")])
    _refused(srv.location, [(b"authorization", b"s3cret")])
    steps = read_steps(srv.location, 0, 1, 0, 2, headers=[(b"authorization", b"Bearer s3cret")])
    assert [s for s, _, _ in steps] == [0, 1]
    s = MixtureStream(srv.location, token="s3cret", max_steps=1)
    assert [b["step"] for b in s] == [0]
    assert s.status()["failed"] is None
    s.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls(serve, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    srv = serve(tls_cert=str(cert), tls_key=str(key), token="t")
    assert srv.location.startswith("grpc+tls://")
    s = MixtureStream(srv.location, token="t", tls_root_certs=str(cert), max_steps=2)
    assert [b["step"] for b in s] == [0, 1]
    s.close()
    plain = srv.location.replace("grpc+tls", "grpc+tcp")
    c = flight.connect(plain)
    with pytest.raises(flight.FlightError):
        list(c.do_action(flight.Action("status", b"{}"), flight.FlightCallOptions(timeout=2)))
    c.close()
    with pytest.raises(ValueError, match="needs both --tls-cert and --tls-key"):
        serve(tls_cert=str(cert))
