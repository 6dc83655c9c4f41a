"""The chunked rpm base through the whole pipeline: pushed signed (with its SBOM), deployed
into a real ostree sysroot, updated to version 2 fetching only the layers that changed, and
rolled back, with the real rpm reading the package database each deployment holds."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nestbuild._cli.main import main
from nestbuild._image import open_image
from nestbuild._registry.client import RegistryClient
from nestbuild.building import rpmbase
from nestbuild.node import deploy
from nestbuild.signing import keys
from nestbuild.validation import packages
from tests.fixtures.registry import Registry

pytestmark = [pytest.mark.ostree]

PASSWORD = "rpm-pipeline"
OSNAME = "nestos"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Path]:
    """A fresh sysroot; ostree marks deployment roots immutable, so undo that afterwards."""
    yield tmp_path / "sysroot"
    subprocess.run(["chattr", "-R", "-i", str(tmp_path)], check=False,
                   stderr=subprocess.DEVNULL)


def installed(sysroot: Path, d: deploy.Deployment, tmp: Path) -> set[str]:
    """``rpm -qa`` of a deployment's database, read by the real rpm from a copy (the
    deployment is read-only and rpm takes a lock beside its database)."""
    root = sysroot / "ostree" / "deploy" / OSNAME / "deploy" / f"{d.checksum}.{d.serial}"
    db = Path(tempfile.mkdtemp(dir=tmp))
    shutil.copy(root / "usr/lib/sysimage/rpm/rpmdb.sqlite", db / "rpmdb.sqlite")
    out = subprocess.run(["rpm", "--dbpath", str(db), "--define", "_db_backend sqlite", "-qa",
                          "--qf", "%{NAME}-%{VERSION}-%{RELEASE}\n"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_chunked_rpm_base_push_deploy_update_rollback(
        rpm_bases: dict[int, rpmbase.BuiltRpmBase], tls_registry: Registry, node: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NESTBUILD_PASSWORD", PASSWORD)
    reg = tls_registry
    repo = f"{reg.host}/rpm/{uuid.uuid4().hex[:8]}"
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps(reg.auth_json()))
    access = ["--authfile", str(authfile), "--cert-dir", str(reg.cert_dir)]
    key, pub = keys.write_key_pair(tmp_path / "cosign", PASSWORD.encode())
    trust = tmp_path / "trust"
    assert main(["node", "trust", repo, "--key", str(pub), "--out", str(trust)]) == 0

    digests = {}
    for version, base in rpm_bases.items():
        digestfile = tmp_path / f"v{version}.digest"
        assert main(["push", f"containers-storage:{base.tag}", f"{repo}:v{version}", "-q",
                     "--sign-key", str(key), "--digestfile", str(digestfile), *access]) == 0
        digests[version] = digestfile.read_text().strip()
    capsys.readouterr()

    # the signature and the SBOM are there, as a node's verifier and a scanner read them
    assert main(["verify", f"docker://{repo}:v1", "--key", str(pub), *access]) == 0
    capsys.readouterr()
    assert main(["tree", f"docker://{repo}:v1", "--format", "json", *access]) == 0
    tree = json.dumps(json.loads(capsys.readouterr().out))
    assert "https://spdx.dev/Document" in tree
    # the attested package list is what the database of the image says, package by package
    assert main(["download", "attestation", f"docker://{repo}:v1", "--predicate-type",
                 packages.PREDICATE_TYPE, *access]) == 0
    [statement] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert statement["predicate"] == packages.package_list(
        open_image(f"containers-storage:{rpm_bases[1].tag}"))

    rebase = ["rebase", "--via", "ostree", "--sysroot", str(node), "--trust", str(trust),
              "--format", "json", *access]
    assert main([rebase[0], f"docker://{repo}:v1", *rebase[1:]]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["digest"] == digests[1]
    [d1] = deploy.deployments(node)
    v1_packages = installed(node, d1, tmp_path)
    assert any(p.startswith("skopeo-") for p in v1_packages)
    assert not any(p.startswith("jq-") for p in v1_packages)
    assert {p for p in v1_packages if p.startswith("kernel-core-")} == {
        "kernel-core-6.11.4-301.nb"}

    # version 2 fetches only the layers it does not share with version 1
    assert main([rebase[0], f"docker://{repo}:v2", *rebase[1:]]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["digest"] == digests[2]
    with RegistryClient(reg.host, authfile=authfile, cert_dir=reg.cert_dir) as c:
        name = repo.split("/", 1)[1]
        old, new = (json.loads(c.get_manifest(name, digests[v])[0])  # type: ignore[index]
                    for v in (1, 2))
    shared = {layer["digest"] for layer in old["layers"]}
    changed = [layer for layer in new["layers"] if layer["digest"] not in shared]
    assert 0 < len(changed) < len(new["layers"])  # chunked: most layers are shared
    assert 0 < second["bytesDownloaded"] <= (
        sum(layer["size"] for layer in changed) + new["config"]["size"])
    now = deploy.deployments(node)
    assert [(d.digest, d.default) for d in now] == [(digests[2], True), (digests[1], False)]
    v2_packages = installed(node, now[0], tmp_path)
    assert any(p.startswith("jq-") for p in v2_packages)
    assert not any(p.startswith("skopeo-") for p in v2_packages)
    assert {p for p in v2_packages if p.startswith("kernel-core-")} == {
        "kernel-core-6.11.5-300.nb"}

    # and back: the previous deployment, with its own database, is the default again
    assert main(["node", "rollback", "--sysroot", str(node)]) == 0
    back = deploy.deployments(node)
    assert back[0].digest == digests[1]
    assert installed(node, back[0], tmp_path) == v1_packages
