"""nestbuild's signatures and attestations against the real verifiers, in both directions.

cosign 2.5 (Debian 13's package) and containers/image 5.34 (Debian 13's skopeo, in a chroot) are
what nodes and CI use, so they judge, not our reading of them. Nothing here is skipped: getting
cosign, the chroot and a registry is part of the set-up (cached between runs).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nestbuild._cli.main import main
from nestbuild._image.layout import LayoutWriter
from nestbuild._image.model import OCI_MANIFEST, Descriptor
from nestbuild._tools.run import run
from nestbuild.signing import keys, payload
from nestbuild.signing import signatures as signing
from nestbuild.signing.layout_store import LayoutStore
from tests.fixtures.cosign import Cosign
from tests.ocibuilder import write_platform_index

if TYPE_CHECKING:
    from registryfixtures import Registry  # type: ignore[import-not-found]

    from tests.fixtures.chroot import Chroot

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.skopeo]

INTEROP = Path(__file__).parents[1] / "data" / "interop"
VECTORS = INTEROP / "containers-image-signatures"
LAYER = "application/vnd.oci.image.layer.v1.tar"
PTYPE = "https://nestbuild.dev/validation/v1"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_image(root: Path, content: bytes, tag: str | None = "v1") -> Descriptor:
    w = LayoutWriter(root)
    layer = w.add_bytes(content, LAYER)
    return w.add_image([layer], [sha(content)], tag=tag)


def pubs(*paths: Path) -> list[tuple[str, keys.PublicKey]]:
    return signing.load_public_keys(list(paths))


# --- OCI layouts: cosign verify --local-image ------------------------------------------------

def test_cosign_verifies_a_nestbuild_signed_layout(cosign: Cosign, tmp_path: Path) -> None:
    key_path, pub_path = keys.write_key_pair(tmp_path / "nb", b"pw")
    _, other_pub = keys.write_key_pair(tmp_path / "other", b"pw")
    key = keys.load_private_key(key_path.read_bytes(), b"pw", "nb.key")
    root = tmp_path / "layout"
    write_image(root, b"one")
    target = signing.open_target(f"oci:{root}:v1", identity="registry.example.com/signing/web:v1")
    signing.sign(target, key)
    signing.attest(target, key, {"passed": True}, PTYPE)

    _, out = cosign("verify", "--key", pub_path, "--insecure-ignore-tlog", "--local-image", root)
    claims = json.loads(out[out.index("[") :].splitlines()[0])
    identity = claims[0]["critical"]["identity"]["docker-reference"]
    assert identity == "registry.example.com/signing/web:v1"
    code, out = cosign("verify", "--key", other_pub, "--insecure-ignore-tlog", "--local-image",
                       root, check=False)
    assert code != 0 and "no matching signatures" in out

    _, out = cosign("verify-attestation", "--key", pub_path, "--insecure-ignore-tlog",
                    "--local-image", "--type", PTYPE, root)
    envelope = json.loads(out[out.index("{") :].splitlines()[0])
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicateType"] == PTYPE and statement["predicate"] == {"passed": True}
    code, _ = cosign("verify-attestation", "--key", other_pub, "--insecure-ignore-tlog",
                     "--local-image", "--type", PTYPE, root, check=False)
    assert code != 0


def test_cosign_verifies_a_nestbuild_signed_multi_arch_layout(cosign: Cosign,
                                                              tmp_path: Path) -> None:
    key_path, pub_path = keys.write_key_pair(tmp_path / "nb", b"pw")
    key = keys.load_private_key(key_path.read_bytes(), b"pw", "nb.key")
    root = tmp_path / "layout"
    index, _ = write_platform_index(root, "multi")
    signing.sign(signing.open_target(f"oci:{root}:multi", identity="reg.example/os/m:v1"), key)
    _, out = cosign("verify", "--key", pub_path, "--insecure-ignore-tlog", "--local-image", root)
    claims = json.loads(out[out.index("[") :].splitlines()[0])
    assert [c["critical"]["image"]["docker-manifest-digest"] for c in claims] == [index]


def test_containers_image_vector_verifies(tmp_path: Path) -> None:
    """A signature cosign made (containers/image's test fixture), read from a layout."""
    manifest = (VECTORS / "dir-img-cosign-valid" / "manifest.json").read_bytes()
    raw = (VECTORS / "dir-img-cosign-valid" / "signature-1").read_bytes()
    assert raw.startswith(b"\x00sigstore-json\n")
    sig = json.loads(raw[len(b"\x00sigstore-json\n") :])
    body = base64.b64decode(sig["payload"])
    root = tmp_path / "layout"
    w = LayoutWriter(root)
    image = w.add_bytes(manifest, json.loads(manifest)["mediaType"])
    w.tag(image, "latest")
    store = LayoutStore(root)
    store.put_blob("", body, sha(body), len(body))
    config = json.dumps({"architecture": "", "os": "", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [sha(body)]}}).encode()
    store.put_blob("", config, sha(config), len(config))
    sig_manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": sha(config), "size": len(config)},
                    "layers": [{"mediaType": sig["mimeType"], "digest": sha(body),
                                "size": len(body), "annotations": sig["annotations"]}]}
    store.put_manifest("", signing.attachment_tag(image.digest, "sig"),
                       json.dumps(sig_manifest).encode(), OCI_MANIFEST)
    identity = payload.parse_payload(body).docker_reference  # cosign names the repository
    keyfile = [VECTORS / "cosign.pub"]
    target = signing.open_target(f"oci:{root}:latest", identity=identity + ":latest")
    report = signing.verify(target, pubs(*keyfile), rule="matchRepository")
    assert report.passed, report.to_json()
    strict = signing.verify(target, pubs(*keyfile))
    assert not strict.passed
    assert "matchRepository would accept it" in strict.manifests[0].signatures[0].reason
    other = signing.verify(target, [("x.pub", keys.generate().public_key())],
                           rule="matchRepository")
    assert not other.passed


# --- a registry ---------------------------------------------------------------------------------

@pytest.fixture
def registry_host(registry: Registry) -> str:
    """The session's plain-HTTP loopback registry (tests use their own repository names)."""
    return registry.host


def push(layout_ref: str, dest: str) -> None:
    """Copy an OCI layout image (all platforms, exact digests) into the registry."""
    run(["skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
         layout_ref, f"docker://{dest}"], what=f"pushing {dest}")


@pytest.fixture
def env_pw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NESTBUILD_PASSWORD", "pw")
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)


def test_cosign_verifies_what_nestbuild_signs_and_attests_in_a_registry(
        cosign: Cosign, registry_host: str, tmp_path: Path, env_pw: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    key_path, pub_path = keys.write_key_pair(tmp_path / "nb", b"pw")
    _, other_pub = keys.write_key_pair(tmp_path / "other", b"pw")
    write_image(tmp_path / "l", b"registry one")
    ref = f"{registry_host}/signing/web:v1"
    push(f"oci:{tmp_path / 'l'}:v1", ref)
    assert main(["sign", f"docker://{ref}", "--key", str(key_path)]) == 0
    assert main(["sign", f"docker://{ref}", "--key", str(key_path)]) == 0
    assert "already signed by this key" in capsys.readouterr().out
    _, out = cosign("verify", "--key", pub_path, "--insecure-ignore-tlog",
                    "--allow-http-registry", ref)
    claims = json.loads(out[out.index("[") :].splitlines()[0])
    assert len(claims) == 1 and claims[0]["critical"]["identity"]["docker-reference"] == ref
    code, out = cosign("verify", "--key", other_pub, "--insecure-ignore-tlog",
                       "--allow-http-registry", ref, check=False)
    assert code != 0 and "no matching signatures" in out

    predicate = tmp_path / "p.json"
    predicate.write_text('{"passed": true}')
    assert main(["attest", f"docker://{ref}", "--key", str(key_path), "--predicate",
                 str(predicate), "--type", PTYPE]) == 0
    _, out = cosign("verify-attestation", "--key", pub_path, "--insecure-ignore-tlog",
                    "--allow-http-registry", "--type", PTYPE, ref)
    statement = json.loads(base64.b64decode(json.loads(out[out.index("{") :].splitlines()[0])
                                            ["payload"]))
    assert statement["predicate"] == {"passed": True}
    assert statement["subject"][0]["name"] == f"{registry_host}/signing/web"
    capsys.readouterr()
    assert main(["verify", f"docker://{ref}", "--key", str(pub_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["manifests"][0]["attestations"][0]["verified"] is True


def _content(registry: Registry) -> dict[str, str]:
    """The registry's content: every stored file (blobs, links, tags) but its upload scratch
    area, with its digest."""
    return {str(p.relative_to(registry.storage_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(registry.storage_dir.rglob("*"))
            if p.is_file() and "_uploads" not in p.parts}


def _open_uploads(registry: Registry, repo: str) -> list[Path]:
    """Upload sessions still open in ``repo`` (the registry is shared with other tests, some
    of which interrupt pushes on purpose). (distribution keeps a cancelled session's hash
    state until its upload purging, a week by default, whoever cancelled it: that is not
    one.)"""
    where = registry.storage_dir / "docker" / "registry" / "v2" / "repositories" / repo
    return [p.parent for p in where.rglob("_uploads/*/startedat")]


def test_a_failed_or_repeated_signing_leaves_the_registry_as_it_was(
        registry: Registry, registry_host: str, tmp_path: Path, env_pw: None,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Upload sessions are opened while the key decrypts; a wrong passphrase, or a signature
    that is already there, must store nothing and leave no session open."""
    key_path, _ = keys.write_key_pair(tmp_path / "nb", b"pw")
    write_image(tmp_path / "l", b"left as it was")
    ref = f"docker://{registry_host}/signing/untouched:v1"
    push(f"oci:{tmp_path / 'l'}:v1", ref.removeprefix("docker://"))
    before = _content(registry)
    monkeypatch.setenv("NESTBUILD_PASSWORD", "wrong")
    assert main(["sign", ref, "--key", str(key_path)]) == 2
    assert "wrong passphrase" in capsys.readouterr().err
    assert _content(registry) == before and _open_uploads(registry, "signing/untouched") == []
    monkeypatch.setenv("NESTBUILD_PASSWORD", "pw")
    assert main(["sign", ref, "--key", str(key_path)]) == 0
    signed = _content(registry)
    assert len(signed) > len(before) and _open_uploads(registry, "signing/untouched") == []
    assert main(["sign", ref, "--key", str(key_path)]) == 0
    assert "already signed by this key" in capsys.readouterr().out
    assert _content(registry) == signed and _open_uploads(registry, "signing/untouched") == []


def test_nestbuild_verifies_what_cosign_signs(
        cosign: Cosign, registry_host: str, tmp_path: Path, env_pw: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    # cosign signs with a key nestbuild generated.
    key_path, pub_path = keys.write_key_pair(tmp_path / "nb", b"pw")
    image = write_image(tmp_path / "l", b"signed by cosign")
    ref = f"{registry_host}/signing/db:v1"
    push(f"oci:{tmp_path / 'l'}:v1", ref)
    cosign("sign", "--key", key_path, "--tlog-upload=false", "--allow-http-registry", "-y",
           f"{registry_host}/signing/db@{image.digest}", password="pw")
    # cosign names the repository only: the default rule refuses it, matchRepository accepts.
    assert main(["verify", f"docker://{ref}", "--key", str(pub_path)]) == 1
    assert "matchRepository would accept it" in capsys.readouterr().out
    assert main(["verify", f"docker://{ref}", "--key", str(pub_path),
                 "--signed-identity", "matchRepository", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [sig] = doc["manifests"][0]["signatures"]
    assert sig["docker_reference"] == f"{registry_host}/signing/db" and sig["verified"]
    # nestbuild appends to cosign's signature manifest; cosign still reads both.
    assert main(["sign", f"docker://{ref}", "--key", str(key_path)]) == 0
    _, out = cosign("verify", "--key", pub_path, "--insecure-ignore-tlog",
                    "--allow-http-registry", ref)
    assert len(json.loads(out[out.index("[") :].splitlines()[0])) == 2
    assert main(["verify", f"docker://{ref}", "--key", str(pub_path)]) == 0


def policy(chroot: Chroot, pub: Path, host: str) -> tuple[str, str]:
    """policy.json and registries.d in the chroot's scratch dir, as `node trust` writes them
    but with containers/image's default signedIdentity (matchRepoDigestOrExact)."""
    shutil.copy(pub, chroot.scratch / "key.pub")
    doc = {"default": [{"type": "reject"}], "transports": {"docker": {
        f"{host}/signing": [{"type": "sigstoreSigned", "keyPath": f"{chroot.inner}/key.pub"}]}}}
    (chroot.scratch / "policy.json").write_text(json.dumps(doc))
    (chroot.scratch / "registries.d").mkdir(exist_ok=True)
    (chroot.scratch / "registries.d" / "test.yaml").write_text(
        f"docker:\n  {host}:\n    use-sigstore-attachments: true\n")
    return f"{chroot.inner}/policy.json", f"{chroot.inner}/registries.d"


def pull(chroot: Chroot, pub: Path, host: str, ref: str, *extra: str) -> tuple[int, str]:
    policy_file, registries_d = policy(chroot, pub, host)
    out = f"{chroot.inner}/out-{uuid.uuid4().hex[:8]}"
    return chroot.skopeo(*extra, "--policy", policy_file, "--registries.d", registries_d,
                         "copy", "--src-tls-verify=false", f"docker://{ref}", f"dir:{out}")


def test_containers_image_accepts_nestbuild_signatures_and_refuses_other_keys(
        trixie: Chroot, registry_host: str, tmp_path: Path, env_pw: None) -> None:
    key_path, pub_path = keys.write_key_pair(tmp_path / "nb", b"pw")
    _, other_pub = keys.write_key_pair(tmp_path / "other", b"pw")
    write_image(tmp_path / "l", b"for containers/image")
    ref = f"{registry_host}/signing/node:v1"
    push(f"oci:{tmp_path / 'l'}:v1", ref)
    code, out = pull(trixie, pub_path, registry_host, ref)
    assert code != 0 and "A signature was required, but no signature exists" in out
    assert main(["sign", f"docker://{ref}", "--key", str(key_path)]) == 0
    code, out = pull(trixie, pub_path, registry_host, ref)
    assert code == 0, out
    code, out = pull(trixie, other_pub, registry_host, ref)
    assert code != 0
    assert "invalid signature when validating ASN.1 encoded signature" in out


def test_containers_image_pulls_each_platform_of_a_signed_index(
        trixie: Chroot, registry_host: str, tmp_path: Path, env_pw: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    key_path, pub_path = keys.write_key_pair(tmp_path / "nb", b"pw")
    index, children = write_platform_index(tmp_path / "l", "multi")
    ref = f"{registry_host}/signing/multi:v1"
    push(f"oci:{tmp_path / 'l'}:multi", ref)
    assert main(["sign", f"docker://{ref}", "--key", str(key_path), "--format", "json"]) == 0
    signed = [s["digest"] for s in json.loads(capsys.readouterr().out)["signatures"]]
    assert signed == [index, *children]
    for arch in ("amd64", "arm64"):
        code, out = pull(trixie, pub_path, registry_host, ref, "--override-arch", arch)
        assert code == 0, (arch, out)
    assert main(["verify", f"docker://{ref}", "--key", str(pub_path)]) == 0
