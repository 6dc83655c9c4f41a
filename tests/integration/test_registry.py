"""The registry client, push and pull against real registries (Debian's docker-registry) on
loopback: plain, TLS with htpasswd, and token auth, with a fault-injecting proxy in between."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import uuid
from pathlib import Path

import pytest

from nestbuild._cli.main import main
from nestbuild._image import open_image
from nestbuild._image.layout import LayoutWriter
from nestbuild._image.model import OCI_INDEX, OCI_MANIFEST
from nestbuild._registry import auth
from nestbuild._registry.access import RegistryAccess
from nestbuild._registry.client import AuthError, DigestMismatch, RegistryClient, RegistryError
from nestbuild.building.baseimage import BuiltBase
from nestbuild.shipping.pull import pull
from nestbuild.shipping.upload import upload
from nestbuild.signing import keyfile, keys
from nestbuild.validation.validate import validate
from tests.fixtures.registry import FaultProxy, Registry
from tests.ocibuilder import Layer, bootable_base, derived, write_platform_index

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.registry]

LAYER = "application/vnd.oci.image.layer.v1.tar"


def repo() -> str:
    return f"test/{uuid.uuid4().hex[:10]}"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layout_image(root: Path, sizes: list[int], tag: str = "v1", *, indent: int = 0) -> str:
    """An OCI layout image with random layers of ``sizes`` bytes; the manifest digest.

    ``indent`` formats the manifest unusually: a client that re-serialises JSON changes it.
    """
    w = LayoutWriter(root)
    blobs = [os.urandom(n) for n in sizes]
    layers = [w.add_bytes(b, LAYER) for b in blobs]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Labels": {"containers.bootc": "1"}},
                         "rootfs": {"type": "layers", "diff_ids": [sha(b) for b in blobs]}})
    cdesc = w.add_bytes(config.encode(), "application/vnd.oci.image.config.v1+json")
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": cdesc.media_type, "digest": cdesc.digest, "size": cdesc.size},
        "layers": [{"mediaType": LAYER, "digest": d.digest, "size": d.size} for d in layers],
    }, indent=indent or None)
    mdesc = w.add_bytes(manifest.encode(), OCI_MANIFEST)
    w.tag(mdesc, tag)
    return mdesc.digest


@pytest.fixture
def client(registry: Registry) -> RegistryClient:
    return RegistryClient(registry.host, backoff=0.01)


# -- push and pull ------------------------------------------------------------------------------


def test_push_then_pull_gives_the_same_digest(registry: Registry, mini_base: BuiltBase,
                                              tmp_path: Path) -> None:
    name = repo()
    result = upload(mini_base.tag, f"{registry.host}/{name}:v1", quiet=True)
    assert result.reference == f"{registry.host}/{name}@{result.digest}"
    assert [b.status for b in result.blobs] == ["uploaded", "uploaded"]
    pulled = pull(f"docker://{registry.host}/{name}:v1", f"oci:{tmp_path / 'out'}:v1",
                  quiet=True)
    assert pulled.digest == result.digest
    # The pulled layout is a complete, verified image that validates like the original.
    assert validate(f"oci:{tmp_path / 'out'}:v1", as_base=True).passed
    # docker:// is a transport for validate.
    assert validate(f"docker://{registry.host}/{name}:v1", as_base=True).passed


def test_unchanged_repush_uploads_nothing_and_other_repos_mount(registry: Registry,
                                                                mini_base: BuiltBase) -> None:
    name = repo()
    first = upload(mini_base.tag, f"{registry.host}/{name}:v1", quiet=True)
    again = upload(mini_base.tag, f"{registry.host}/{name}:v2", quiet=True)
    assert again.digest == first.digest and again.bytes_uploaded == 0
    assert {b.status for b in again.blobs} == {"exists"}
    other = upload(mini_base.tag, f"{registry.host}/{repo()}:v1", quiet=True)
    assert other.blobs[0].status == "mounted" and other.bytes_uploaded < 1024


def test_layout_manifest_bytes_are_pushed_exactly(client: RegistryClient, registry: Registry,
                                                  tmp_path: Path) -> None:
    digest = layout_image(tmp_path / "l", [1000, 2000], indent=7)
    name = repo()
    result = upload(f"oci:{tmp_path / 'l'}:v1", f"{registry.host}/{name}:v1", quiet=True)
    assert result.digest == digest
    got = client.get_manifest(name, "v1")
    assert got is not None and sha(got[0]) == digest and got[1] == OCI_MANIFEST


def test_an_oci_index_is_pushed_with_every_platform(client: RegistryClient, registry: Registry,
                                                   tmp_path: Path) -> None:
    root = tmp_path / "idx"
    index, children = write_platform_index(root)
    name = repo()
    result = upload(f"oci:{root}:multi", f"{registry.host}/{name}:multi", quiet=True)
    assert result.digest == index and result.media_type == OCI_INDEX
    for digest in children:
        assert client.get_manifest(name, digest) is not None


def test_pull_refuses_a_corrupt_blob(registry: Registry, client: RegistryClient,
                                     tmp_path: Path) -> None:
    layout_image(tmp_path / "l", [5000])
    name = repo()
    result = upload(f"oci:{tmp_path / 'l'}:v1", f"{registry.host}/{name}:v1", quiet=True)
    manifest = json.loads(client.get_manifest(name, result.digest)[0])  # type: ignore[index]
    layer = manifest["layers"][0]["digest"].split(":")[1]
    data = registry.storage_dir / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data"
    corrupt = bytearray(data.read_bytes())
    corrupt[100] ^= 0xFF
    data.write_bytes(bytes(corrupt))
    out = tmp_path / "out"
    with pytest.raises(DigestMismatch, match="corrupt"):
        pull(f"docker://{registry.host}/{name}:v1", f"oci:{out}:v1", quiet=True)
    assert not (out / "blobs" / "sha256" / layer).exists()
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"] == []  # nothing tagged


# -- faults -------------------------------------------------------------------------------------


def test_an_interrupted_push_resumes_and_a_rerun_uploads_only_what_is_missing(
        fault_proxy: FaultProxy, registry: Registry, tmp_path: Path) -> None:
    sizes = [300_000, 900_000]
    layout_image(tmp_path / "l", sizes)
    name = repo()
    dest = f"{fault_proxy.host}/{name}:v1"

    # One reset mid-chunk: the upload resumes where the registry stands, and completes.
    fault_proxy.reset_after(50_000, count=1, method="PATCH")
    with RegistryClient(fault_proxy.host, backoff=0.01, chunk_size=128 << 10) as c:
        result = upload(f"oci:{tmp_path / 'l'}:v1", dest, client=c, quiet=True, jobs=1)
    assert RegistryClient(registry.host).has_blob(name, result.blobs[-1].digest)
    assert fault_proxy.blob_upload_bytes(name) < sum(sizes) + 200_000

    # Resets beyond the retry budget fail the push: no tag is written... (new blobs: the
    # first ones would now be mounted from the first repository)
    layout_image(tmp_path / "l", sizes)
    name2 = repo()
    dest2 = f"{fault_proxy.host}/{name2}:v1"
    fault_proxy.reset_counters()
    fault_proxy.reset_after(10_000, count=50, method="PATCH", path=name2)
    with RegistryClient(fault_proxy.host, backoff=0.01, retries=2,
                        chunk_size=128 << 10) as c, pytest.raises(RegistryError):
        upload(f"oci:{tmp_path / 'l'}:v1", dest2, client=c, quiet=True, jobs=1)
    assert RegistryClient(registry.host).get_manifest(name2, "v1") is None
    # ...and the rerun sends only the blobs the registry does not have yet.
    fault_proxy.passthrough()
    have = sum(s for s, d in zip(sizes, _layer_digests(tmp_path / "l", "v1"), strict=True)
               if RegistryClient(registry.host).has_blob(name2, d))
    fault_proxy.reset_counters()
    with RegistryClient(fault_proxy.host, backoff=0.01) as c:
        result = upload(f"oci:{tmp_path / 'l'}:v1", dest2, client=c, quiet=True)
    assert fault_proxy.blob_upload_bytes(name2) <= sum(sizes) - have + 10_000
    assert RegistryClient(registry.host).get_manifest(name2, "v1") is not None


def _layer_digests(root: Path, tag: str) -> list[str]:
    index = json.loads((root / "index.json").read_text())
    entry = next(m for m in index["manifests"]
                 if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    digest = entry["digest"].split(":")[1]
    manifest = json.loads((root / "blobs" / "sha256" / digest).read_bytes())
    return [d["digest"] for d in manifest["layers"]]


def test_server_errors_and_throttling_are_retried(fault_proxy: FaultProxy,
                                                  tmp_path: Path) -> None:
    layout_image(tmp_path / "l", [1000])
    fault_proxy.fail_next(2, 503, method="PUT", path="/manifests/")
    fault_proxy.fail_next(1, 429, method="HEAD", retry_after=0)
    with RegistryClient(fault_proxy.host, backoff=0.01) as c:
        result = upload(f"oci:{tmp_path / 'l'}:v1", f"{fault_proxy.host}/{repo()}:v1", client=c,
                        quiet=True)
    assert result.digest.startswith("sha256:")
    statuses = [r.status for r in fault_proxy.requests]
    assert statuses.count(503) == 2 and 429 in statuses


# -- auth and TLS -------------------------------------------------------------------------------


def _authfile(path: Path, reg: Registry, password: str | None = None) -> Path:
    doc = reg.auth_json()
    if password is not None:
        token = base64.b64encode(f"{reg.username}:{password}".encode()).decode()
        doc = {"auths": {reg.host: {"auth": token}}}
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("mode", ["tls", "token"])
def test_push_with_credentials(mode: str, request: pytest.FixtureRequest,
                               tmp_path: Path) -> None:
    reg: Registry = request.getfixturevalue(f"{mode}_registry")
    layout_image(tmp_path / "l", [2000])
    access = RegistryAccess(authfile=_authfile(tmp_path / "auth.json", reg),
                            cert_dir=reg.cert_dir)
    name = repo()
    result = upload(f"oci:{tmp_path / 'l'}:v1", f"{reg.host}/{name}:v1", access=access,
                    quiet=True)
    with access.client(reg.host) as c:
        assert c.get_manifest(name, "v1") is not None
        # A second repository mounts the layer (a token covering both repositories).
        other = upload(f"oci:{tmp_path / 'l'}:v1", f"{reg.host}/{repo()}:v1", client=c,
                       quiet=True)
    assert other.digest == result.digest
    assert "mounted" in [b.status for b in other.blobs]


@pytest.mark.parametrize("mode", ["tls", "token"])
def test_auth_failures_name_registry_and_file_but_never_the_password(
        mode: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    reg: Registry = request.getfixturevalue(f"{mode}_registry")
    layout_image(tmp_path / "l", [100])
    wrong = "not-the-password-" + uuid.uuid4().hex
    authfile = _authfile(tmp_path / "auth.json", reg, password=wrong)
    access = RegistryAccess(authfile=authfile, cert_dir=reg.cert_dir)
    with pytest.raises(AuthError) as err:
        upload(f"oci:{tmp_path / 'l'}:v1", f"{reg.host}/{repo()}:v1", access=access, quiet=True)
    message = err.value.message
    assert reg.host in message and str(authfile) in message and wrong not in message
    # No credentials at all: the message lists where it looked.
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(AuthError) as err:
        upload(f"oci:{tmp_path / 'l'}:v1", f"{reg.host}/{repo()}:v1", quiet=True,
               access=RegistryAccess(authfile=empty, cert_dir=reg.cert_dir))
    assert str(empty) in err.value.message and reg.host in err.value.message


def test_untrusted_tls_is_refused_with_the_fix(tls_registry: Registry) -> None:
    with pytest.raises(RegistryError, match="--cert-dir"):
        RegistryClient(tls_registry.host).has_blob("x/y", sha(b""))


def test_login_checks_then_writes_a_private_auth_file(
        tls_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import io

    authfile = tmp_path / "auth" / "auth.json"
    args = ["login", tls_registry.host, "-u", str(tls_registry.username), "--password-stdin",
            "--authfile", str(authfile), "--cert-dir", str(tls_registry.cert_dir)]
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong\n"))
    assert main(args) == 2
    assert not authfile.exists()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{tls_registry.password}\n"))
    assert main(args) == 0
    assert stat.S_IMODE(authfile.stat().st_mode) == 0o600
    found = auth.lookup(tls_registry.host, authfile=authfile).credentials
    assert found is not None and found.password == tls_registry.password
    out = capsys.readouterr()
    assert str(tls_registry.password) not in out.out + out.err
    assert main(["logout", tls_registry.host, "--authfile", str(authfile)]) == 0
    assert auth.lookup(tls_registry.host, authfile=authfile).credentials is None


def test_credential_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def entry(user: str) -> dict[str, str]:
        return {"auth": base64.b64encode(f"{user}:pw".encode()).decode()}

    runtime, home = tmp_path / "run", tmp_path / "home"
    (runtime / "containers").mkdir(parents=True)
    (home / ".docker").mkdir(parents=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("HOME", str(home))
    for var in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    (home / ".docker" / "config.json").write_text(json.dumps(
        {"auths": {"reg.example": entry("docker"), "other.example": entry("docker-other")}}))
    (runtime / "containers" / "auth.json").write_text(json.dumps(
        {"auths": {"reg.example": entry("containers"), "reg.example/team": entry("team")}}))
    assert auth.lookup("reg.example").credentials.username == "containers"  # type: ignore[union-attr]
    assert auth.lookup("reg.example", "team/app").credentials.username == "team"  # type: ignore[union-attr]
    assert auth.lookup("other.example").credentials.username == "docker-other"  # type: ignore[union-attr]
    # A credential helper named in credHelpers wins over auths.
    helper = tmp_path / "bin" / "docker-credential-test"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread host\necho "{\\"Username\\":\\"helper\\",'
                      '\\"Secret\\":\\"s3cret\\"}"\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    (home / ".docker" / "config.json").write_text(json.dumps(
        {"credHelpers": {"other.example": "test"}}))
    found = auth.lookup("other.example").credentials
    assert found is not None and found.username == "helper" and "s3cret" not in repr(found)
    # An explicit --authfile is the only file consulted.
    only = tmp_path / "only.json"
    only.write_text("{}")
    lookup = auth.lookup("reg.example", authfile=only)
    assert lookup.credentials is None and lookup.consulted == (str(only),)


# -- referrers ----------------------------------------------------------------------------------


def test_referrers_fall_back_to_the_tag_schema(client: RegistryClient, registry: Registry,
                                               tmp_path: Path) -> None:
    name = repo()
    digest = layout_image(tmp_path / "l", [100])
    upload(f"oci:{tmp_path / 'l'}:v1", f"{registry.host}/{name}:v1", quiet=True)
    subject = client.get_manifest(name, digest)
    assert subject is not None
    client.put_blob(name, b"{}", sha(b"{}"), 2)
    report = b'{"passed": true}'
    client.put_blob(name, report, sha(report), len(report))
    artifact = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.nestbuild.report.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(b"{}"),
                   "size": 2},
        "layers": [{"mediaType": "application/json", "digest": sha(report),
                    "size": len(report)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(subject[0])},
    }).encode()
    adigest = client.put_manifest(name, sha(artifact), artifact, OCI_MANIFEST)
    desc = {"mediaType": OCI_MANIFEST, "digest": adigest, "size": len(artifact),
            "artifactType": "application/vnd.nestbuild.report.v1+json"}
    client.add_referrer(name, digest, desc)
    client.add_referrer(name, digest, desc)  # idempotent
    assert client.referrers(name, digest) == [desc]
    assert client.get_manifest(name, "sha256-" + digest.split(":")[1]) is not None


# -- the push pipeline: nestbuild.push ---------------------------------------------------------


def test_push_is_a_library_call_that_signs_and_attests_every_tag(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nestbuild

    _, good = derived(tmp_path / "l", [bootable_base()], [Layer().file("/etc/motd", b"hi\n")],
                      tag="good")
    monkeypatch.setenv("NESTBUILD_PASSWORD", "pw")
    key, pub = keys.write_key_pair(tmp_path / "cosign", b"pw")
    name = f"{registry.host}/{repo()}"
    result = nestbuild.push(nestbuild.PushOptions(
        image=good, destination=f"{name}:v1", tags=["stable"], sign_key=key, quiet=True))
    assert result.report is not None and result.report.passed
    assert result.tags == ["v1", "stable"] and str(result.image) == result.reference
    assert [s.docker_reference for s in result.signatures] == [f"{name}:v1", f"{name}:stable"]
    assert "https://nestbuild.dev/validation/v1" in [a.predicate_type
                                                     for a in result.attestations]
    for tag in ("v1", "stable"):
        report = nestbuild.verify(f"docker://{name}:{tag}", nestbuild.load_public_keys([pub]))
        assert report.passed, report.cause()
        assert all(a.verified for m in report.manifests for a in m.attestations)


def test_push_refuses_a_failing_image_or_a_wrong_passphrase_before_any_upload(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nestbuild

    _, bad = derived(tmp_path / "l", [bootable_base()],
                     [Layer().dir("/usr/local").file("/usr/local/x", b"x")], tag="bad")
    name = repo()
    with pytest.raises(nestbuild.PushRefused) as refused:
        nestbuild.push(nestbuild.PushOptions(image=bad, destination=f"{registry.host}/{name}:v1",
                                             quiet=True))
    assert refused.value.exit_code == 1 and not refused.value.report.passed
    key, _ = keys.write_key_pair(tmp_path / "cosign", b"right")
    monkeypatch.setenv("NESTBUILD_PASSWORD", "wrong")
    with pytest.raises(keyfile.WrongPassphraseError):
        nestbuild.push(nestbuild.PushOptions(image=bad, destination=f"{registry.host}/{name}:v1",
                                             sign_key=key, validate=False, quiet=True))
    client = RegistryClient(registry.host)
    image = open_image(bad)
    assert client.get_manifest(name, "v1") is None
    assert not any(client.has_blob(name, d.digest)
                   for d in [image.manifest.config, *image.manifest.layers])
