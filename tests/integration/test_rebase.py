"""`nestbuild rebase`: digest pinning and pre-checks against a real registry; the node tools'
command lines (bootc/rpm-ostree cannot run here, see docs/nodes.md)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from nestbuild._image import open_image
from nestbuild._registry.access import RegistryAccess
from nestbuild.building.baseimage import BuiltBase
from nestbuild.errors import NestbuildError
from nestbuild.node.checks import RebaseRefused, repository
from nestbuild.node.host import Host
from nestbuild.node.remote import RemoteImage, remote_image
from nestbuild.node.tool import plan
from tests.fixtures.cli import nestbuild
from tests.fixtures.images import EXAMPLES, BuildImage

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.registry, pytest.mark.skopeo]  # its own docker-registry too


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry on a random loopback port, plain HTTP."""
    root = tmp_path_factory.mktemp("registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "config.yml").write_text(
        "version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: "
        f"{root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n")
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail((root / "registry.log").read_text()[-2000:])
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def push(tag: str, dest: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                    f"containers-storage:{tag}", f"docker://{dest}"], check=True)


def test_rebase_pins_the_digest_and_checks(plain_registry: str, build_image: BuildImage,
                                           mini_base: BuiltBase) -> None:
    tag = build_image(EXAMPLES / "etc-config")
    dest = f"{plain_registry}/nodes/base:v1"
    push(tag, dest)
    image = remote_image(dest, RegistryAccess(tls_verify=False))
    assert image.name == dest and image.architecture == "amd64"
    p = plan(image, via="bootc", host=Host(), apply=False, node_arch="amd64", node_free=2**30)
    assert p.command == ["bootc", "switch", "--enforce-container-sigpolicy", "--transport",
                         "registry", f"{plain_registry}/nodes/base@{image.digest}"]
    assert all(c.ok for c in p.checks)
    with pytest.raises(RebaseRefused, match="architecture: image amd64, node arm64"):
        plan(image, via="bootc", host=Host(), apply=False, node_arch="arm64")
    with pytest.raises(RebaseRefused, match="room"):
        plan(image, via="rpm-ostree", host=Host(), apply=True, node_arch="amd64", node_free=10)

    r = nestbuild("rebase", dest, "--dry-run", "--tls-verify", "false",
                  "--via", "rpm-ostree", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["command"][-1] == (
        f"ostree-image-signed:docker://{plain_registry}/nodes/base@{image.digest}")
    # the pushed digest is what the registry serves, not local storage's manifest
    assert doc["digest"] == image.digest
    assert open_image(tag).config.diff_ids  # still local


def test_unbootable_image_is_refused() -> None:
    image = RemoteImage("reg.example/x:v1", "sha256:" + "0" * 64, "amd64", {}, 10)
    with pytest.raises(RebaseRefused, match="bootable"):
        plan(image, via="bootc", host=Host(), apply=False, node_arch="amd64")
    with pytest.raises(NestbuildError, match="--via"):
        plan(image, via="dnf", host=Host(), apply=False)


def test_repository_keeps_registry_ports() -> None:
    assert repository("127.0.0.1:5000/nodes/base:v1") == "127.0.0.1:5000/nodes/base"
    assert repository("127.0.0.1:5000/nodes/base") == "127.0.0.1:5000/nodes/base"
    assert repository("quay.io/fedora/fedora-bootc:41") == "quay.io/fedora/fedora-bootc"


def test_missing_image_and_missing_tool(plain_registry: str, tmp_path: Path) -> None:
    r = nestbuild("rebase", f"{plain_registry}/nodes/none:v1", "--tls-verify", "false")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "nodes/none:v1" in r.stderr
