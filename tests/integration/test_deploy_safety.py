"""Hostile images against a real ostree sysroot: deploy runs as root over trees whose names and
symlinks the image chose, and must neither write outside them nor cache a layer under a
diff_id its content does not have (docs/security.md, "Deploy: what an image can and cannot
do to a node").

Every refusal is checked the same way: one line naming the layer and the path, the sysroot's
deployments, refs and /var as they were, and a "host" directory beside the sysroot (what an
unpacker following the image's symlinks would reach) untouched down to inode times.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nestbuild._image import open_image
from nestbuild._image.layout import LayoutWriter
from nestbuild._tools import ostree
from nestbuild.errors import EXIT_INPUT, NestbuildError
from nestbuild.node import deploy
from nestbuild.signing import keys
from tests.fixtures import cli
from tests.ocibuilder import BOOTABLE, Layer, bootable_base, compress, write_image

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.ostree, pytest.mark.skopeo]

OSNAME = "nestos"
PASSWORD = "safety-passphrase"


@pytest.fixture(autouse=True)
def _mutable_tmp(tmp_path: Path) -> Iterator[None]:
    """ostree marks deployment roots immutable; let pytest clean up after us."""
    yield
    subprocess.run(["chattr", "-R", "-i", str(tmp_path)], check=False,
                   stderr=subprocess.DEVNULL)


def base(trust: Path | None = None) -> Layer:
    """A bootable base; ``trust``: node trust files (`nestbuild node trust --out`) in /etc."""
    extra = Layer().file("/usr/lib/os-release", b"ID=safety\n")
    if trust is not None:
        for p in sorted(trust.rglob("*")):
            rel = "/" + str(p.relative_to(trust))
            if p.is_dir():
                extra.dir(rel)
            else:
                extra.file(rel, p.read_bytes(), mode=p.stat().st_mode & 0o777)
    return bootable_base(extra)


@dataclass
class Node:
    """A sysroot with one deployment, and a host directory an escape would reach."""

    tmp: Path
    sysroot: Path
    host: Path

    @property
    def secret(self) -> Path:
        return self.host / "dir" / "secret"

    @property
    def var(self) -> Path:
        return self.sysroot / "ostree" / "deploy" / OSNAME / "var"

    def image(self, name: str, layers: list[Layer | bytes], **kw: Any) -> str:
        write_image(self.tmp / name, [base(), *layers], **kw)
        return f"oci:{self.tmp / name}"

    def deploy(self, ref: str) -> deploy.Deployment:
        return deploy.deploy_image(open_image(ref), self.sysroot, OSNAME,
                                   origin_ref=f"reg.example/{ref.rsplit('/', 1)[-1]}:v1")

    def state(self) -> tuple[Any, ...]:
        refs = subprocess.run(["ostree", f"--repo={ostree.repo_of(self.sysroot)}", "refs"],
                              capture_output=True, text=True, check=True).stdout
        return (deploy.deployments(self.sysroot), sorted(refs.split()), tree_state(self.var))

    def refuses(self, ref: str, *paths: str, layer: str) -> str:
        """Deploying ``ref`` is refused with one line naming ``layer`` ("2/3") and each of
        ``paths``, and changes nothing."""
        before, host = self.state(), tree_state(self.host)
        with pytest.raises(NestbuildError) as caught:
            self.deploy(ref)
        message = str(caught.value)
        assert message and "\n" not in message, message
        assert f"layer {layer} " in message, message
        for p in paths:
            assert p in message, message
        assert self.state() == before
        assert tree_state(self.host) == host
        return message

    def deployed(self, d: deploy.Deployment) -> Path:
        return self.sysroot / "ostree" / "deploy" / OSNAME / "deploy" / \
            f"{d.checksum}.{d.serial}"


def tree_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything that would show a write, chmod, chown, link or unlink below ``root``."""
    out: dict[str, tuple[Any, ...]] = {}
    for p in [root, *sorted(root.rglob("*"))]:
        s = p.lstat()
        data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
        out[str(p)] = (s.st_mode, s.st_uid, s.st_gid, s.st_nlink, s.st_mtime_ns,
                       s.st_ctime_ns, s.st_ino, hashlib.sha256(data).hexdigest())
    return out


@pytest.fixture
def node(tmp_path: Path) -> Node:
    host = tmp_path / "host"
    (host / "dir" / "sub").mkdir(parents=True)
    (host / "dir" / "secret").write_bytes(b"host secret\n")
    (host / "dir" / "secret").chmod(0o600)
    (host / "dir" / "sub" / "keep").write_bytes(b"keep\n")
    n = Node(tmp_path, tmp_path / "sysroot", host)
    n.deploy(n.image("first", []))
    time.sleep(0.01)  # so that any later change shows in the host's ctimes
    return n


def rel_to_host(node: Node, where: str) -> str:
    """A relative symlink target that climbs out of the tree to ``host/where``."""
    return "../" * 30 + str(node.host / where).lstrip("/")


# -- escapes through the image's own symlinks ---------------------------------------------------


def test_whiteout_through_a_symlink_in_the_same_layer(node: Node) -> None:
    evil = Layer().dir("/etc").symlink("/etc/x", str(node.host / "dir")).whiteout("/etc/x/secret")
    node.refuses(node.image("evil", [evil]), "/etc/x/secret", "/etc/x", layer="2/2")
    assert node.secret.read_bytes() == b"host secret\n"


def test_whiteout_through_a_symlink_of_a_lower_layer(node: Node) -> None:
    link = Layer().dir("/etc").symlink("/etc/x", str(node.host / "dir"))
    node.refuses(node.image("evil", [link, Layer().whiteout("/etc/x/secret")]),
                 "/etc/x/secret", "/etc/x", layer="3/3")


@pytest.mark.parametrize("same_layer", [True, False])
def test_opaque_whiteout_through_a_symlink(node: Node, same_layer: bool) -> None:
    link = Layer().dir("/etc").symlink("/etc/x", str(node.host / "dir"))
    opaque = Layer().opaque("/etc/x")
    layers = [Layer(link.members + opaque.members)] if same_layer else [link, opaque]
    node.refuses(node.image("evil", layers), "/etc/x", layer="2/2" if same_layer else "3/3")
    assert (node.host / "dir" / "sub" / "keep").is_file()


def test_relative_symlink_climbing_out_of_the_tree(node: Node) -> None:
    link = Layer().dir("/etc").symlink("/etc/x", rel_to_host(node, "dir"))
    node.refuses(node.image("evil", [link, Layer().whiteout("/etc/x/secret")]),
                 "/etc/x/secret", layer="3/3")
    node.refuses(node.image("evil2", [link, Layer().opaque("/etc/x")]), "/etc/x", layer="3/3")
    node.refuses(node.image("evil3", [link, Layer().file("/etc/x/planted", b"x")]),
                 "/etc/x/planted", layer="3/3")
    assert sorted(p.name for p in (node.host / "dir").iterdir()) == ["secret", "sub"]


@pytest.mark.parametrize("same_layer", [True, False])
def test_directory_then_symlink_at_one_path_changes_nothing_outside(node: Node,
                                                                    same_layer: bool) -> None:
    """A directory entry (mode 6777) and then a symlink at the same path to a host file: the
    symlink replaces the directory, as tar does, and the directory's mode lands nowhere."""
    d = Layer().dir("/etc").dir("/etc/x", 0o6777)
    s = Layer().symlink("/etc/x", str(node.secret))
    layers = [Layer(d.members + s.members)] if same_layer else [d, s]
    host = tree_state(node.host)
    dep = node.deploy(node.image("evil", layers))
    assert tree_state(node.host) == host
    assert oct(node.secret.stat().st_mode & 0o7777) == oct(0o600)
    assert node.secret.read_bytes() == b"host secret\n"
    link = node.deployed(dep) / "usr" / "etc" / "x"
    assert link.is_symlink() and os.readlink(link) == str(node.secret)


def test_hard_link_below_a_symlinked_parent(node: Node) -> None:
    """A hard link whose parent is a lower layer's symlink would create a file with
    image-chosen content (a lower file's) in a host directory."""
    link = Layer().dir("/etc").symlink("/etc/x", str(node.host / "dir"))
    planted = Layer().hardlink("/etc/x/planted", "/etc/passwd")
    node.refuses(node.image("evil", [link, planted]), "/etc/x/planted", layer="3/3")
    assert not (node.host / "dir" / "planted").exists()


def test_hard_link_to_a_host_file_through_a_symlink(node: Node) -> None:
    """The other direction: a hard link whose target is reached through a symlink would
    take a host file into the image (and link it into the deployment)."""
    link = Layer().dir("/etc").symlink("/etc/x", str(node.host / "dir"))
    grab = Layer().dir("/usr").hardlink("/usr/grabbed", "/etc/x/secret")
    node.refuses(node.image("evil", [link, grab]), "/usr/grabbed", "/etc/x", layer="3/3")
    assert node.secret.stat().st_nlink == 1


# -- entries a node refuses outright -------------------------------------------------------------


def _member(layer: Layer, name: str, kind: bytes) -> Layer:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode = kind, 0o600
    ti.devmajor, ti.devminor = 1, 3
    layer.members.append((ti, None))
    return layer


@pytest.mark.parametrize(("layer", "path", "why"), [
    (_member(Layer().dir("/usr"), "usr/fifo", tarfile.FIFOTYPE), "/usr/fifo", "fifo"),
    (Layer().dir("/usr").device("/usr/null", 1, 3), "/usr/null", "device"),
    (Layer().dir("/etc").dir("/etc/sub").file("/etc/sub/.wh..."), "/etc/sub/.wh...",
     "malformed whiteout"),
    (Layer().file("/usr/etc/x", b"x"), "/usr/etc/x", "/usr/etc"),
])
def test_entries_a_node_refuses(node: Node, layer: Layer, path: str, why: str) -> None:
    message = node.refuses(node.image("evil", [layer]), path, layer="2/2")
    assert why in message


def test_dotdot_whiteout_leaves_the_parent_alone(node: Node) -> None:
    """``etc/sub/.wh...`` would white out ``etc/sub/..``, which is /etc."""
    keep = Layer().dir("/etc").dir("/etc/sub").file("/etc/sub/f", b"f")
    node.refuses(node.image("evil", [keep, Layer().file("/etc/sub/.wh...")]),
                 "/etc/sub/.wh...", layer="3/3")


# -- layer content against its diff_id ----------------------------------------------------------


def _lying_image(root: Path, real: bytes, claimed: bytes, *, trust: Path | None = None,
                 compression: str = "gzip") -> str:
    """An image whose second layer is ``real`` while its config names ``claimed``'s diff_id
    (its blob is what the manifest says: only the uncompressed content lies)."""
    w = LayoutWriter(root)
    b = base(trust).tar()
    descs = [w.add_bytes(*compress(x, compression)) for x in (b, real)]
    diff_ids = ["sha256:" + hashlib.sha256(x).hexdigest() for x in (b, claimed)]
    w.add_image(descs, diff_ids, labels=BOOTABLE, tag="latest")
    return f"oci:{root}"


def test_layer_content_must_match_its_diff_id(node: Node) -> None:
    """A layer cached under a diff_id it does not have would poison every later image that
    shares that diff_id: refused before anything is committed under the ref."""
    honest = Layer().dir("/etc").file("/etc/motd", b"the honest layer\n").tar()
    lying = Layer().dir("/etc").file("/etc/motd", b"planted by a lying image\n").tar()
    diff_id = "sha256:" + hashlib.sha256(honest).hexdigest()
    message = node.refuses(_lying_image(node.tmp / "lying", lying, honest), diff_id,
                           layer="2/2")
    assert "not the diff_id" in message
    repo = ostree.repo_of(node.sysroot)
    assert not ostree.has_ref(repo, deploy.LAYER_REF.format(diff_id.split(":")[1]))

    # uncompressed, the blob's own digest already differs from the diff_id
    before = node.state()
    with pytest.raises(NestbuildError) as caught:
        node.deploy(_lying_image(node.tmp / "plain", lying, honest, compression="none"))
    assert "\n" not in str(caught.value) and diff_id in str(caught.value)
    assert node.state() == before

    good = node.deploy(node.image("honest", [honest]))
    assert (node.deployed(good) / "usr/etc/motd").read_bytes() == b"the honest layer\n"


# -- through the CLI: `nestbuild rebase --via ostree` from a registry ---------------------------


@dataclass
class Fleet:
    host: str
    repo: str
    key: Path
    trust: Path
    tmp: Path

    def push(self, layout: Path, tag: str) -> None:
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                        f"oci:{layout}", f"docker://{self.host}/{self.repo}:{tag}"], check=True)
        r = nestbuild("sign", f"docker://{self.host}/{self.repo}:{tag}", "--key",
                      str(self.key), "--tls-verify", "false")
        assert r.returncode == 0, r.stderr

    def rebase(self, tag: str, sysroot: Path) -> subprocess.CompletedProcess[str]:
        return nestbuild("rebase", f"docker://{self.host}/{self.repo}:{tag}", "--via",
                         "ostree", "--sysroot", str(sysroot), "--trust", str(self.trust),
                         "--tls-verify", "false", "-q")


def nestbuild(*args: str, env: dict[str, str] | None = None) -> cli.Result:
    return cli.nestbuild(*args, env={**os.environ, "NESTBUILD_PASSWORD": PASSWORD, **(env or {})})


@pytest.fixture
def fleet(registry: Any, tmp_path: Path) -> Fleet:
    key, pub = keys.write_key_pair(tmp_path / "cosign", PASSWORD.encode())
    repo = f"safety/{uuid.uuid4().hex[:8]}"
    trust = tmp_path / "trust"
    r = nestbuild("node", "trust", f"{registry.host}/{repo}", "--key", str(pub), "--out",
                  str(trust))
    assert r.returncode == 0, r.stderr
    return Fleet(registry.host, repo, key, trust, tmp_path)


def test_cli_refuses_hostile_images_with_exit_2(fleet: Fleet, node: Node) -> None:
    sysroot = fleet.tmp / "cli-sysroot"
    write_image(fleet.tmp / "good", [base(fleet.trust)])
    fleet.push(fleet.tmp / "good", "good")
    r = fleet.rebase("good", sysroot)
    assert r.returncode == 0, r.stderr
    before = deploy.deployments(sysroot)

    link = Layer().dir("/etc").symlink("/etc/x", str(node.host / "dir"))
    write_image(fleet.tmp / "escape", [base(fleet.trust), link,
                                       Layer().whiteout("/etc/x/secret")])
    fleet.push(fleet.tmp / "escape", "escape")
    honest = Layer().dir("/etc").file("/etc/motd", b"honest\n").tar()
    _lying_image(fleet.tmp / "lying", Layer().dir("/etc").file("/etc/motd", b"lie\n").tar(),
                 honest, trust=fleet.trust)
    fleet.push(fleet.tmp / "lying", "lying")
    host = tree_state(node.host)
    for tag, words in (("escape", ["layer 3/3", "/etc/x/secret"]),
                       ("lying", ["layer 2/2", "not the diff_id"])):
        r = fleet.rebase(tag, sysroot)
        assert r.returncode == EXIT_INPUT, (tag, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert all(w in lines[0] for w in words), lines[0]
        assert deploy.deployments(sysroot) == before
    assert tree_state(node.host) == host


# -- one deploy at a time ---------------------------------------------------------------------

_DEPLOY = """
import sys
from pathlib import Path
from nestbuild.node import deploy
from nestbuild._image import open_image
d = deploy.deploy_image(open_image(sys.argv[1]), Path(sys.argv[2]), "nestos",
                        origin_ref=sys.argv[3], progress=lambda m: print(m, flush=True))
print("deployed", d.digest, flush=True)
"""


def _start(image: str, sysroot: Path, name: str, env: dict[str, str] | None = None
           ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _DEPLOY, image, str(sysroot), name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=Path(__file__).parents[2])


def test_two_deploys_into_one_sysroot_take_turns(tmp_path: Path) -> None:
    big = Layer().dir("/usr").dir("/usr/share")
    for i in range(200):
        big.file(f"/usr/share/f{i}", os.urandom(4096))
    images = []
    for name in ("a", "b"):
        extra = Layer().dir("/etc").file("/etc/motd", f"image {name}\n".encode())
        write_image(tmp_path / name, [base(), big, extra])
        images.append(f"oci:{tmp_path / name}")
    sysroot = tmp_path / "sysroot"
    procs = [_start(img, sysroot, f"reg.example/{n}:v1") for img, n in zip(images, "ab",
                                                                            strict=True)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert any("waiting for another deploy" in out for out, _ in outs), outs
    got = deploy.deployments(sysroot)
    assert sorted(d.image or "" for d in got) == ["reg.example/a:v1", "reg.example/b:v1"]
    assert sorted(d.digest or "" for d in got) == sorted(
        open_image(i).digest for i in images)


def test_a_deploy_that_cannot_get_the_lock_gives_up_and_changes_nothing(
        tmp_path: Path) -> None:
    import fcntl

    write_image(tmp_path / "img", [base()])
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    fd = os.open(sysroot, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        p = _start(f"oci:{tmp_path / 'img'}", sysroot, "reg.example/img:v1",
                   env={deploy.LOCK_TIMEOUT_ENV: "1"})
        out, err = p.communicate(timeout=120)
    finally:
        os.close(fd)
    assert p.returncode != 0
    assert "waiting for another deploy" in out
    assert "another deploy has held it" in err and "unchanged" in err
    assert list(sysroot.iterdir()) == []  # not even initialised


def test_facts_of_a_cached_layer_are_read_back(node: Node) -> None:
    """A config-only update reuses the cached layers (their facts come from the commit)."""
    upper = Layer().dir("/etc").whiteout("/etc/motd").file("/etc/new", b"new\n")
    first = node.deploy(node.image("u1", [upper]))
    assert not (node.deployed(first) / "usr/etc/motd").exists()
    second = node.deploy(node.image("u2", [upper, Layer().file("/etc/newer", b"x")]))
    root = node.deployed(second) / "usr/etc"
    assert not (root / "motd").exists() and (root / "new").is_file()
    facts = json.loads(ostree.cat(ostree.repo_of(node.sysroot), deploy.LAYER_REF.format(
        hashlib.sha256(upper.tar()).hexdigest()), "/nestbuild-layer.json") or b"{}")
    assert facts["whiteouts"] == [["/usr/etc/motd", False]]


@pytest.mark.parametrize("openat2", [True, False])
def test_beneath_never_follows_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         openat2: bool) -> None:
    """The same answers through openat2 and through the component-by-component walk (for
    kernels without it)."""
    from nestbuild._util import beneath

    if not openat2:
        monkeypatch.setattr(beneath._openat2, "_syscall", None)
    host = tmp_path / "host"
    host.mkdir()
    (host / "f").write_bytes(b"host\n")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "l").symlink_to(host)
    (tree / "a" / "r").symlink_to("../" * 10 + str(host).lstrip("/"))
    with beneath.Root(tree) as root:
        for link in ("/a/l", "/a/r"):
            for call in (lambda p: os.close(root.open_dir(p)), root.lstat, root.remove,
                         lambda p: root.read_file(p, 100),
                         lambda p: os.close(root.open_dir(p + "/new", create=True))):
                with pytest.raises(beneath.SymlinkInPath) as caught:
                    call(link + "/f")
                assert caught.value.link == link
            with pytest.raises(beneath.SymlinkInPath):
                root.link(link + "/f", "/a/b/stolen")
            with pytest.raises(beneath.SymlinkInPath):
                root.link("/a/b", link + "/planted")
        assert root.read_file("/a/l", 100) is None  # the link itself is not a file
        root.remove("/a/l")  # removes the link, not what it points to
        fd = root.open_dir("/a/b/c/d", create=True)
        os.close(fd)
    assert (host / "f").read_bytes() == b"host\n" and sorted(os.listdir(host)) == ["f"]
    assert not (tree / "a" / "l").exists() and (tree / "a" / "b" / "c" / "d").is_dir()


# -- validate reports what deploy refuses --------------------------------------------------------


@pytest.mark.parametrize(("layers", "path"), [
    ([Layer().dir("/usr/share").file("/usr/share/data", b"x"),
      Layer().file("/usr/share/data/inner", b"y")], "/usr/share/data/inner"),
    ([Layer().dir("/usr/share").dir("/usr/share/d").hardlink("/usr/share/link", "/usr/share/d")],
     "/usr/share/link"),
    ([Layer().dir("/usr/share").hardlink("/usr/share/link", "/usr/share/nothing")],
     "/usr/share/link"),
], ids=["below-a-file", "hard-link-to-a-directory", "hard-link-to-nothing"])
def test_validate_reports_what_deploy_refuses(node: Node, layers: list[Layer | bytes],
                                              path: str) -> None:
    """One promise, both sides: an image deploy refuses never passes validate."""
    from nestbuild.validation.policy import preset
    from nestbuild.validation.validate import validate

    ref = node.image("evil", layers)
    node.refuses(ref, path, layer=f"{len(layers) + 1}/{len(layers) + 1}")
    report = validate(ref, policy=preset("strict"))
    refused = [f for f in report.findings if f.rule == "unsafe-path" and f.path == path]
    assert refused and all(f.severity == "error" for f in refused), report.findings
    assert not report.passed
