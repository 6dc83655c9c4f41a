"""What is attached to an image, shown as objects everywhere: ``push --sign-key`` says what it
signed and attested, ``nestbuild tree`` lists the .sig, .att and .sbom tags and OCI referrers
(as cosign tree), ``inspect`` shows them, and ``download attestation`` prints the statements."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from nestbuild._image.model import OCI_MANIFEST
from nestbuild._registry.client import RegistryClient
from nestbuild.signing import keys
from nestbuild.signing.signatures import VALIDATION_PREDICATE, key_id
from tests.fixtures import cli
from tests.fixtures.registry import Registry
from tests.ocibuilder import Layer, bootable_base, derived

pytestmark = [pytest.mark.registry]

SBOM_TYPE = "text/spdx+json"
ARTIFACT_TYPE = "application/vnd.example.report.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def pushed(registry: Registry, tmp_path: Path) -> dict[str, Any]:
    """A layout image pushed (bare HOST/REPO:v1, plus the tag stable) with --sign-key."""
    _, image = derived(tmp_path / "l", [bootable_base()], [Layer().file("/etc/motd", b"hi\n")],
                       tag="good")
    key, pub = keys.write_key_pair(tmp_path / "cosign", b"pw")
    name = f"{registry.host}/test/{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "NESTBUILD_PASSWORD": "pw"}
    out = cli.nestbuild("push", image, f"{name}:v1", "--tag", "stable", "--sign-key", key,
                        "--format", "json", "-q", env=env, check=True)
    return {"name": name, "pub": pub, "result": json.loads(out.stdout), "env": env,
            "image": image, "key": key}


def test_push_reports_its_signatures_and_attestations_as_objects(
        pushed: dict[str, Any]) -> None:
    result, name = pushed["result"], pushed["name"]
    kid = key_id(keys.load_public_key(Path(pushed["pub"]).read_bytes(), "pub"))
    hexdigest = result["digest"].split(":")[1]
    sigs = result["signatures"]
    assert [s["docker_reference"] for s in sigs] == [f"{name}:v1", f"{name}:stable"]
    for s in sigs:
        assert s["digest"] == result["digest"] and s["tag"] == f"sha256-{hexdigest}.sig"
        assert s["key_id"] == kid and s["added"] is True
        assert s["payload_type"] == "application/vnd.dev.cosign.simplesigning.v1+json"
        assert s["manifest_digest"].startswith("sha256:")
    # the second signature went into the same .sig manifest: the last digest is what it holds
    atts = result["attestations"]
    assert VALIDATION_PREDICATE in [a["predicate_type"] for a in atts]
    for a in atts:
        assert a["tag"] == f"sha256-{hexdigest}.att" and a["key_id"] == kid
        assert a["payload_type"] == "application/vnd.dsse.envelope.v1+json"

    # the table says it too, after the reference (still the first line)
    again = cli.nestbuild("push", pushed["image"], f"{name}:v2", "--sign-key", pushed["key"],
                          "-q", env=pushed["env"], check=True)
    first, *rest = again.stdout.splitlines()
    assert first == f"{name}@{result['digest']}"
    assert any(f"signed: {result['digest'][:19]} as {name}:v2" in line for line in rest)
    assert any("attested:" in line and VALIDATION_PREDICATE in line for line in rest)
    assert all(kid[:19] in line for line in rest)


def test_tree_lists_signatures_attestations_sboms_and_referrers(
        pushed: dict[str, Any], registry: Registry) -> None:
    name, result = pushed["name"], pushed["result"]
    digest = result["digest"]
    repo = name.split("/", 1)[1]
    client = RegistryClient(registry.host)
    # an SBOM as cosign attaches it, and an OCI 1.1 artifact about the image
    sbom = b'{"spdxVersion":"SPDX-2.3"}'
    client.put_blob(repo, sbom, sha(sbom), len(sbom))
    client.put_blob(repo, b"{}", sha(b"{}"), 2)
    sbom_manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(b"{}"), "size": 2},
        "layers": [{"mediaType": SBOM_TYPE, "digest": sha(sbom), "size": len(sbom)}]}).encode()
    client.put_manifest(repo, f"sha256-{digest.split(':')[1]}.sbom", sbom_manifest,
                        OCI_MANIFEST)
    artifact = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(b"{}"),
                   "size": 2},
        "layers": [{"mediaType": "application/json", "digest": sha(b"{}"), "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1}}).encode()
    adigest = client.put_manifest(repo, sha(artifact), artifact, OCI_MANIFEST)
    client.add_referrer(repo, digest, {"mediaType": OCI_MANIFEST, "digest": adigest,
                                       "size": len(artifact), "artifactType": ARTIFACT_TYPE})
    client.close()

    # a bare HOST/REPO:TAG is a registry image here, as in cosign tree
    doc = json.loads(cli.nestbuild("tree", f"{name}:v1", "--format", "json", check=True).stdout)
    assert doc["digest"] == digest
    [sig] = doc["signatures"]
    assert sig["tag"] == result["signatures"][0]["tag"]
    assert sig["digest"] == result["signatures"][-1]["manifest_digest"]
    assert [la["identity"] for la in sig["layers"]] == [f"{name}:v1", f"{name}:stable"]
    [att] = doc["attestations"]
    assert att["digest"] == result["attestations"][-1]["manifest_digest"]
    assert VALIDATION_PREDICATE in [la["predicate_type"] for la in att["layers"]]
    [sb] = doc["sboms"]
    assert sb["digest"] == sha(sbom_manifest) and sb["layers"][0]["media_type"] == SBOM_TYPE
    assert [(r["digest"], r["artifact_type"]) for r in doc["referrers"]] == [
        (adigest, ARTIFACT_TYPE)]

    table = cli.nestbuild("tree", f"docker://{name}:v1", check=True).stdout
    for word in ("signature", "attestation", "sbom", "referrer", f"signs for {name}:v1",
                 VALIDATION_PREDICATE, ARTIFACT_TYPE):
        assert word in table, (word, table)

    # inspect shows the same objects (not an empty referrers list)
    shown = json.loads(cli.nestbuild("inspect", f"docker://{name}:v1", "--format", "json",
                                     check=True).stdout)
    for kind in ("signatures", "attestations", "sboms", "referrers"):
        assert shown[kind] == doc[kind], kind


def test_download_attestation_prints_the_statements(pushed: dict[str, Any]) -> None:
    name, digest = pushed["name"], pushed["result"]["digest"]
    out = cli.nestbuild("download", "attestation", f"{name}:v1", "--predicate-type",
                        VALIDATION_PREDICATE, check=True).stdout
    [line] = out.splitlines()
    statement = json.loads(line)
    assert statement["predicateType"] == VALIDATION_PREDICATE
    assert statement["subject"][0]["digest"]["sha256"] == digest.split(":")[1]
    assert statement["predicate"]["passed"] is True
    every = cli.nestbuild("download", "attestation", f"docker://{name}:v1", check=True).stdout
    assert len(every.splitlines()) == len(pushed["result"]["attestations"])
    none = cli.nestbuild("download", "attestation", f"{name}:v1", "--predicate-type",
                         "https://example.com/none")
    assert none.returncode == 1 and "no attestations of type" in none.stderr


def test_tree_of_an_unsigned_layout_and_of_local_storage(tmp_path: Path) -> None:
    _, image = derived(tmp_path / "l", [bootable_base()], [Layer().file("/etc/a", b"a")],
                       tag="v1")
    doc = json.loads(cli.nestbuild("tree", image, "--format", "json", check=True).stdout)
    assert (doc["signatures"], doc["attestations"], doc["sboms"], doc["referrers"]) == (
        [], [], [], [])
    assert "no signatures" in cli.nestbuild("tree", image, check=True).stdout
    local = cli.nestbuild("tree", "localhost/my-node:v1")
    assert local.returncode == 2 and "push it first" in local.stderr
