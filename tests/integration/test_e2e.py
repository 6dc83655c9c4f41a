"""The whole pipeline, as the README's main command runs it: build with node trust baked in,
validate, sign and push to a TLS registry with auth, verify and deploy into a real ostree
sysroot, update config-only, roll back; and the images a node must refuse."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nestbuild._cli.main import main
from nestbuild._registry.client import RegistryClient
from nestbuild.building.baseimage import BuiltBase
from nestbuild.node import deploy
from nestbuild.signing import keys
from tests.fixtures.images import EXAMPLES
from tests.fixtures.registry import Registry

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.ostree]

PASSWORD = "e2e-passphrase"


@pytest.fixture(autouse=True)
def _mutable_tmp(tmp_path: Path) -> Iterator[None]:
    """ostree marks deployment roots immutable; let pytest clean up after us."""
    yield
    subprocess.run(["chattr", "-R", "-i", str(tmp_path)], check=False,
                   stderr=subprocess.DEVNULL)


class Pipeline:
    def __init__(self, reg: Registry, base: str, tmp: Path) -> None:
        self.reg, self.base, self.tmp = reg, base, tmp
        self.repo = f"{reg.host}/fleet/{uuid.uuid4().hex[:8]}"
        self.authfile = tmp / "auth.json"
        self.authfile.write_text(json.dumps(reg.auth_json()))
        self.access = ["--authfile", str(self.authfile), "--cert-dir", str(reg.cert_dir)]
        self.key, self.pub = keys.write_key_pair(tmp / "cosign", PASSWORD.encode())
        self.sysroot = tmp / "sysroot"
        self.trust = tmp / "node-trust"
        self.tags: list[str] = []

    def cli(self, *args: str) -> int:
        return main(list(args))

    def build(self, name: str, context: Path, base: str | None = None) -> str:
        tag = f"localhost/nestbuild-test/e2e-{name}:{uuid.uuid4().hex[:8]}"
        self.tags.append(tag)
        assert self.cli("build", str(context), "-t", tag, "--quiet",
                        "--build-arg", f"BASE={base or self.base}",
                        "--trust", self.repo, "--trust-key", str(self.pub)) == 0
        return tag

    def push(self, image: str, tag: str, *, key: Path | None = None) -> str:
        digestfile = self.tmp / f"{tag}.digest"
        sign = ["--sign-key", str(key)] if key else []
        assert self.cli("push", image, f"{self.repo}:{tag}", "-q", "--digestfile",
                        str(digestfile), *sign, *self.access) == 0
        return digestfile.read_text().strip()

    def rebase(self, tag: str) -> int:
        return self.cli("rebase", f"docker://{self.repo}:{tag}", "--via", "ostree",
                        "--sysroot", str(self.sysroot), "--trust", str(self.trust), "-q",
                        *self.access)

    def etc(self, d: deploy.Deployment, name: str) -> Path:
        return (self.sysroot / "ostree" / "deploy" / "nestos" / "deploy" /
                f"{d.checksum}.{d.serial}" / "etc" / name)

    def client(self) -> RegistryClient:
        return RegistryClient(self.reg.host, authfile=self.authfile, cert_dir=self.reg.cert_dir)


@pytest.fixture
def pipeline(tls_registry: Registry, mini_base: BuiltBase, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    monkeypatch.setenv("NESTBUILD_PASSWORD", PASSWORD)
    p = Pipeline(tls_registry, mini_base.tag, tmp_path)
    assert p.cli("node", "trust", p.repo, "--key", str(p.pub), "--out", str(p.trust)) == 0
    yield p
    from nestbuild._tools import buildah

    for tag in p.tags:
        buildah.remove_image(tag)


def test_build_push_deploy_update_rollback(pipeline: Pipeline, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    p = pipeline
    v1 = p.build("v1", EXAMPLES / "etc-config")
    d1 = p.push(v1, "v1", key=p.key)
    assert p.cli("verify", f"docker://{p.repo}:v1", "--key", str(p.pub), *p.access) == 0
    assert p.rebase("v1") == 0
    [first] = deploy.deployments(p.sysroot)
    assert first.digest == d1 and first.image == f"{p.repo}:v1"
    motd = (EXAMPLES / "etc-config" / "files" / "motd").read_text()
    assert p.etc(first, "motd").read_text() == motd
    # The trust baked in by build --trust is what the next update is checked against.
    assert (p.etc(first, "containers/policy.json")).is_file()

    # v2: one more /etc file on top of v1: a config-only update fetches only the new layer.
    ctx = tmp_path / "v2"
    ctx.mkdir()
    (ctx / "Containerfile").write_text("ARG BASE\nFROM ${BASE}\nCOPY motd /etc/motd\n")
    (ctx / "motd").write_text("version 2\n")
    v2 = p.build("v2", ctx, base=v1)
    d2 = p.push(v2, "v2", key=p.key)
    capsys.readouterr()
    assert p.cli("rebase", f"docker://{p.repo}:v2", "--via", "ostree", "--sysroot",
                 str(p.sysroot), "--format", "json", *p.access) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["digest"] == d2 and out["policy"]["accepted"]
    assert out["trust"].startswith("the default deployment's /etc")
    with p.client() as c:
        repo = p.repo.split("/", 1)[1]
        old, new = (json.loads(c.get_manifest(repo, d)[0]) for d in (d1, d2))  # type: ignore[index]
    old_layers = {layer["digest"] for layer in old["layers"]}
    new_bytes = sum(layer["size"] for layer in new["layers"] if layer["digest"] not in old_layers)
    assert 0 < out["bytesDownloaded"] <= new_bytes + new["config"]["size"]
    now = deploy.deployments(p.sysroot)
    assert [(d.digest, d.default, d.rollback) for d in now] == [(d2, True, False),
                                                                (d1, False, True)]
    assert p.etc(now[0], "motd").read_text() == "version 2\n"

    assert p.cli("node", "rollback", "--sysroot", str(p.sysroot)) == 0
    back = deploy.deployments(p.sysroot)
    assert back[0].digest == d1 and p.etc(back[0], "motd").read_text() == motd


def test_unsigned_other_key_and_tampered_images_are_refused(pipeline: Pipeline,
                                                            tmp_path: Path) -> None:
    p = pipeline
    v1 = p.build("v1", EXAMPLES / "etc-config")
    p.push(v1, "v1", key=p.key)
    assert p.rebase("v1") == 0
    before = deploy.deployments(p.sysroot)

    other_key, _ = keys.write_key_pair(tmp_path / "other", PASSWORD.encode())
    bad = p.build("bad", EXAMPLES / "var-state-tmpfiles")
    unsigned = p.push(bad, "unsigned")
    assert p.rebase("unsigned") == 1
    p.push(bad, "other-key", key=other_key)
    assert p.rebase("other-key") == 1
    # Tampered: the tag moved to another image and v1's signature copied next to it.
    repo = p.repo.split("/", 1)[1]
    with p.client() as c:
        signed = c.resolve(repo, "v1")
        assert signed is not None
        sig = c.get_manifest(repo, "sha256-" + signed.split(":")[1] + ".sig")
        assert sig is not None
        c.put_manifest(repo, "sha256-" + unsigned.split(":")[1] + ".sig", *sig)
    assert p.rebase("unsigned") == 1
    assert deploy.deployments(p.sysroot) == before
