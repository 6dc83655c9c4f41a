"""The loopback registries and the fault proxy behave like the real thing, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.fixtures.registry import (
    FaultProxy,
    Registry,
    RegistryClient,
    RegistryError,
    parse_challenge,
    parse_scope,
)

ROOT = Path(__file__).resolve().parents[2]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = b"{}"


def repo() -> str:
    """A fresh repository name, since registries are shared by the session."""
    return f"test/{uuid.uuid4().hex[:10]}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_and_read_back(client: RegistryClient) -> None:
    """Blob upload (POST + PUT) and an OCI manifest by exact bytes, then read both back."""
    name = repo()
    blob = os.urandom(4096)
    resp = client.request("POST", f"/v2/{name}/blobs/uploads/", b"")
    assert resp.status == 202, resp.body
    location = resp.header("Location")
    assert location and "_state=" in location
    resp = client.request("PUT", f"{location}&digest={sha256(blob)}", blob,
                          {"Content-Type": "application/octet-stream"})
    assert resp.status == 201, resp.body
    assert resp.header("Docker-Content-Digest") == sha256(blob)
    assert client.push_blob(name, EMPTY) == sha256(EMPTY)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": sha256(EMPTY), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha256(blob),
                    "size": len(blob)}],
    }, indent=1).encode()
    assert client.push_manifest(name, "v1", manifest) == sha256(manifest)
    got = client.get_manifest(name, "v1")
    assert got.status == 200
    assert got.body == manifest  # the registry keeps the exact bytes
    assert got.header("Content-Type") == OCI_MANIFEST
    assert got.header("Docker-Content-Digest") == sha256(manifest)
    assert client.get_blob(name, sha256(blob)).body == blob
    assert client.blob_exists(name, sha256(blob))
    assert not client.blob_exists(name, sha256(b"missing"))


# -- registries --------------------------------------------------------------------------


def test_plain_registry_push_and_pull(registry: Registry) -> None:
    assert registry.host.startswith("127.0.0.1:")
    assert registry.url == f"http://{registry.host}"
    assert registry.ca_cert is None and registry.username is None
    assert registry.client().ping().status == 200
    push_and_read_back(registry.client())
    assert registry.startup_seconds is not None and registry.startup_seconds < 5
    assert registry.log_path.is_file()
    assert any(size == 4096 for size in registry.stored_blobs().values())


def test_tls_registry_needs_credentials(tls_registry: Registry) -> None:
    client = tls_registry.client()
    anonymous = RegistryClient(tls_registry.url, context=tls_registry.ssl_context())
    resp = anonymous.request("GET", "/v2/")
    assert resp.status == 401
    assert (resp.header("WWW-Authenticate") or "").startswith("Basic realm=")
    wrong = RegistryClient(tls_registry.url, username=tls_registry.username,
                           password="wrong", context=tls_registry.ssl_context())
    assert wrong.request("GET", "/v2/").status == 401
    assert client.ping().status == 200
    push_and_read_back(client)
    auths = json.loads(tls_registry.auth_file.read_text())["auths"]
    user, _, password = base64.b64decode(auths[tls_registry.host]["auth"]).decode().partition(":")
    assert (user, password) == (tls_registry.username, tls_registry.password)


def test_tls_is_verified_against_the_generated_ca(tls_registry: Registry) -> None:
    assert tls_registry.ca_cert is not None
    port = int(tls_registry.host.rpartition(":")[2])
    trusting = ssl.create_default_context(cafile=str(tls_registry.ca_cert))
    for name in ("127.0.0.1", "localhost"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
                trusting.wrap_socket(sock, server_hostname=name) as tls:
            assert tls.version() is not None
    with pytest.raises(ssl.SSLCertVerificationError), \
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        ssl.create_default_context().wrap_socket(sock, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError), \
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        trusting.wrap_socket(sock, server_hostname="registry.example")


def test_cert_dir_is_laid_out_like_certs_d(tls_registry: Registry) -> None:
    cert_dir = tls_registry.cert_dir
    assert cert_dir.name == tls_registry.host and cert_dir.parent.name == "certs.d"
    assert sorted(p.name for p in cert_dir.iterdir()) == ["ca.crt", "client.cert", "client.key"]
    assert tls_registry.ca_cert is not None
    assert (cert_dir / "ca.crt").read_bytes() == tls_registry.ca_cert.read_bytes()
    ca = x509.load_pem_x509_certificate((cert_dir / "ca.crt").read_bytes())
    client = x509.load_pem_x509_certificate((cert_dir / "client.cert").read_bytes())
    client.verify_directly_issued_by(ca)
    alias = tls_registry.write_cert_dir("127.0.0.1:1", cert_dir.parent.parent / "alias")
    assert (alias / "client.key").stat().st_mode & 0o077 == 0


def test_mutual_tls_registry_requires_the_client_cert(tmp_path: Path) -> None:
    with Registry("tls", root=tmp_path, client_auth=True) as reg:
        assert reg.ca_cert is not None
        no_cert = ssl.create_default_context(cafile=str(reg.ca_cert))
        bare = RegistryClient(reg.url, username=reg.username, password=reg.password,
                              context=no_cert)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            bare.ping()
        assert reg.client().ping().status == 200


def test_token_registry_challenges_and_accepts_tokens(token_registry: Registry) -> None:
    name = repo()
    ctx = token_registry.ssl_context()
    anonymous = RegistryClient(token_registry.url, context=ctx)
    resp = anonymous.raw("POST", f"/v2/{name}/blobs/uploads/", b"")
    assert resp.status == 401
    scheme, params = parse_challenge(resp.header("WWW-Authenticate") or "")
    assert scheme == "bearer"
    assert params["realm"] == token_registry.token_realm
    assert params["service"] == "nestbuild-test-registry"
    kind, scoped, actions = parse_scope(params["scope"])  # action order varies (Go map)
    assert (kind, scoped, sorted(actions)) == ("repository", name, ["pull", "push"])
    assert (token_registry.token_realm or "").startswith("https://127.0.0.1:")

    # an anonymous token carries no access: the registry still refuses
    token = anonymous.token({"realm": token_registry.token_realm or "",
                             "service": "nestbuild-test-registry"},
                            scope=f"repository:{name}:pull,push")
    resp = anonymous.raw("POST", f"/v2/{name}/blobs/uploads/", b"",
                         {"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    assert 'error="insufficient_scope"' in (resp.header("WWW-Authenticate") or "")

    wrong = RegistryClient(token_registry.url, username=token_registry.username,
                           password="wrong", context=ctx)
    with pytest.raises(RegistryError, match="401"):
        wrong.request("GET", "/v2/")

    client = token_registry.client()
    token = client.token({"realm": token_registry.token_realm or "",
                          "service": "nestbuild-test-registry"},
                         scope=f"repository:{name}:pull,push")
    resp = client.raw("POST", f"/v2/{name}/blobs/uploads/", b"",
                      {"Authorization": f"Bearer {token}"})
    assert resp.status == 202
    push_and_read_back(client)
    assert token_registry.token_service is not None
    grants = token_registry.token_service.grants
    assert any(g.account == token_registry.username and g.granted for g in grants)


# -- fault proxy -------------------------------------------------------------------------


@pytest.fixture
def via_proxy(fault_proxy: FaultProxy) -> Iterator[RegistryClient]:
    yield RegistryClient(fault_proxy.url)


def test_proxy_counts_only_the_changed_layer(fault_proxy: FaultProxy,
                                            via_proxy: RegistryClient) -> None:
    name = repo()
    base, app1, app2 = os.urandom(50_000), os.urandom(7_000), os.urandom(9_000)
    via_proxy.push_image(name, "v1", [base, app1])
    first = fault_proxy.blob_upload_bytes(name)
    assert first >= len(base) + len(app1)
    fault_proxy.reset_counters()
    via_proxy.push_image(name, "v2", [base, app2])
    config_and_layer = fault_proxy.blob_upload_bytes(name)
    assert len(app2) <= config_and_layer < len(app2) + 1000  # + the small config blob
    assert fault_proxy.bytes_upstream > config_and_layer
    assert all(r.status is not None for r in fault_proxy.requests)
    assert via_proxy.get_manifest(name, "v2").status == 200


def test_proxy_reset_breaks_an_upload_mid_body(registry: Registry, fault_proxy: FaultProxy,
                                              via_proxy: RegistryClient) -> None:
    name = repo()
    blob = os.urandom(256 * 1024)
    fault_proxy.reset_after(10_000, method="PUT|PATCH")
    with pytest.raises((OSError, http.client.HTTPException)):
        via_proxy.push_blob(name, blob)
    cut = [r for r in fault_proxy.requests if r.fault == "reset"]
    assert len(cut) == 1 and cut[0].body_bytes == 10_000 and cut[0].status is None
    assert fault_proxy.blob_upload_bytes(name) == 10_000
    assert not registry.client().blob_exists(name, sha256(blob))
    # the fault is used up: a retry goes through
    assert via_proxy.push_blob(name, blob) == sha256(blob)
    assert registry.client().get_blob(name, sha256(blob)).body == blob


def test_proxy_reset_cuts_a_chunked_patch(fault_proxy: FaultProxy,
                                          via_proxy: RegistryClient) -> None:
    """Go clients (containers/image) stream PATCH bodies with chunked encoding."""
    name = repo()
    resp = via_proxy.request("POST", f"/v2/{name}/blobs/uploads/", b"")
    location = resp.header("Location") or ""
    fault_proxy.reset_after(5000, method="PATCH")
    conn = http.client.HTTPConnection(fault_proxy.host, timeout=10)
    pieces = [os.urandom(3000) for _ in range(4)]
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("PATCH", location.split(fault_proxy.host, 1)[1], body=iter(pieces),
                     headers={"Content-Type": "application/octet-stream"})
        conn.getresponse()
    conn.close()
    cut = fault_proxy.requests[-1]
    assert (cut.method, cut.fault, cut.body_bytes) == ("PATCH", "reset", 5000)
    # without a fault the same chunked framing passes through intact
    conn = http.client.HTTPConnection(fault_proxy.host, timeout=10)
    resp2 = via_proxy.request("POST", f"/v2/{name}/blobs/uploads/", b"")
    path = (resp2.header("Location") or "").split(fault_proxy.host, 1)[1]
    conn.request("PATCH", path, body=iter(pieces),
                 headers={"Content-Type": "application/octet-stream"})
    answer = conn.getresponse()
    answer.read()
    conn.close()
    assert answer.status == 202 and answer.getheader("Range") == "0-11999"
    assert fault_proxy.requests[-1].body_bytes == 12_000


def test_proxy_injects_error_statuses(fault_proxy: FaultProxy,
                                      via_proxy: RegistryClient) -> None:
    name = repo()
    fault_proxy.fail_next(2, 503, method="PUT", path="/manifests/")
    fault_proxy.fail_next(1, 429, method="HEAD", retry_after=3)
    resp = via_proxy.request("HEAD", f"/v2/{name}/blobs/{sha256(b'x')}")
    assert resp.status == 429 and resp.header("Retry-After") == "3"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                      "digest": sha256(EMPTY), "size": 2},
                           "layers": []}).encode()
    via_proxy.push_blob(name, EMPTY)
    for _ in range(2):
        resp = via_proxy.request("PUT", f"/v2/{name}/manifests/v1", manifest,
                                 {"Content-Type": OCI_MANIFEST})
        assert resp.status == 503
        assert json.loads(resp.body)["errors"][0]["code"] == "UNAVAILABLE"
    assert via_proxy.push_manifest(name, "v1", manifest) == sha256(manifest)
    statuses = [(r.method, r.status, r.fault) for r in fault_proxy.requests]
    assert statuses.count(("PUT", 503, "status")) == 2
    assert ("PUT", 201, None) in statuses
    # an injected failure on a request with a body answers cleanly (body drained first)
    fault_proxy.fail_next(1, 500, method="PATCH")
    with pytest.raises(RegistryError, match="upload chunk: 500"):
        via_proxy.push_blob(name, os.urandom(100_000), chunk_size=60_000)


def test_proxy_latency_and_passthrough(fault_proxy: FaultProxy,
                                       via_proxy: RegistryClient) -> None:
    fault_proxy.set_latency(0.3)
    began = time.monotonic()
    assert via_proxy.ping().status == 200
    assert time.monotonic() - began >= 0.3
    fault_proxy.fail_next(5, 500)
    fault_proxy.passthrough()
    began = time.monotonic()
    assert via_proxy.ping().status == 200
    assert time.monotonic() - began < 0.3


def test_raw_proxy_in_front_of_tls(tls_registry: Registry) -> None:
    """TLS passes through untouched (the CA still verifies); bytes and resets still work."""
    with FaultProxy(tls_registry) as proxy:
        assert not proxy.http_mode and proxy.url.startswith("https://127.0.0.1:")
        client = RegistryClient(proxy.url, username=tls_registry.username,
                                password=tls_registry.password,
                                context=tls_registry.ssl_context())
        name = repo()
        blob = os.urandom(100_000)
        client.push_blob(name, blob)
        assert proxy.bytes_upstream > len(blob)
        with pytest.raises(RegistryError):
            proxy.fail_next(1)
        proxy.reset_after(20_000)
        with pytest.raises((OSError, http.client.HTTPException)):
            client.push_blob(name, os.urandom(100_000))
        assert client.blob_exists(name, sha256(blob))


def test_serve_cli_prints_json_and_stops_on_sigterm() -> None:
    script = ROOT / "registry-fixtures" / "registryfixtures.py"
    with subprocess.Popen([sys.executable, str(script), "serve", "--mode", "tls", "--proxy"],
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            assert info["host"].startswith("127.0.0.1:") and Path(info["ca_cert"]).is_file()
            ctx = ssl.create_default_context(cafile=info["ca_cert"])
            for url in (info["url"], info["proxy"]["url"]):
                client = RegistryClient(url, username=info["username"],
                                        password=info["password"], context=ctx)
                assert client.ping().status == 200
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0
    assert not Path(info["storage_dir"]).exists()


def test_proxy_handles_expect_continue_and_tls_probes(fault_proxy: FaultProxy) -> None:
    """curl sends ``Expect: 100-continue``; Go clients probe HTTPS first on insecure hosts."""
    name = repo()
    resp = RegistryClient(fault_proxy.url).request("POST", f"/v2/{name}/blobs/uploads/", b"")
    location = (resp.header("Location") or "").split(fault_proxy.host, 1)[1]
    blob = os.urandom(2000)
    with socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=5) as sock:
        sock.sendall(
            f"PUT {location}&digest={sha256(blob)} HTTP/1.1\r\nHost: {fault_proxy.host}\r\n"
            f"Content-Length: {len(blob)}\r\nExpect: 100-continue\r\n"
            "Connection: close\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(blob)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 201 Created"), answer
    began = time.monotonic()
    with pytest.raises(ssl.SSLError), \
            socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=5) as sock:
        ssl.create_default_context().wrap_socket(sock, server_hostname="127.0.0.1")
    assert time.monotonic() - began < 2


def test_start_failure_reports_the_log_and_env_is_scrubbed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # containers tools' variable; distribution would read it as the config key auth.file
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    with Registry("plain", root=tmp_path / "ok") as ok, socket.socket() as busy:
        assert ok.client().ping().status == 200
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = Registry("plain", root=tmp_path / "taken", port=busy.getsockname()[1])
        with pytest.raises(RegistryError, match="address already in use"):
            taken.start()
        assert not taken.running
