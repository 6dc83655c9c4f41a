"""`nestbuild build` with buildah, for real: base checks, pinning, validation, errors."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from nestbuild._image import open_image
from nestbuild._tools import buildah
from nestbuild.building.baseimage import BuiltBase
from nestbuild.building.build import build
from nestbuild.building.engine import BuildFailed, BuildOptions
from nestbuild.errors import ImageError, UsageError
from tests.fixtures.cli import nestbuild as nb
from tests.fixtures.images import EXAMPLES

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.buildah]


@pytest.fixture
def tag() -> str:
    name = f"localhost/nestbuild-test/build:{uuid.uuid4().hex[:8]}"
    yield name
    buildah.remove_image(name)


def test_build_pins_the_base_and_validates(mini_base: BuiltBase, tag: str) -> None:
    ctx = EXAMPLES / "etc-config"
    result = build(BuildOptions(context=ctx, image=tag, build_args={"BASE": mini_base.tag}))
    base = open_image(mini_base.tag)
    assert (result.base_name, result.base_digest) == (mini_base.tag, base.digest)
    image = open_image(tag)
    assert result.digest == image.digest
    assert image.manifest.annotations["org.opencontainers.image.base.digest"] == base.digest
    # never squashed: the base's layers are intact under the derived ones
    assert image.config.diff_ids[: len(base.config.diff_ids)] == base.config.diff_ids
    assert image.config.labels["containers.bootc"] == "1"
    assert result.report is not None and result.report.passed
    assert result.isolation == "chroot"


def test_cli_build_json_digestfile_and_policy_failure(mini_base: BuiltBase, tag: str,
                                                      tmp_path: Path) -> None:
    digestfile = tmp_path / "digest"
    r = nb("build", str(EXAMPLES / "usr-binary"), "-t", tag, "--build-arg",
           f"BASE={mini_base.tag}", "--format", "json", "--digestfile", str(digestfile))
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["passed"] is False and doc["validation"]["findings"][0]["rule"] == "path-policy"
    assert digestfile.read_text() == doc["digest"] == open_image(tag).digest
    assert buildah.image_exists(tag)  # kept for inspection

    r = nb("build", str(EXAMPLES / "usr-binary"), "-t", tag, "--build-arg",
           f"BASE={mini_base.tag}", "--no-validate", "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["validation"] is None


def test_project_file_drives_the_build(mini_base: BuiltBase, tag: str, tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text(
        "ARG BASE\nFROM ${BASE}\nCOPY f /usr/local/f\n")
    (tmp_path / "f").write_text("x")
    (tmp_path / "nestbuild.yaml").write_text(
        f"image: {tag}\nbuild-args:\n  BASE: {mini_base.tag}\npolicy:\n  extends: packages\n")
    r = nb("build", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["image"] == tag and doc["validation"]["policy"]["name"] == "packages"

    (tmp_path / "nestbuild.yaml").write_text(f"image: {tag}\nlayers: maybe\nimagee: x\n")
    r = nb("build", cwd=tmp_path)
    assert r.returncode == 2 and "nestbuild.yaml:2: layers must be true or false" in r.stderr
    (tmp_path / "nestbuild.yaml").write_text("imagee: x\n")
    r = nb("build", cwd=tmp_path)
    assert "nestbuild.yaml:1: unknown setting 'imagee' (did you mean 'image'?)" in r.stderr


def test_refuses_unbootable_missing_and_scratch_bases(tmp_path: Path, tag: str) -> None:
    plain = f"localhost/nestbuild-test/plain:{uuid.uuid4().hex[:8]}"
    with buildah.working_container("scratch") as ctr:
        buildah.commit(ctr, plain)
    try:
        (tmp_path / "Containerfile").write_text(f"FROM {plain}\nCOPY x /etc/x\n")
        (tmp_path / "x").write_text("x")
        with pytest.raises(ImageError, match="is not a bootable OS image"):
            build(BuildOptions(context=tmp_path, image=tag))
    finally:
        buildah.remove_image(plain)
    (tmp_path / "Containerfile").write_text("FROM localhost/no/such:base\n")
    with pytest.raises(ImageError, match="not in local storage"):
        build(BuildOptions(context=tmp_path, image=tag))
    (tmp_path / "Containerfile").write_text("FROM scratch\n")
    with pytest.raises(ImageError, match="not a bootable OS base"):
        build(BuildOptions(context=tmp_path, image=tag))
    with pytest.raises(UsageError, match="not a directory"):
        build(BuildOptions(context=tmp_path / "missing", image=tag))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no Containerfile or Dockerfile"):
        build(BuildOptions(context=tmp_path / "empty", image=tag))


def test_multistage_final_base_and_failing_run(mini_base: BuiltBase, tmp_path: Path,
                                               tag: str) -> None:
    (tmp_path / "Containerfile").write_text(
        f"ARG OS={mini_base.tag}\nFROM ${{OS}} AS os\nFROM os\n"
        "RUN echo step-output && sh -c 'exit 3'\n")
    with pytest.raises(BuildFailed) as info:
        build(BuildOptions(context=tmp_path, image=tag))
    assert info.value.exit_code == 1
    assert "step-output" in (info.value.detail or "")
    r = nb("build", str(tmp_path), "-t", tag)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].startswith("(full log:")


def test_containerfile_parsing(tmp_path: Path) -> None:
    from nestbuild.building import containerfile

    cf = tmp_path / "Containerfile"
    cf.write_text("# c\nARG REG=quay.io\nARG TAG\nFROM ${REG}/base:${TAG:-41} AS b\n"
                  "RUN a \\\n  b\nFROM --platform=linux/amd64 b\nRUN --mount=type=cache x\n")
    parsed = containerfile.parse(cf)
    assert parsed.final_base()[0] == "quay.io/base:41"
    assert parsed.needs_buildkit is not None and ":8:" in parsed.needs_buildkit
    assert containerfile.parse(cf, {"TAG": "42"}).final_base()[0] == "quay.io/base:42"
    cf.write_text("RUN x\nFROM a\n")
    with pytest.raises(UsageError, match=r"Containerfile:1: RUN before the first FROM"):
        containerfile.parse(cf)


def test_init_writes_a_project_and_refuses_to_overwrite(tmp_path: Path) -> None:
    r = nb("init", str(tmp_path / "node"))
    assert r.returncode == 0
    assert {p.name for p in (tmp_path / "node").iterdir()} == {
        "Containerfile", "nestbuild.yaml", "policy.yaml", "motd", "tmpfiles.conf"}
    r = nb("init", str(tmp_path / "node"))
    assert r.returncode == 2 and "--force" in r.stderr


def test_docker_engine_builds_into_local_storage(mini_base: BuiltBase, dockerd: str,
                                                 tag: str) -> None:
    opts = BuildOptions(context=EXAMPLES / "usr-binary", image=tag, engine="docker",
                        build_args={"BASE": mini_base.tag}, docker_host=dockerd)
    from nestbuild.validation.policy import preset

    result = build(opts, policy=preset("packages"))
    image = open_image(tag)  # in containers-storage, like a buildah build
    base = open_image(mini_base.tag)
    assert image.config.diff_ids[:1] == base.config.diff_ids  # base layers byte-identical
    assert image.manifest.annotations["org.opencontainers.image.base.digest"] == base.digest
    assert result.report is not None and result.report.passed
    assert [c.path for c in result.report.changes][-1] == "/usr/local/bin/node-ready"
    # and validate alone finds the base from the recorded annotation
    from nestbuild.validation.validate import validate

    assert validate(tag).base is not None


def test_docker_engine_errors(tmp_path: Path, mini_base: BuiltBase, dockerd: str,
                              tag: str) -> None:
    from nestbuild.errors import ToolError

    (tmp_path / "Containerfile").write_text(
        f"FROM {mini_base.tag}\nRUN --mount=type=cache,target=/x true\n")
    with pytest.raises(UsageError, match="needs BuildKit"):
        build(BuildOptions(context=tmp_path, image=tag, engine="docker", docker_host=dockerd))
    (tmp_path / "Containerfile").write_text(f"FROM {mini_base.tag}\nRUN false\n")
    with pytest.raises(BuildFailed):
        build(BuildOptions(context=tmp_path, image=tag, engine="docker", docker_host=dockerd))
    with pytest.raises(ToolError, match="unreachable"):
        build(BuildOptions(context=tmp_path, image=tag, engine="docker",
                           docker_host=f"unix://{tmp_path}/none.sock"))


def test_kernel_profiles_and_trust_are_baked_in(mini_base: BuiltBase, tag: str,
                                                 tmp_path: Path) -> None:
    from nestbuild.signing import keys

    pub = tmp_path / "cosign.pub"
    pub.write_bytes(keys.public_pem(keys.generate()))
    r = nb("build", str(EXAMPLES / "etc-config"), "-t", tag, "--build-arg",
           f"BASE={mini_base.tag}", "--kargs", "container-host", "--kargs", "serial-console",
           "--modules", "container-host", "--trust", "reg.example:5000/nodes/base",
           "--trust-key", str(pub), "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    added = {c["path"] for c in doc["validation"]["changes"]}
    assert {"/usr/lib/bootc/kargs.d/10-container-host.toml",
            "/usr/lib/bootc/kargs.d/20-serial-console.toml",
            "/etc/modules-load.d/nestbuild-container-host.conf",
            "/etc/modprobe.d/nestbuild-container-host.conf",
            "/etc/containers/policy.json",
            "/etc/pki/containers/reg.example-5000-nodes-base.pub"} <= added
    assert doc["passed"] is True  # strict allows kargs.d; module files go to /etc


def test_kernel_profile_errors(tmp_path: Path, mini_base: BuiltBase, tag: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('kargs = ["a"]\nextra = 1\n')
    r = nb("build", str(EXAMPLES / "etc-config"), "-t", tag, "--kargs", str(bad))
    assert r.returncode == 2 and "bad.toml: unknown key(s) extra" in r.stderr
    r = nb("build", str(EXAMPLES / "etc-config"), "-t", tag, "--modules", "nope")
    assert r.returncode == 2 and "no modules profile 'nope'" in r.stderr
