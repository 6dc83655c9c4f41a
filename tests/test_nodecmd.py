"""bootc and rpm-ostree: command lines and status parsing (see tests/data/node-status)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestbuild import bootc, rpmostree
from nestbuild.errors import UsageError
from nestbuild.host import Host
from nestbuild.nodestatus import StatusError, parse_bootc, parse_rpm_ostree

DATA = Path(__file__).parent / "data" / "node-status"
DIGEST = "sha256:" + "ab" * 32


def test_command_lines_always_enforce_signatures() -> None:
    image = f"registry.example.com/nodes/base@{DIGEST}"
    assert bootc.switch_argv(image, apply=True) == [
        "bootc", "switch", "--enforce-container-sigpolicy", "--transport", "registry",
        "--apply", image]
    assert rpmostree.rebase_argv(image, reboot=True) == [
        "rpm-ostree", "rebase", "--reboot", f"ostree-image-signed:docker://{image}"]
    assert bootc.rollback_argv() == ["bootc", "rollback"]
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
