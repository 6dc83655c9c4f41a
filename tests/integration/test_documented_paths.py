"""What README and docs/ tell a new platform engineer to type, run literally as the real CLI:
relative paths, a node whose image has no trust baked in, registry images for validate, diff
and inspect, a build whose base is only in a TLS registry with auth, the documented
Containerfile, keygen into a new directory, and pipes that close early."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nestbuild._registry.access import RegistryAccess
from nestbuild._tools import buildah
from nestbuild.building.baseimage import BuiltBase
from nestbuild.node import deploy
from nestbuild.shipping.upload import upload
from tests.fixtures import cli
from tests.fixtures.cli import nestbuild
from tests.fixtures.images import REPO, unique_tag
from tests.fixtures.registry import Registry
from tests.ocibuilder import Layer, bootable_base, derived, write_image

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.ostree]

PASSWORD = "documented-paths"
ENV = {**os.environ, "NESTBUILD_PASSWORD": PASSWORD}


@pytest.fixture(autouse=True)
def _mutable_tmp(tmp_path: Path) -> Iterator[None]:
    """ostree marks deployment roots immutable; let pytest clean up after us."""
    yield
    subprocess.run(["chattr", "-R", "-i", str(tmp_path)], check=False,
                   stderr=subprocess.DEVNULL)


# -- nodes ----------------------------------------------------------------------------------------


@dataclass
class Signed:
    """Two signed versions of a node image without trust files, and the trust to check them."""

    repo: str
    key: Path
    pub: Path
    trust: Path


def _node_image(root: Path, version: str) -> None:
    os_release = f"ID=documented\nVERSION_ID={version}\n".encode()
    layer = bootable_base(Layer().file("/usr/lib/os-release", os_release))
    etc = Layer().dir("/etc").file("/etc/motd", f"version {version}\n".encode())
    write_image(root, [layer, etc], tag=version)


@pytest.fixture(scope="module")
def signed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Signed:
    root = tmp_path_factory.mktemp("signed")
    repo = f"{registry.host}/documented/{uuid.uuid4().hex[:8]}"
    nestbuild("keygen", "--output-prefix", root / "cosign", env=ENV, check=True)
    for version in ("v1", "v2"):
        _node_image(root / "layout", version)
        upload(f"oci:{root / 'layout'}:{version}", f"{repo}:{version}", quiet=True)
        nestbuild("sign", f"docker://{repo}:{version}", "--key", root / "cosign.key", env=ENV,
                  check=True)
    nestbuild("node", "trust", repo, "--key", root / "cosign.pub", "--out", root / "trust",
              check=True)
    return Signed(repo, root / "cosign.key", root / "cosign.pub", root / "trust")


def _default_etc(sysroot: Path) -> Path:
    d = deploy.deployments(sysroot)[0]
    return sysroot / "ostree" / "deploy" / "nestos" / "deploy" / f"{d.checksum}.{d.serial}" / "etc"


def test_rebase_into_a_relative_sysroot(signed: Signed, tmp_path: Path) -> None:
    """docs/nodes.md and `rebase --help` write --sysroot ./sysroot --trust ./node-trust."""
    (tmp_path / "node-trust").symlink_to(signed.trust)
    r = nestbuild("rebase", f"docker://{signed.repo}:v1", "--via", "ostree", "--sysroot",
                  "./sysroot", "--trust", "./node-trust", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (_default_etc(tmp_path / "sysroot") / "motd").read_text() == "version v1\n"
    r = nestbuild("node", "status", "--sysroot", "sysroot", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [d["image"] for d in json.loads(r.stdout)] == [f"{signed.repo}:v1"]


def test_a_node_deployed_without_baked_trust_is_not_stuck(signed: Signed, tmp_path: Path
                                                          ) -> None:
    """The first deployment of an image without trust files takes --trust; the updates after
    it used to fail ("no policy.json") whatever was passed, --trust silently ignored."""
    sysroot = tmp_path / "sysroot"

    def rebase(tag: str, *extra: str | Path) -> subprocess.CompletedProcess[str]:
        return nestbuild("rebase", f"docker://{signed.repo}:{tag}", "--via", "ostree",
                         "--sysroot", sysroot, "-q", *extra)

    first = rebase("v1", "--trust", signed.trust)
    assert first.returncode == 0, first.stderr
    assert "every later update of this node needs --trust DIR too" in first.stderr
    assert "nestbuild node trust" in first.stderr

    stuck = rebase("v2")
    assert stuck.returncode == 2
    assert "has no /etc/containers/policy.json" in stuck.stderr
    assert f"--sysroot {sysroot}" in stuck.stderr

    # an explicit --trust wins over the deployment's own /etc, and says so
    again = rebase("v2", "--trust", signed.trust)
    assert again.returncode == 0, again.stderr
    assert f"trust from --trust {signed.trust}, not from the default deployment" in again.stderr
    assert (_default_etc(sysroot) / "motd").read_text() == "version v2\n"

    # the way out: the trust written into the default deployment's /etc
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {}}))
    r = nestbuild("node", "trust", signed.repo, "--key", signed.pub, "--authfile", authfile,
                  "--sysroot", sysroot, "--format", "json")
    assert r.returncode == 0, r.stderr
    etc = _default_etc(sysroot)
    assert sorted(json.loads(r.stdout)["files"]) == sorted(
        str(p) for p in [etc / "containers/policy.json", etc / "ostree/auth.json",
                         *(etc / "containers/registries.d").glob("*.yaml"),
                         *(etc / "pki/containers").glob("*.pub")])
    assert stat.S_IMODE((etc / "containers/policy.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((etc / "ostree/auth.json").stat().st_mode) == 0o600
    assert not list(etc.rglob("*.nestbuild-tmp"))

    update = rebase("v1", "--format", "json")
    assert update.returncode == 0, update.stderr
    assert json.loads(update.stdout)["trust"].startswith("the default deployment's /etc")
    assert "needs --trust" not in update.stderr  # the trust came along into the new /etc

    # --trust still wins: another key's trust refuses what the node's own /etc accepts
    other = tmp_path / "other"
    nestbuild("keygen", "--output-prefix", other, env=ENV, check=True)
    nestbuild("node", "trust", signed.repo, "--key", f"{other}.pub", "--out",
              tmp_path / "other-trust", check=True)
    refused = rebase("v2", "--trust", tmp_path / "other-trust")
    assert refused.returncode == 1, refused.stderr
    assert "refused" in refused.stderr


def test_node_trust_into_a_sysroot_refuses_a_symlinked_etc(signed: Signed, tmp_path: Path
                                                           ) -> None:
    """Beneath the deployment's root: an /etc/containers that is a symlink is refused, and
    nothing is written through it."""
    sysroot = tmp_path / "sysroot"
    r = nestbuild("rebase", f"docker://{signed.repo}:v1", "--via", "ostree", "--sysroot",
                  sysroot, "--trust", signed.trust, "-q")
    assert r.returncode == 0, r.stderr
    etc = _default_etc(sysroot)
    outside = tmp_path / "outside"
    outside.mkdir()
    (etc / "containers").symlink_to(outside)
    r = nestbuild("node", "trust", signed.repo, "--key", signed.pub, "--sysroot", sysroot)
    assert r.returncode == 2
    assert "/etc/containers: a symlink where a directory is needed" in r.stderr
    assert list(outside.iterdir()) == []
    assert not (etc / "pki" / "containers").exists()


@pytest.mark.parametrize("via", ["bootc", "rpm-ostree"])
def test_rebase_a_docker_reference_with_the_node_tools(signed: Signed, via: str) -> None:
    """`nestbuild rebase docker://HOST/REPO:TAG --via bootc|rpm-ostree` (it once became
    docker://docker://)."""
    r = nestbuild("rebase", f"docker://{signed.repo}:v1", "--via", via, "--dry-run",
                  "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    pinned = f"{signed.repo}@{doc['digest']}"
    if via == "bootc":
        assert doc["command"][-2:] == ["registry", pinned]
    else:
        assert doc["command"][-1] == f"ostree-image-signed:docker://{pinned}"
    assert "docker://docker://" not in r.stdout + r.stderr


# -- validate, diff and inspect ------------------------------------------------------------------


@dataclass
class Images:
    """A base and two derived images, in an OCI layout and in a TLS registry with auth."""

    layout: Path
    repo: str
    access: list[str]


@pytest.fixture(scope="module")
def images(tls_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Images:
    root = tmp_path_factory.mktemp("images")
    layout = root / "layout"
    base = [bootable_base(Layer().file("/usr/lib/os-release", b"ID=documented\n"))]
    derived(layout, base, [Layer().dir("/etc").file("/etc/motd", b"managed\n")], tag="good")
    write_image(layout, [*base, Layer().dir("/usr/bin").file("/usr/bin/agent", b"x", 0o755)],
                tag="bad")
    authfile = root / "auth.json"
    authfile.write_text(json.dumps(tls_registry.auth_json()))
    repo = f"{tls_registry.host}/documented/{uuid.uuid4().hex[:8]}"
    access = RegistryAccess(authfile=authfile, cert_dir=tls_registry.cert_dir)
    for tag in ("base", "good", "bad"):
        upload(f"oci:{layout}:{tag}", f"{repo}:{tag}", access=access, quiet=True)
    return Images(layout, repo, ["--authfile", str(authfile), "--cert-dir",
                                 str(tls_registry.cert_dir)])


def test_validate_diff_and_inspect_reach_a_tls_registry_with_auth(images: Images) -> None:
    """docker:// images in a registry that needs a CA and credentials: the flags the TLS
    error names are accepted by every command that reads docker://."""
    good, base = f"docker://{images.repo}:good", f"docker://{images.repo}:base"
    untrusted = nestbuild("validate", good, "--base", base)
    assert untrusted.returncode == 2
    assert "--cert-dir" in untrusted.stderr  # the advice ...
    r = nestbuild("validate", good, "--base", base, "--format", "json", *images.access)
    assert r.returncode == 0, r.stderr  # ... is an option validate takes
    assert json.loads(r.stdout)["passed"] is True
    r = nestbuild("validate", f"docker://{images.repo}:bad", "--base", base, "-q",
                  *images.access)
    assert r.returncode == 1, r.stderr
    r = nestbuild("diff", base, good, "--format", "json", *images.access)
    assert r.returncode == 0, r.stderr
    assert [c["path"] for c in json.loads(r.stdout)["changes"]] == ["/etc/motd"]
    r = nestbuild("inspect", good, "--format", "json", *images.access)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bootable"] is True
    r = nestbuild("validate", good, "--base", base, "--tls-verify", "false", "-q",
                  "--authfile", images.access[1])
    assert r.returncode == 0, r.stderr


# -- a reader that closes early -------------------------------------------------------------------


def _into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """``nestbuild ARGS | head -0``: the reader is gone before the first line is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([*cli.COMMAND, *args], stdout=write, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, timeout=300, check=False)
    finally:
        os.close(write)


@pytest.mark.parametrize("fmt", ["table", "json", "sarif"])
def test_a_closed_reader_keeps_the_verdict(images: Images, fmt: str) -> None:
    """`nestbuild validate IMG | head -1` under `set -o pipefail`: a good image is still 0 and
    a refused one still 1 (it was 1 for both, or 0 for both)."""
    base = f"oci:{images.layout}:base"
    good = _into_closed_pipe("validate", f"oci:{images.layout}:good", "--base", base,
                             "--format", fmt, "-q")
    assert good.returncode == 0, good.stderr
    assert "Traceback" not in good.stderr and "Broken pipe" not in good.stderr
    bad = _into_closed_pipe("validate", f"oci:{images.layout}:bad", "--base", base,
                            "--format", fmt, "-q")
    assert bad.returncode == 1, bad.stderr
    if fmt != "sarif":
        shown = _into_closed_pipe("diff", base, f"oci:{images.layout}:good", "--format", fmt)
        assert shown.returncode == 0, shown.stderr


def test_validate_piped_to_head_in_a_pipefail_shell(images: Images) -> None:
    """What a CI job writes, literally."""
    cmd = " ".join([*cli.COMMAND, "validate", f"oci:{images.layout}:good", "--base",
                    f"oci:{images.layout}:base"])
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -1"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr


# -- the documented Containerfile, and what buildah calls a comment --------------------------------


def _first_dockerfile_block(doc: Path) -> str:
    text = doc.read_text()
    start = text.index("```Dockerfile\n") + len("```Dockerfile\n")
    return text[start:text.index("```", start)]


def _build(context: Path, base: str) -> subprocess.CompletedProcess[str]:
    tag = unique_tag(context.name)
    try:
        return nestbuild("build", context, "-t", tag, "--build-arg", f"BASE={base}",
                         "--no-validate", "-q", "--format", "json")
    finally:
        buildah.remove_image(tag)


def test_the_containerfile_guide_example_builds(mini_base: BuiltBase, tmp_path: Path) -> None:
    """docs/containerfile.md's first example, as written (on the mini base)."""
    (tmp_path / "Containerfile").write_text(_first_dockerfile_block(
        REPO / "docs" / "containerfile.md"))
    (tmp_path / "motd").write_text("managed by the platform team\n")
    (tmp_path / "90-host.conf").write_text("vm.swappiness = 10\n")
    r = _build(tmp_path, mini_base.tag)
    assert r.returncode == 0, r.stderr


BUILDAH_COMMENTS = {
    "blank-line-in-continuation": "ARG BASE\nFROM ${BASE}\nRUN echo a \\\n\n   \n  > /etc/x\n",
    "comment-in-continuation": "ARG BASE\nFROM ${BASE}\nRUN echo a \\\n  # a comment\n"
                               "  > /etc/x\n",
    "indented-comment": "ARG BASE\n   # indented\nFROM ${BASE}\n\t# tab\nRUN true\n",
    "escape-directive": "# escape=`\nARG BASE\nFROM ${BASE}\nRUN echo a `\n  > /etc/x\n",
}


@pytest.mark.parametrize("name", sorted(BUILDAH_COMMENTS))
def test_containerfile_comments_as_buildah_reads_them(mini_base: BuiltBase, tmp_path: Path,
                                                     name: str) -> None:
    """Containerfiles buildah builds: nestbuild's own reading (the base, before the build)
    must not refuse them."""
    (tmp_path / "Containerfile").write_text(BUILDAH_COMMENTS[name])
    r = _build(tmp_path, mini_base.tag)
    assert r.returncode == 0, r.stderr


def test_a_trailing_comment_after_from_is_explained(mini_base: BuiltBase, tmp_path: Path
                                                   ) -> None:
    (tmp_path / "Containerfile").write_text("ARG BASE\nFROM ${BASE}   # the base\n")
    r = _build(tmp_path, mini_base.tag)
    assert r.returncode == 2
    assert "a # after an instruction is not a comment" in r.stderr


def test_keygen_into_a_new_directory(tmp_path: Path) -> None:
    """docs/signing.md's first command: keys/ does not exist yet."""
    r = nestbuild("keygen", "--output-prefix", "keys/release", env=ENV, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "keys/release.key").stat().st_mode) == 0o600
    assert (tmp_path / "keys/release.pub").is_file()
    (tmp_path / "file").write_text("")
    r = nestbuild("keygen", "--output-prefix", "file/release", env=ENV, cwd=tmp_path)
    assert r.returncode == 2 and "file is not a directory" in r.stderr


# -- build on a base that is only in a registry ----------------------------------------------------


@dataclass
class RemoteBase:
    """The mini base pushed to a TLS registry with auth, under a name local storage lacks."""

    name: str
    authfile: Path
    cert_dir: Path
    registry: Registry


@pytest.fixture
def remote_base(tls_registry: Registry, mini_base: BuiltBase, tmp_path: Path
                ) -> Iterator[RemoteBase]:
    unique = uuid.uuid4().hex[:8]
    name = f"{tls_registry.host}/bases/mini-{unique}:v1"
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps(tls_registry.auth_json()))
    # an image of its own (the mini base's id is shared by every local name of it, whose
    # manifests other builds rewrite), gone from local storage once pushed
    local = unique_tag("remote-base")
    with buildah.working_container(mini_base.tag) as ctr:
        buildah.config(ctr, labels={"nestbuild.test.base": unique})
        buildah.commit(ctr, local)
    try:
        upload(f"containers-storage:{local}", name, quiet=True,
               access=RegistryAccess(authfile=authfile, cert_dir=tls_registry.cert_dir))
    finally:
        buildah.remove_image(local)
    assert not buildah.image_exists(name)
    yield RemoteBase(name, authfile, tls_registry.cert_dir, tls_registry)
    buildah.remove_image(name)


def _context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text("ARG BASE\nFROM ${BASE}\nCOPY motd /etc/motd\n")
    (ctx / "motd").write_text("pulled base\n")
    return ctx


def test_build_pulls_a_missing_base_from_a_tls_registry_with_auth(remote_base: RemoteBase,
                                                                  tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    tag, extra = unique_tag("pulled"), unique_tag("pulled-extra")
    base = ["--build-arg", f"BASE={remote_base.name}"]
    try:
        never = nestbuild("build", ctx, "-t", tag, *base, "--pull=never", "-q")
        assert never.returncode == 2
        assert "is not in local storage (--pull=never" in never.stderr
        no_access = nestbuild("build", ctx, "-t", tag, *base, "-q")
        assert no_access.returncode == 2
        assert "could not be pulled" in no_access.stderr and "--cert-dir" in no_access.stderr

        iid = tmp_path / "iid"
        r = nestbuild("build", ctx, "-t", tag, "-t", extra, *base, "--authfile",
                      remote_base.authfile, "--cert-dir", remote_base.cert_dir,
                      "--iidfile", iid, "--format", "json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["passed"] is True and doc["base"]["name"] == remote_base.name
        assert buildah.image_exists(remote_base.name) and buildah.image_exists(extra)
        assert iid.read_text() == f"sha256:{doc['image_id']}"
        r = nestbuild("inspect", extra, "--format", "json")
        assert r.returncode == 0, r.stderr
    finally:
        buildah.remove_image(extra)
        buildah.remove_image(tag)


def test_build_creds_reach_the_base_without_an_authfile(remote_base: RemoteBase,
                                                        tmp_path: Path) -> None:
    """--creds USER:PASSWORD, as buildah takes them; the password is on no command line but
    nestbuild's own."""
    reg = remote_base.registry
    ctx = _context(tmp_path)
    tag = unique_tag("creds")
    env = {k: v for k, v in ENV.items() if k != "REGISTRY_AUTH_FILE"}
    try:
        r = nestbuild("build", ctx, "-t", tag, "--build-arg", f"BASE={remote_base.name}",
                      "--creds", f"{reg.username}:{reg.password}", "--cert-dir",
                      remote_base.cert_dir, "--pull=always", "-q", env=env)
        assert r.returncode == 0, r.stderr
        assert str(reg.password) not in r.stdout + r.stderr
    finally:
        buildah.remove_image(tag)


def test_ci_pipeline_on_a_runner_without_the_base(remote_base: RemoteBase,
                                                  tmp_path: Path) -> None:
    """docs/ci/pipeline.sh, as the CI files run it, with the base only in the TLS registry
    the job logs in to: build pulls it with the job's registry flags and credentials."""
    from tests.integration.test_ci_pipeline import Run

    run = Run(remote_base.registry, remote_base.name, tmp_path)
    try:
        proc = run.pipeline("etc-config")
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log
        run.assert_no_secret_in(log)
        assert json.loads((run.out / "build.json").read_text())["base"]["name"] == \
            remote_base.name
    finally:
        buildah.remove_image(run.local)
