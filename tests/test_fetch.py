"""The SSRF-safe fetcher against real servers on loopback: one resolution per hop, connections pinned to the
checked address (DNS rebinding), SNI and certificate checks on the URL's host name, address classification.

DNS is stood in for by an injected resolver (``UrlPolicy.resolver``); everything else is real: sockets, HTTP,
TLS with a CA made here.
"""

from __future__ import annotations

import datetime
import ssl
import time

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from url_server import UrlServer

from tenexa.errors import ErrorCode, TenexaError
from tenexa.fetch import IMAGE_CODES, UrlPolicy, fetch_bytes, is_public

PUBLIC = "1.1.1.1"  # a global address; nothing in these tests can (or may) be reached there


def get(url: str, policy: UrlPolicy, timeout: float = 3.0) -> bytes:
    return fetch_bytes(url, "image_url", max_bytes=10**6, timeout=timeout, codes=IMAGE_CODES, policy=policy)


def error(url: str, policy: UrlPolicy, timeout: float = 3.0) -> TenexaError:
    with pytest.raises(TenexaError) as info:
        get(url, policy, timeout)
    return info.value


class Dns:
    """A resolver with a script of answers per host; records every lookup."""

    def __init__(self, answers: dict[str, list[list[str]]]):
        self.answers = answers
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        script = self.answers[host]
        return script.pop(0) if len(script) > 1 else script[0]


def test_rebinding_answer_after_the_check_is_never_used():
    """The check sees a public address, a second lookup would say loopback: the loopback server is never reached."""
    with UrlServer() as srv:
        srv.routes["/secret"] = srv.body(b"internal data")
        url = srv.url("/secret", host="localhost")
        # Control: a client that resolves the name itself (the old requests path) does reach the server.
        assert requests.get(url, timeout=5).content == b"internal data"
        assert srv.hits("/secret") == 1

        dns = Dns({"localhost": [[PUBLIC], ["127.0.0.1"]]})
        started = time.monotonic()
        err = error(url, UrlPolicy(resolver=dns), timeout=2.0)
        assert err.code is ErrorCode.IMAGE_FETCH_FAILED
        assert dns.lookups == ["localhost"]  # one resolution, no second chance to rebind
        assert srv.hits("/secret") == 1  # still only the control request
        assert time.monotonic() - started < 5


def test_the_connection_goes_to_the_resolved_address_with_the_url_host_name():
    with UrlServer() as srv:
        srv.routes["/a.png"] = srv.body(b"png bytes")
        dns = Dns({"images.example.test": [["127.0.0.1"]]})  # .test never resolves for real: only the pin can work
        assert get(srv.url("/a.png", host="images.example.test"), UrlPolicy(allow_private=True, resolver=dns)) == b"png bytes"
        assert dns.lookups == ["images.example.test"]
        assert srv.seen[-1].host == f"images.example.test:{srv.port}"


def test_each_redirect_hop_is_resolved_once_and_pinned():
    """Two servers on one port at 127.0.0.1 and 127.0.0.2: the redirect target's first answer is the one used."""
    with UrlServer("127.0.0.2") as second, UrlServer("127.0.0.1", port=second.port) as first:
        first.routes["/start"] = first.redirect(second.url("/end", host="cdn.example.test"))
        second.routes["/end"] = second.body(b"from the checked address")
        first.routes["/end"] = first.body(b"from the rebound address")
        dns = Dns({"a.example.test": [["127.0.0.1"]], "cdn.example.test": [["127.0.0.2"], ["127.0.0.1"]]})
        body = get(first.url("/start", host="a.example.test"), UrlPolicy(allow_private=True, resolver=dns))
        assert body == b"from the checked address"
        assert dns.lookups == ["a.example.test", "cdn.example.test"]
        assert first.hits("/end") == 0 and second.hits("/end") == 1


def test_every_address_of_a_name_must_be_public():
    dns = Dns({"mixed.example.test": [[PUBLIC, "10.0.0.7"]]})
    err = error("http://mixed.example.test/x", UrlPolicy(resolver=dns))
    assert err.code is ErrorCode.URL_BLOCKED and "ALLOW_PRIVATE_URLS" in err.message


def test_unresolvable_names_fail_with_the_fetch_code():
    err = error("http://nothing.example.test/x", UrlPolicy(resolver=Dns({"nothing.example.test": [[]]})))
    assert err.code is ErrorCode.IMAGE_FETCH_FAILED and "does not resolve" in err.message


@pytest.mark.parametrize(("address", "public"), [
    ("1.1.1.1", True), ("2606:4700:4700::1111", True), ("127.0.0.1", False), ("10.1.2.3", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("::1", False),
    ("fe80::1%eth0", False), ("::ffff:127.0.0.1", False), ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
    ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
    ("not an address", False),
])
def test_address_classification(address, public):
    assert is_public(address) is public


# ------------------------------------------------------------------------------------------------ https


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool, san: list[str] | None = None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A CA and a server certificate for secure.example.test (only that name, no IP address)."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenexa test CA")])
    ca = _cert("Tenexa test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("secure.example.test", key, ca_name, ca_key, ca=False, san=["secure.example.test"])
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder / "ca.pem", folder / "server.pem"


def _server_context(pem) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


def test_https_uses_the_host_name_for_sni_and_the_certificate(tls_files):
    ca, pem = tls_files
    with UrlServer(tls=_server_context(pem)) as srv:
        srv.routes["/w.safetensors"] = srv.body(b"weights")
        dns = Dns({"secure.example.test": [["127.0.0.1"]], "other.example.test": [["127.0.0.1"]]})
        policy = UrlPolicy(allow_private=True, resolver=dns, ca_certs=str(ca))
        assert get(srv.url("/w.safetensors", host="secure.example.test"), policy) == b"weights"
        assert srv.seen[-1].sni == "secure.example.test"
        assert srv.seen[-1].host == f"secure.example.test:{srv.port}"

        # The same server under a name its certificate does not carry: refused, although the address is the same.
        err = error(srv.url("/w.safetensors", host="other.example.test"), policy)
        assert err.code is ErrorCode.IMAGE_FETCH_FAILED and "TLS" in err.message
        # An untrusted CA (the default bundle does not know ours): refused.
        err = error(srv.url("/w.safetensors", host="secure.example.test"), UrlPolicy(allow_private=True, resolver=dns))
        assert err.code is ErrorCode.IMAGE_FETCH_FAILED and "TLS" in err.message
        assert srv.hits("/w.safetensors") == 1
