"""What validate takes on trust, it must prove: the base an image records, each layer's bytes,
and that a node would accept every entry. Each test is an image that slipped past before."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nestbuild._image import open_image
from nestbuild._image.layout import LayoutWriter
from nestbuild._image.model import ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME, Descriptor
from nestbuild._tools import run
from nestbuild.building.baseimage import BuiltBase
from nestbuild.shipping.upload import upload as push
from tests.fixtures.cli import nestbuild as nb
from tests.fixtures.images import unique_tag
from tests.fixtures.registry import Registry
from tests.ocibuilder import BOOTABLE, LAYER_TAR, Layer, bootable_base, derived, write_image

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.buildah, pytest.mark.podman]

PEM_KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAA\\n"
           "-----END OPENSSH PRIVATE KEY-----\\n")


def validate_json(*args: str) -> tuple[int, dict[str, object] | None, str]:
    r = nb("validate", "-q", "--format", "json", *args)
    return r.returncode, json.loads(r.stdout) if r.stdout else None, r.stderr


def rules_of(doc: dict[str, object] | None) -> set[tuple[str, str, str | None]]:
    assert doc is not None
    return {(f["rule"], f["severity"], f["path"])  # type: ignore[index]
            for f in doc["findings"]}  # type: ignore[attr-defined]


# --- 1. the base a layered build records ---------------------------------------------------

def bad_containerfile(base: str) -> str:
    """Several steps (a layered build commits an intermediate image after each), writing
    /usr/local/bin and baking a private key into /etc. A fresh marker defeats the layer cache
    of earlier runs, so the build really runs its steps."""
    return (f"FROM {base}\n"
            f"RUN echo {uuid.uuid4().hex} > /etc/build-marker\n"
            "RUN mkdir -p /usr/local/bin && echo 'echo x' > /usr/local/bin/x "
            "&& chmod 755 /usr/local/bin/x\n"
            f"RUN printf -- '{PEM_KEY}' > /etc/node.key\n"
            "RUN echo node > /etc/motd\n")


@pytest.fixture
def new_tag() -> Iterator[Callable[[], str]]:
    """Fresh image names, removed at the end with the intermediate images only they use."""
    made: list[str] = []

    def new() -> str:
        made.append(unique_tag("layered"))
        return made[-1]

    yield new
    for tag in reversed(made):  # podman removes a build's dangling intermediates with it
        run.run(["podman", "rmi", tag], check=False)


def assert_not_passed_on_an_intermediate(tag: str, base: str) -> None:
    image = open_image(f"containers-storage:{tag}")
    recorded = image.manifest.annotations[ANNOTATION_BASE_DIGEST]
    assert recorded != open_image(f"containers-storage:{base}").digest  # the engines' record
    # the FROM image by one of its names (the store may know the same image by several, e.g.
    # when `nestbuild base build mini` made it too: the engine records the first)
    named = open_image(f"containers-storage:{image.manifest.annotations[ANNOTATION_BASE_NAME]}")
    assert named.digest == open_image(f"containers-storage:{base}").digest

    code, doc, err = validate_json(f"containers-storage:{tag}")
    assert code == 2 and doc is None, err
    (line,) = err.strip().splitlines()
    assert "cannot confirm its recorded base" in line and "--base" in line

    code, doc, err = validate_json(f"containers-storage:{tag}", "--base", base)
    assert code == 1, err
    assert {("secret", "error", "/etc/node.key"),
            ("path-policy", "error", "/usr/local")} <= rules_of(doc)


def test_a_layered_podman_build_is_not_validated_against_its_intermediate_image(
        tmp_path: Path, mini_base: BuiltBase, new_tag: Callable[[], str]) -> None:
    layered_tag = new_tag()
    (tmp_path / "Containerfile").write_text(bad_containerfile(mini_base.tag))
    run.run(["podman", "build", "--isolation", "chroot", "--pull=never", "-t", layered_tag,
             str(tmp_path)], what="podman build")
    assert_not_passed_on_an_intermediate(layered_tag, mini_base.tag)


def test_a_buildah_layers_build_is_not_validated_against_its_intermediate_image(
        tmp_path: Path, mini_base: BuiltBase, new_tag: Callable[[], str]) -> None:
    layered_tag = new_tag()
    (tmp_path / "Containerfile").write_text(bad_containerfile(mini_base.tag))
    run.run(["buildah", "bud", "--layers", "--isolation", "chroot", "--pull-never",
             "-t", layered_tag, str(tmp_path)], what="buildah bud --layers")
    assert_not_passed_on_an_intermediate(layered_tag, mini_base.tag)


def test_nestbuild_build_layers_records_the_real_base(tmp_path: Path, mini_base: BuiltBase,
                                                       new_tag: Callable[[], str]) -> None:
    layered_tag = new_tag()
    good = (f"FROM {mini_base.tag}\nRUN echo {uuid.uuid4().hex} > /etc/build-marker\n"
            "RUN echo node > /etc/motd\nRUN mkdir -p /etc/app && echo x > /etc/app/conf\n")
    (tmp_path / "Containerfile").write_text(good)
    r = nb("build", str(tmp_path), "--layers", "-t", layered_tag, "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["passed"] is True and doc["validation"]["base"]["layers"] == 1
    base = open_image(f"containers-storage:{mini_base.tag}")
    image = open_image(f"containers-storage:{layered_tag}")
    assert len(image.config.diff_ids) == 4  # one layer per step: really layered
    assert image.manifest.annotations[ANNOTATION_BASE_DIGEST] == base.digest
    # so validate (and push) alone find the base again
    code, report, err = validate_json(layered_tag)
    assert code == 0, err
    assert report is not None and report["base"]["found_by"] == "annotation"  # type: ignore[index]

    (tmp_path / "Containerfile").write_text(bad_containerfile(mini_base.tag))
    r = nb("build", str(tmp_path), "--layers", "-t", new_tag(), "--format", "json")
    assert r.returncode == 1, r.stderr
    assert {"secret", "path-policy"} <= {f["rule"] for f in
                                         json.loads(r.stdout)["validation"]["findings"]}


def test_nestbuild_build_layers_records_the_base_of_an_image_from_the_layer_cache(
        tmp_path: Path, mini_base: BuiltBase, new_tag: Callable[[], str]) -> None:
    (tmp_path / "Containerfile").write_text(bad_containerfile(mini_base.tag))
    plain, layered_tag = new_tag(), new_tag()
    run.run(["buildah", "bud", "--layers", "--isolation", "chroot", "--pull-never",
             "-t", plain, str(tmp_path)], what="buildah bud --layers")
    # every step is in the layer cache now, the last one recorded on an intermediate image
    r = nb("build", str(tmp_path), "--layers", "-t", layered_tag, "--format", "json")
    assert r.returncode == 1, r.stderr
    cached = open_image(f"containers-storage:{plain}").config.diff_ids
    assert open_image(f"containers-storage:{layered_tag}").config.diff_ids[:-1] == cached
    code, doc, err = validate_json(layered_tag)
    assert code == 1, err
    assert ("secret", "error", "/etc/node.key") in rules_of(doc)


def intermediate_layout(root: Path, base_name: str = "example.com/base:base",
                        **labels: str) -> tuple[str, str, str]:
    """A base, an intermediate image (a layered build's first step: /usr/local/bin/x) and the
    final image (/etc/motd on top), recorded on the intermediate under the base's name."""
    base_layer = bootable_base()
    step = Layer().dir("/usr/local").dir("/usr/local/bin").file("/usr/local/bin/x", b"x", 0o755)
    last = Layer().file("/etc/motd", b"node\n")
    write_image(root, [base_layer], tag="base")
    inter = write_image(root, [base_layer, step], tag="intermediate")
    write_image(root, [base_layer, step, last], tag="final", labels={**BOOTABLE, **labels},
                annotations={ANNOTATION_BASE_DIGEST: inter.digest,
                             ANNOTATION_BASE_NAME: base_name})
    return f"oci:{root}:base", f"oci:{root}:intermediate", f"oci:{root}:final"


def test_a_record_whose_name_is_another_image_is_unusable(tmp_path: Path) -> None:
    base, _, final = intermediate_layout(tmp_path)
    code, doc, err = validate_json(final)
    assert code == 2 and doc is None
    (line,) = err.strip().splitlines()
    assert "example.com/base:base is sha256:" in line and "--base" in line
    code, doc, err = validate_json(final, "--base", base)
    assert code == 1 and ("path-policy", "error", "/usr/local") in rules_of(doc), err


def test_in_a_registry_the_record_must_resolve_there_too(tmp_path: Path,
                                                         registry: Registry) -> None:
    repo = f"{registry.host}/test/{uuid.uuid4().hex[:10]}"
    base, inter, final = intermediate_layout(tmp_path, base_name=f"{repo}:base")
    _, good = derived(tmp_path / "good", [bootable_base()], [Layer().file("/etc/a", b"a")])
    good_m = open_image(good)
    for ref, tag in ((base, "base"), (inter, "intermediate"), (final, "final")):
        push(ref, f"{repo}:{tag}", quiet=True)  # the same manifest bytes: the same digests
    code, doc, err = validate_json(f"docker://{repo}:final")
    assert code == 2 and f"{repo}:base is sha256:" in err and "--base" in err, err
    # a record whose name is the pushed base is confirmed in the registry
    assert good_m.manifest.annotations[ANNOTATION_BASE_NAME] == "example.com/base:base"
    w = LayoutWriter(tmp_path / "good")
    renamed = w.add_image(list(good_m.manifest.layers), good_m.config.diff_ids, labels=BOOTABLE,
                          tag="renamed", annotations={
                              ANNOTATION_BASE_DIGEST: open_image(base).digest,
                              ANNOTATION_BASE_NAME: f"{repo}:base"})
    push(f"oci:{tmp_path / 'good'}:renamed", f"{repo}:renamed", quiet=True)
    code, doc, err = validate_json(f"docker://{repo}@{renamed.digest}")
    assert code == 0, err
    assert doc is not None and doc["base"]["found_by"] == "annotation"  # type: ignore[index]


def test_final_diffid_takes_over_from_a_record_that_cannot_be_confirmed(tmp_path: Path) -> None:
    final_diffid = sha(bootable_base().tar())
    _, _, final = intermediate_layout(tmp_path, **{"ostree.final-diffid": final_diffid})
    code, doc, err = validate_json(final)
    assert code == 1, err
    assert doc is not None and doc["base"]["found_by"] == "ostree.final-diffid"  # type: ignore[index]
    assert ("path-policy", "error", "/usr/local") in rules_of(doc)


def test_a_label_that_ends_the_base_sooner_wins_over_a_confirmed_record(tmp_path: Path) -> None:
    """The record names an image that itself carries no ostree.final-diffid: the label the
    image adds ends the base sooner, and the stricter split is taken."""
    base_layer, step = bootable_base(), Layer().dir("/usr/local").file("/usr/local/y", b"y")
    final_diffid = sha(base_layer.tar())
    recorded = write_image(tmp_path, [base_layer, step], tag="base")
    write_image(tmp_path, [base_layer, step, Layer().file("/etc/motd", b"m\n")], tag="final",
                labels={**BOOTABLE, "ostree.final-diffid": final_diffid},
                annotations={ANNOTATION_BASE_DIGEST: recorded.digest,
                             ANNOTATION_BASE_NAME: "example.com/base:base"})
    code, doc, err = validate_json(f"oci:{tmp_path}:final")
    assert code == 1, err
    assert doc is not None and doc["base"]["layers"] == 1  # type: ignore[index]
    assert ("path-policy", "error", "/usr/local") in rules_of(doc)


# --- 2. layer bytes against their digests --------------------------------------------------

def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layout_with(root: Path, stored: bytes, *, diff_id: str, name: str | None = None,
                media_type: str = LAYER_TAR) -> str:
    """A base and an image on it whose last layer's blob holds ``stored`` under the digest
    ``name`` (default: its own), with ``diff_id`` for it in the config."""
    w = LayoutWriter(root)
    base = w.add_bytes(bootable_base().tar(), LAYER_TAR)
    base_manifest = w.add_image([base], [base.digest], labels=BOOTABLE, tag="base")
    digest = name or sha(stored)
    w.blob_path(digest).write_bytes(stored)
    w.add_image([base, Descriptor(media_type, digest, len(stored))], [base.digest, diff_id],
                labels=BOOTABLE, tag="image",
                annotations={ANNOTATION_BASE_DIGEST: base_manifest.digest,
                             ANNOTATION_BASE_NAME: "example.com/base:base"})
    return f"oci:{root}:image"


def archive(layout: str, dest: Path) -> str:
    """The same layout as an oci-archive (blobs read through windows of one tar file)."""
    root, _, tag = layout.removeprefix("oci:").rpartition(":")
    with tarfile.open(dest, "w") as tf:
        for path in sorted(Path(root).rglob("*")):
            tf.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return f"oci-archive:{dest}:{tag}"


GOOD = Layer().file("/etc/motd", b"fine\n").tar()
OTHER = Layer().file("/etc/motd", b"fine\n").file("/usr/bin/tool", b"evil", 0o755).tar()


def assert_unusable(ref: str, *words: str) -> None:
    code, doc, err = validate_json(ref)
    assert code == 2 and doc is None, (code, err)
    (line,) = err.strip().splitlines()
    assert "layer 1" in line, line
    for word in words:
        assert word in line, line


def test_a_good_layout_passes(tmp_path: Path) -> None:
    assert validate_json(layout_with(tmp_path / "l", GOOD, diff_id=sha(GOOD)))[0] == 0
    ref = layout_with(tmp_path / "g", gzip.compress(GOOD, mtime=0), diff_id=sha(GOOD),
                      media_type=LAYER_TAR + "+gzip")
    assert validate_json(ref)[0] == 0
    assert validate_json(archive(ref, tmp_path / "g.tar"))[0] == 0


@pytest.mark.parametrize("as_archive", [False, True])
def test_an_uncompressed_layer_stored_under_another_digest_is_unusable(
        tmp_path: Path, as_archive: bool) -> None:
    assert len(OTHER) == len(GOOD)  # the size is right: only the bytes are not
    ref = layout_with(tmp_path / "l", OTHER, name=sha(GOOD), diff_id=sha(GOOD))
    if as_archive:
        ref = archive(ref, tmp_path / "image.tar")
    assert_unusable(ref, "blob digest")


@pytest.mark.parametrize("as_archive", [False, True])
def test_a_compressed_layer_whose_content_is_not_its_diff_id_is_unusable(
        tmp_path: Path, as_archive: bool) -> None:
    # the blob is the digest the manifest names; the config claims other content's diff_id
    ref = layout_with(tmp_path / "l", gzip.compress(OTHER, mtime=0), diff_id=sha(GOOD),
                      media_type=LAYER_TAR + "+gzip")
    if as_archive:
        ref = archive(ref, tmp_path / "image.tar")
    assert_unusable(ref, "diff_id")


def test_an_uncompressed_layer_whose_config_names_another_diff_id_is_unusable(
        tmp_path: Path) -> None:
    assert_unusable(layout_with(tmp_path / "l", GOOD, diff_id=sha(OTHER)), "diff_id")


def test_a_cached_base_index_is_no_proof_for_another_blob(tmp_path: Path) -> None:
    """Once the base is indexed, its layers are not read again: an image whose base layer is
    a different blob claiming the same diff_id must still be refused."""
    evil_tar = bootable_base(Layer().file("/usr/bin/backdoor", b"x", 0o4755)).tar()
    diff_id = sha(bootable_base().tar())
    _, good = derived(tmp_path / "good", [bootable_base()], [Layer().file("/etc/a", b"a")])
    assert validate_json(good)[0] == 0  # indexes the base (diff_id -> tree) in the cache
    w = LayoutWriter(tmp_path / "evil")
    evil = w.add_bytes(gzip.compress(evil_tar, mtime=0), LAYER_TAR + "+gzip")
    top = Layer().file("/etc/a", b"a").tar()
    top_desc = w.add_bytes(top, LAYER_TAR)
    w.add_image([evil, top_desc], [diff_id, top_desc.digest], labels={
        **BOOTABLE, "ostree.final-diffid": diff_id}, tag="image")
    code, _, err = validate_json(f"oci:{tmp_path / 'evil'}:image")
    assert code == 2 and "layer 0" in err and "diff_id" in err, err


# --- 3. what a node refuses ----------------------------------------------------------------

LENIENT = "extends: permissive\nrules:\n  unsafe-path: off\n  utf8: off\n"


def fifo(layer: Layer, path: str) -> Layer:
    ti = tarfile.TarInfo(path.lstrip("/"))
    ti.type, ti.mode = tarfile.FIFOTYPE, 0o644
    layer.members.append((ti, None))
    return layer


def node_refusals(tmp_path: Path, derived_layers: list[Layer], *,
                  base_extra: Layer | None = None) -> set[str]:
    """The paths of the unsafe-path findings, all errors under a policy that turns the rule
    off (it cannot: a node refuses the image for them)."""
    _, image = derived(tmp_path / "l", [bootable_base(base_extra)], derived_layers)
    policy = tmp_path / "lenient.yaml"
    policy.write_text(LENIENT)
    code, doc, err = validate_json(image, "--policy", str(policy))
    assert code == 1, err
    assert doc is not None
    found = [f for f in doc["findings"] if f["rule"] == "unsafe-path"]  # type: ignore[attr-defined]
    assert {f["severity"] for f in found} == {"error"}
    return {f["path"] for f in found}


def test_a_fifo_is_refused(tmp_path: Path) -> None:
    assert node_refusals(tmp_path, [fifo(Layer(), "/etc/pipe")]) == {"/etc/pipe"}


def test_a_whiteout_of_the_parent_directory_is_refused(tmp_path: Path) -> None:
    layer = Layer().dir("/etc/sub").file("/etc/sub/.wh...")
    assert node_refusals(tmp_path, [layer]) == {"/etc/sub/.wh..."}


def test_an_entry_through_a_symlink_of_the_derived_layers_is_refused(tmp_path: Path) -> None:
    first = Layer().symlink("/etc/conf", "../usr/lib")
    second = Layer().file("/etc/conf/evil.so", b"x")
    assert node_refusals(tmp_path, [first, second]) == {"/etc/conf/evil.so"}


def test_an_entry_through_a_base_symlink_is_refused(tmp_path: Path) -> None:
    # the base has /bin -> usr/bin; its index remembers it for the next validate too
    layer = Layer().file("/bin/evil", b"x", 0o755)
    assert node_refusals(tmp_path, [layer]) == {"/bin/evil"}
    assert node_refusals(tmp_path / "again", [layer]) == {"/bin/evil"}


def test_what_the_base_has_that_a_node_refuses_is_reported_every_time(tmp_path: Path) -> None:
    base_extra = fifo(Layer(), "/etc/initctl")
    for attempt in ("cold", "cached"):
        got = node_refusals(tmp_path / attempt, [Layer().file("/etc/motd", b"x")],
                            base_extra=base_extra)
        assert got == {"/etc/initctl"}, attempt
