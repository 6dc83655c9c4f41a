"""The habits users bring from cosign, skopeo and podman: bare registry references (one rule
for every command), and a build that leaves nothing behind, finished or interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nestbuild._tools import run
from nestbuild.building.baseimage import BuiltBase
from nestbuild.signing import keys
from tests.fixtures import cli
from tests.fixtures.registry import Registry
from tests.ocibuilder import Layer, bootable_base, derived


def _containers_of(image_id: str) -> list[str]:
    """The buildah working containers made from the image ``image_id``."""
    for _ in range(20):  # other builds add and remove containers while buildah lists them
        got = run.run(["buildah", "containers", "--json"], check=False)
        if got.returncode == 0:
            return [str(c["id"]) for c in json.loads(got.stdout or b"[]")
                    if c.get("imageid") == image_id]
        time.sleep(0.2)
    raise AssertionError(f"buildah containers: {got.stderr.decode(errors='replace')}")


@pytest.fixture
def own_base(mini_base: BuiltBase) -> Iterator[tuple[str, str]]:
    """(name, image id) of a base of this test's own (the mini base with a label of its
    own), so that the working containers made from it are this test's."""
    name = f"localhost/nestbuild-test/interrupt-{uuid.uuid4().hex[:8]}:1"
    ctr = run.run(["buildah", "from", "--pull-never", mini_base.tag]).stdout.decode().strip()
    try:
        run.run(["buildah", "config", "--label", f"test.id={name}", ctr])
        run.run(["buildah", "commit", "--quiet", ctr, name])
    finally:
        run.run(["buildah", "rm", ctr])
    image_id = run.run(["buildah", "inspect", "--format", "{{.FromImageID}}", name]
                       ).stdout.decode().strip()
    yield name, image_id
    run.run(["buildah", "rmi", name], check=False)


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp)}


def test_a_build_leaves_its_log_only_when_it_failed(mini_base: BuiltBase,
                                                     tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(f"FROM {mini_base.tag}\nRUN echo built > /etc/motd\n")
    tag = f"localhost/nestbuild-test/leftover-{uuid.uuid4().hex[:8]}:1"
    try:
        done = cli.nestbuild("build", ctx, "-t", tag, "--no-validate", "--format", "json",
                             env=_env(tmp), check=True)
        assert json.loads(done.stdout)["log"] is None
        assert list(tmp.iterdir()) == []
    finally:
        run.run(["buildah", "rmi", "-f", tag], what="removing the image", check=False)

    (ctx / "Containerfile").write_text(f"FROM {mini_base.tag}\nRUN false\n")
    failed = cli.nestbuild("build", ctx, "-t", tag, "--no-validate", env=_env(tmp))
    assert failed.returncode == 1, failed.stderr
    [logdir] = list(tmp.iterdir())
    log = logdir / "build.log"
    assert 'RUN false' in log.read_text()
    assert f"(full log: {log})" in failed.stderr


def test_ctrl_c_during_a_run_step_removes_the_working_container(
        own_base: tuple[str, str], tmp_path: Path) -> None:
    base, image_id = own_base
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(f"FROM {base}\nRUN sleep 60\n")
    tag = f"localhost/nestbuild-test/interrupted-{uuid.uuid4().hex[:8]}:1"
    child = subprocess.Popen(
        [*cli.COMMAND, "build", str(ctx), "-t", tag, "--no-validate"], env=_env(tmp),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _containers_of(image_id):  # the RUN step has its container
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the build never reached its RUN step"
            time.sleep(0.3)
        time.sleep(1)  # inside `sleep 60` now
        child.send_signal(signal.SIGINT)  # to nestbuild alone, not its process group
        _, err = child.communicate(timeout=90)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert "interrupted" in err
    assert _containers_of(image_id) == []
    assert list(tmp.iterdir()) == []  # no build log either


# --- bare references: one rule ---------------------------------------------------------------

@pytest.mark.parametrize(("text", "local", "registry"), [
    ("registry.example.com/nodes/web:v3", "containers-storage", "docker"),
    ("127.0.0.1:5000/nodes/web@sha256:" + "a" * 64, "containers-storage", "docker"),
    ("localhost:5000/web", "containers-storage", "docker"),
    ("localhost/my-node:latest", "containers-storage", "containers-storage"),
    ("my-node:v1", "containers-storage", "containers-storage"),
    ("library/alpine", "containers-storage", "containers-storage"),
    ("oci:/srv/out:v3", "oci", "oci"),
    ("containers-storage:registry.example.com/x:1", "containers-storage",
     "containers-storage"),
    ("docker://registry.example.com/x:1", "docker", "docker"),
])
def test_a_bare_reference_means_the_same_in_every_command(text: str, local: str,
                                                           registry: str) -> None:
    from nestbuild import parse_reference

    assert parse_reference(text).transport == local
    assert parse_reference(text, bare="registry").transport == registry


@pytest.fixture
def in_registry(registry: Registry, tmp_path: Path) -> str:
    """HOST/REPO:v1 of an image pushed (unsigned) to the test registry."""
    _, image = derived(tmp_path / "l", [bootable_base()], [Layer().file("/etc/motd", b"x")])
    name = f"{registry.host}/test/{uuid.uuid4().hex[:10]}:v1"
    cli.nestbuild("push", image, name, "--no-validate", "-q", check=True)
    return name


def test_sign_attest_verify_and_tree_take_host_repo_tag_as_cosign_does(
        in_registry: str, tmp_path: Path) -> None:
    key, pub = keys.write_key_pair(tmp_path / "cosign", b"pw")
    env = {**os.environ, "NESTBUILD_PASSWORD": "pw"}
    signed = cli.nestbuild("sign", in_registry, "--key", key, env=env, check=True)
    assert f"as {in_registry} ->" in signed.stdout
    predicate = tmp_path / "p.json"
    predicate.write_text('{"ok": true}')
    cli.nestbuild("attest", in_registry, "--key", key, "--predicate", predicate, "--type",
                  "https://example.com/p", env=env, check=True)
    verified = cli.nestbuild("verify", in_registry, "--key", pub, "--format", "json",
                             check=True)
    doc = json.loads(verified.stdout)
    assert doc["verified"] and doc["signed_identity"]["reference"] == in_registry
    assert doc["manifests"][0]["attestations"][0]["verified"]
    # the same name with docker:// is the same image
    assert cli.nestbuild("verify", f"docker://{in_registry}", "--key", pub).returncode == 0


@pytest.mark.parametrize("argv", [
    ["validate", "{ref}"],
    ["inspect", "{ref}"],
    ["push", "{ref}", "{ref}"],
    ["push", "{ref}", "{ref}", "--no-validate"],
])
def test_local_first_commands_suggest_docker_when_the_name_is_not_local(
        argv: list[str]) -> None:
    ref = f"registry.example.com/nodes/absent-{uuid.uuid4().hex[:8]}:v3"
    got = cli.nestbuild(*[a.format(ref=ref) for a in argv])
    assert got.returncode == 2, got.stderr
    [error] = [ln for ln in got.stderr.splitlines() if ln.startswith("error:")]
    assert error == f"error: {ref}: not in local storage; did you mean docker://{ref}?"
