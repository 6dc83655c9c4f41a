"""bootc and rpm-ostree: command lines and status parsing (see tests/data/node-status, and
tests/data/reference for the documents bootc and rpm-ostree really write)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from nestbuild._tools import bootc, rpmostree
from nestbuild.errors import UsageError
from nestbuild.node.host import Host
from nestbuild.node.status import StatusError, parse_bootc, parse_rpm_ostree

DATA = Path(__file__).parents[1] / "data" / "node-status"
REFERENCE = Path(__file__).parents[1] / "data" / "reference"
BOOTC_FIXTURES = REFERENCE / "bootc" / "fixtures"
DIGEST = "sha256:" + "ab" * 32


def test_command_lines_always_enforce_signatures() -> None:
    image = f"registry.example.com/nodes/base@{DIGEST}"
    assert bootc.switch_argv(image, apply=True) == [
        "bootc", "switch", "--enforce-container-sigpolicy", "--transport", "registry",
        "--apply", image]
    assert rpmostree.rebase_argv(image, reboot=True) == [
        "rpm-ostree", "rebase", "--reboot", f"ostree-image-signed:docker://{image}"]
    assert bootc.switch_argv(image, apply=True, soft_reboot=True) == [
        "bootc", "switch", "--enforce-container-sigpolicy", "--transport", "registry",
        "--apply", "--soft-reboot=auto", image]
    # a soft reboot is a way of applying: never without --apply
    assert "--soft-reboot=auto" not in bootc.switch_argv(image, soft_reboot=True)
    assert bootc.rollback_argv() == ["bootc", "rollback"]
    assert bootc.rollback_argv(apply=True, soft_reboot=True) == [
        "bootc", "rollback", "--apply", "--soft-reboot=auto"]
    assert rpmostree.rollback_argv(reboot=True) == ["rpm-ostree", "rollback", "--reboot"]


def test_ssh_host_quotes_every_argument() -> None:
    h = Host.parse("ssh://core@node1.example:2222")
    argv = h.argv(["bootc", "switch", "reg/x@sha256:1; rm -rf /"])
    assert argv[:6] == ["ssh", "-o", "BatchMode=yes", "-p", "2222", "core@node1.example"]
    assert argv[-1] == "bootc switch 'reg/x@sha256:1; rm -rf /'"
    assert Host.parse(None).argv(["true"]) == ["true"]
    with pytest.raises(UsageError):
        Host.parse("http://node1")


def test_parse_bootc_status() -> None:
    st = parse_bootc((DATA / "bootc-staged.json").read_text())
    assert st.spec_image == "registry.example.com/nodes/base:v2"
    assert [d.role for d in st.deployments] == ["staged", "booted", "rollback"]
    staged = st.role("staged")
    assert staged is not None and staged.digest == "sha256:" + "2" * 64
    assert staged.verified is True and staged.architecture == "amd64"
    rollback = st.role("rollback")
    assert rollback is not None and rollback.verified is False


def test_parse_rpm_ostree_status() -> None:
    st = parse_rpm_ostree((DATA / "rpm-ostree.json").read_text())
    assert [(d.role, d.verified) for d in st.deployments] == [
        ("staged", True), ("booted", False), ("rollback", None)]
    staged = st.role("staged")
    assert staged is not None and staged.image == "registry.example.com/nodes/fcos:v2"
    assert staged.digest == "sha256:" + "3" * 64


@pytest.mark.parametrize("text, message", [
    ("not json", "not JSON"),
    ('{"kind": "BootcHost"}', "apiVersion"),
    ('{"apiVersion": "v1", "kind": "BootcHost", "status": {"booted": {"image": null}}}',
     "incompatible"),
    ('{"apiVersion": "v1", "kind": "BootcHost", "status": {"booted": {"incompatible": false,'
     ' "pinned": false, "image": {"image": {"image": "x", "transport": "registry"}}}}}',
     "imageDigest"),
])
def test_malformed_bootc_status(text: str, message: str) -> None:
    with pytest.raises(StatusError, match=message):
        parse_bootc(text)


def _booted_with(image: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "BootcHost", "status": {"booted": {
        "incompatible": False, "pinned": False, "image": image}}})


_REF = {"image": "quay.io/x/y:1", "transport": "registry"}


@pytest.mark.parametrize("text, message", [
    ('{"apiVersion": "v1", "kind": "BootcHost", "status": []}', "status is not an object"),
    ('{"apiVersion": "v1", "kind": "BootcHost", "status": {"otherDeployments": {}}}',
     "otherDeployments is not a list"),
    (_booted_with({"image": {**_REF, "signature": "maybe"}, "imageDigest": DIGEST,
                   "architecture": "amd64"}), "signature is not"),
    (_booted_with({"image": {**_REF, "signature": {"ostreeRemote": "a", "x": 1}},
                   "imageDigest": DIGEST, "architecture": "amd64"}), "signature is not"),
    (_booted_with({"image": _REF, "imageDigest": "sha256:abc", "architecture": "amd64"}),
     "imageDigest is not a sha256"),
    (_booted_with({"image": {"image": "quay.io/x/y:1"}, "imageDigest": DIGEST,
                   "architecture": "amd64"}), "lacks image/transport"),
])
def test_hostile_bootc_status_is_one_line(text: str, message: str) -> None:
    """A shape the schema does not allow is refused, never read as a guess (an unknown
    signature kind is not 'verified', a malformed digest is not passed on to pin by)."""
    with pytest.raises(StatusError, match=message):
        parse_bootc(text)


@pytest.mark.parametrize("deployments, message", [
    ("[1]", r"deployments\[0\] is not an object"),
    ('[{"booted": true, "container-image-reference-digest": "sha256:zz"}]',
     "digest is not a sha256"),
    ('[{"booted": true, "version": 33}]', r"deployments\[0\].version is not a string"),
])
def test_hostile_rpm_ostree_status_is_one_line(deployments: str, message: str) -> None:
    with pytest.raises(StatusError, match=message):
        parse_rpm_ostree(f'{{"deployments": {deployments}}}')


# -- the documents bootc and rpm-ostree really write (tests/data/reference) ------------------


class _BootcYaml(yaml.SafeLoader):
    """YAML read the way bootc reads its own status fixtures into its typed Host.

    bootc emits these same documents as JSON from ``bootc status --format=json``; turning the
    YAML into JSON must give what bootc would print. ``yaml.safe_load`` would not: it makes a
    float of ``version: 20231230.1`` and a datetime of an unquoted timestamp (bootc's fields
    are strings there) and cannot read ``signature: !ostreeRemote "fedora"``, serde's
    spelling of the enum bootc writes in JSON as ``{"ostreeRemote": "fedora"}``."""


_BootcYaml.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _enum_variant(loader: yaml.SafeLoader, variant: str, node: yaml.Node) -> dict[str, Any]:
    assert isinstance(node, yaml.ScalarNode), node
    return {variant: loader.construct_scalar(node)}


_BootcYaml.add_multi_constructor("!", _enum_variant)


def bootc_status_json(name: str) -> str:
    """The fixture as the JSON ``bootc status --format=json`` prints for it."""
    with (BOOTC_FIXTURES / name).open() as f:
        return json.dumps(yaml.load(f, Loader=_BootcYaml))


CENTOS = "quay.io/centos-bootc/centos-bootc:stream9"
CENTOS_DIGEST = "sha256:47e5ed613a970b6574bfa954ab25bb6e85656552899aa518b5961d9645102b38"
SOME = "quay.io/example/someimage:latest"
SOME_BOOTED = "sha256:736b359467c9437c1ac915acaae952aad854e07eb4a16a94999a48af08c83c34"
SOME_STAGED = "sha256:16dc2b6256b4ff0d2ec18d2dbfb06d117904010c8cf9732cdb022818cf7a7566"
OTHER = "quay.io/otherexample/otherimage:latest"
OTHER_DIGEST = "sha256:b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c"
#: The booted ostree commit of the two fixtures whose deployments came from no image.
OSTREE_BOOTED = "f9fa3a553ceaaaf30cf85bfe7eed46a822f7b8fd7e14c1e3389cbc3f6d27f791"
CENTOS_BOOTED = ("booted", CENTOS, CENTOS_DIGEST, "arm64", "stream9.20240807.0", False)

#: Per fixture: spec.image, then per deployment in order (role, image, digest, architecture,
#: version, verified). verified is False wherever bootc wrote no signature or ``insecure``:
#: both are its "accept what the node's policy accepts", i.e. nothing was enforced.
BOOTC_EXPECTED: dict[str, tuple[str | None, list[tuple[Any, ...]]]] = {
    # a pinned older deployment sits in otherDeployments beside the booted one
    "spec-booted-pinned.yaml": (CENTOS, [
        CENTOS_BOOTED,
        ("other", CENTOS, CENTOS_DIGEST[:-1] + "7", "arm64", "stream9.20240807.0", False)]),
    # a fetched update (cachedUpdate) is not a deployment
    "spec-booted-update-same-digest.yaml": (CENTOS, [CENTOS_BOOTED]),
    "spec-booted-with-update.yaml": (CENTOS, [CENTOS_BOOTED]),
    "spec-booted-with-update-no-version.yaml": (CENTOS, [CENTOS_BOOTED]),
    "spec-only-booted.yaml": (CENTOS, [CENTOS_BOOTED]),
    "spec-booted-usroverlay.yaml": (SOME, [
        ("booted", SOME, SOME_BOOTED, "arm64", "nightly", False)]),
    # the node follows Fedora CoreOS (verified by an ostree remote) but still boots another image
    "spec-ostree-remote.yaml": ("quay.io/fedora/fedora-coreos:stable", [
        ("booted", OTHER, OTHER_DIGEST, "arm64", "20231230.1", False)]),
    # booted from a plain ostree commit, an image staged to replace it
    "spec-ostree-to-bootc.yaml": (CENTOS, [
        ("staged", CENTOS, CENTOS_DIGEST, "s390x", "stream9.20240807.0", False),
        ("booted", None, None, None, None, None)]),
    # no image anywhere (an rpm-ostree node bootc cannot manage): still a status a user can
    # read, with the ostree commits and no image, digest or verdict invented
    "spec-rfe-ostree-deployment.yaml": (None, [
        ("staged", None, None, None, None, None),
        ("booted", None, None, None, None, None)]),
    "spec-staged-booted.yaml": (SOME, [
        ("staged", SOME, SOME_STAGED, "arm64", "nightly", False),
        ("booted", SOME, SOME_BOOTED, "arm64", "nightly", False)]),
    "spec-staged-download-only.yaml": (SOME, [
        ("staged", SOME, SOME_STAGED, "arm64", "nightly", False),
        ("booted", SOME, SOME_BOOTED, "arm64", "nightly", False)]),
    # booted is null (a status read from outside the running system): staged and rollback
    "spec-staged-rollback.yaml": (SOME, [
        ("staged", SOME, SOME_STAGED, "s390x", "nightly", False),
        ("rollback", SOME, SOME_BOOTED, "s390x", "nightly", False)]),
    "spec-v1a1-orig.yaml": (SOME, [
        ("staged", SOME, SOME_STAGED, "amd64", "nightly", False),
        ("booted", SOME, SOME_BOOTED, "amd64", "nightly", False)]),
    "spec-v1a1.yaml": (OTHER, [
        ("booted", OTHER, OTHER_DIGEST, "s390x", "20231230.1", False)]),
    # an image from a local OCI layout is named with its transport, not as a registry repo
    "spec-via-local-oci.yaml": ("oci:/var/mnt/osupdate:latest", [
        ("booted", "oci:/var/mnt/osupdate", CENTOS_DIGEST, "amd64", "stream9.20240807.0",
         False)]),
}


def test_every_bootc_fixture_has_expectations() -> None:
    assert sorted(p.name for p in BOOTC_FIXTURES.glob("spec-*.yaml")) == sorted(BOOTC_EXPECTED)


@pytest.mark.parametrize("name", sorted(BOOTC_EXPECTED))
def test_parse_real_bootc_status(name: str) -> None:
    st = parse_bootc(bootc_status_json(name))
    spec_image, deployments = BOOTC_EXPECTED[name]
    assert st.tool == "bootc" and st.spec_image == spec_image
    assert [(d.role, d.image, d.digest, d.architecture, d.version, d.verified)
            for d in st.deployments] == deployments
    assert st.rollback_queued is False
    # every deployment bootc lists is an ostree commit, image or not
    assert all(d.checksum and len(d.checksum) == 64 for d in st.deployments)
    if name in ("spec-ostree-to-bootc.yaml", "spec-rfe-ostree-deployment.yaml"):
        booted = st.role("booted")
        assert booted is not None and booted.checksum == OSTREE_BOOTED


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((REFERENCE / "bootc" / "host-v1.schema.json").read_text())
    return schema["$defs"]  # type: ignore[no-any-return]


def test_every_signature_kind_bootc_documents_is_read() -> None:
    values: list[Any] = []
    for kind in _schema()["ImageSignature"]["oneOf"]:
        if "const" in kind:
            values.append(kind["const"])
        else:
            values.extend({name: "fedora"} for name in kind["properties"])
    assert sorted(json.dumps(v) for v in values) == [
        '"containerPolicy"', '"insecure"', '{"ostreeRemote": "fedora"}']
    doc = json.loads(bootc_status_json("spec-only-booted.yaml"))
    for value in [*values, None]:
        doc["status"]["booted"]["image"]["image"]["signature"] = value
        booted = parse_bootc(json.dumps(doc)).role("booted")
        assert booted is not None
        assert booted.verified is (value not in ("insecure", None)), value


@pytest.mark.parametrize("where, key", [
    *[("entry", k) for k in _schema()["BootEntry"]["required"]],
    *[("image", k) for k in _schema()["ImageStatus"]["required"]],
    *[("reference", k) for k in _schema()["ImageReference"]["required"]],
])
def test_a_field_the_schema_requires_is_required(where: str, key: str) -> None:
    doc = json.loads(bootc_status_json("spec-only-booted.yaml"))
    entry = doc["status"]["booted"]
    obj = {"entry": entry, "image": entry["image"], "reference": entry["image"]["image"]}[where]
    del obj[key]
    with pytest.raises(StatusError, match=f"booted.* lacks .*{key}"):
        parse_bootc(json.dumps(doc))


def test_parse_real_rpm_ostree_status() -> None:
    """A Fedora Silverblue 33 workstation: a booted and a rollback deployment, both from an
    ostree remote ref with layered packages, so no container image and nothing verified by
    an image signature."""
    st = parse_rpm_ostree((REFERENCE / "rpm-ostree" / "workstation-status.json").read_text())
    assert st.tool == "rpm-ostree" and st.spec_image is None
    assert [d.to_json() for d in st.deployments] == [
        {"role": "booted", "image": None, "digest": None, "version": "33.21",
         "architecture": None, "verified": None,
         "checksum": "63335a77f9853618ba1a5f139c5805e82176a2a040ef5e34d7402e12263af5bb"},
        {"role": "rollback", "image": None, "digest": None, "version": "33.17",
         "architecture": None, "verified": None,
         "checksum": "775d54e89bc74731ec27db04f12510c0269c8cbab3ad5e39e0a4d693231ef072"}]


@pytest.mark.parametrize(("args", "says"), [
    (["--sysroot", "./s", "--via", "bootc"], "--sysroot is for --via ostree, not --via bootc"),
    (["--via", "ostree"], "--via ostree needs --sysroot DIR"),
])
def test_a_sysroot_and_a_nodes_tool_do_not_mix(args: list[str], says: str) -> None:
    from tests.fixtures.cli import nestbuild

    image = f"registry.example.com/nodes/base@{DIGEST}"
    for command in (["node", "upgrade"], ["rebase"]):
        r = nestbuild(*command, image, *args, check=False)
        assert r.returncode == 2 and r.stderr.strip() == f"error: {says}", (command, r.stderr)
