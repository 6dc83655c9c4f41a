"""``nestbuild changelog``: what a reboot from one image into another changes, on real images.

The rpm base's two versions (base-images/rpm/packages.yaml declares what version 2 changes)
checked entry by entry; a Debian-style image pair with dpkg's status and changelogs; OLD read
from a sysroot nestbuild deployed, and from a recorded bootc status document.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import jsonschema
import pytest

from nestbuild import changelog
from nestbuild._image import open_image
from nestbuild._image.reference import ImageRef
from nestbuild._image.registry_source import RegistrySource
from nestbuild._registry.access import RegistryAccess
from nestbuild.building import rpmbase
from nestbuild.node import deploy
from nestbuild.node.changelog import ChangelogError, node_image
from nestbuild.validation import packages
from tests.fixtures.cli import nestbuild
from tests.fixtures.registry import Registry
from tests.ocibuilder import Layer, bootable_base, write_image
from tests.unit.test_nodecmd import bootc_status_json

#: The sysroot case deploys with nestbuild's deploy (ostree).
pytestmark = [pytest.mark.skopeo]

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference"
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "reference" / "schemas" /
                     "changelog.schema.json").read_text())
MAINTAINER = "nestbuild test base <base@nestbuild.invalid>"
#: Version 1 -> 2 of the rpm base: (name, arch, old, new, [(entry version, date, text)]).
UPGRADES = [
    ("crun", "x86_64", "1.17-1", "1.18-1",
     [("1.18-1", "2024-10-22",
       "- Update to 1.18\n- Fix a race when the container exits during exec")]),
    ("glibc", "x86_64", "2.40-3", "2.40-9",
     [("2.40-9", "2024-10-18", "- Fix CVE-2024-33599 (nscd netgroup cache overflow)")]),
    ("kernel-core", "x86_64", "6.11.4-301.nb", "6.11.5-300.nb",
     [("6.11.5-300.nb", "2024-10-22", "- Linux v6.11.5\n- Fix CVE-2024-50047 (smb client)")]),
    ("kernel-modules", "x86_64", "6.11.4-301.nb", "6.11.5-300.nb",
     [("6.11.5-300.nb", "2024-10-22", "- Linux v6.11.5\n- Fix CVE-2024-50047 (smb client)")]),
    ("nestbuild-release", "noarch", "41.1-1", "41.2-1",
     [("41.2-1", "2024-10-15", "- Release 41.2")]),
    ("openssl-libs", "x86_64", "3.2.2-2", "3.2.2-3",
     [("3.2.2-3", "2024-09-04",
       "- Fix CVE-2024-6119 (x509 name checks may read invalid memory)\n"
       "- Fix CVE-2024-9143 (low-level GF(2^m) out-of-bounds access)")]),
    ("tzdata", "noarch", "2024a-9", "2024b-1",
     [("2024b-1", "2024-09-12", "- Update to tzdata-2024b")]),
]


def entry_rows(doc: dict[str, object], change: str) -> list[tuple[object, ...]]:
    pkgs = doc["packages"]
    assert isinstance(pkgs, list)
    return [(p["name"], p["arch"], p["old"], p["new"],
             [(e["version"], e["date"], e["text"]) for e in p["entries"]])
            for p in pkgs if p["change"] == change]


def push(ref: str, dest: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", ref,
                    f"docker://{dest}"], check=True)


def test_rpm_base_v1_to_v2_entry_by_entry(rpm_bases: dict[int, rpmbase.BuiltRpmBase]) -> None:
    v1, v2 = rpm_bases[1].tag, rpm_bases[2].tag
    r = nestbuild("changelog", v1, v2, "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert entry_rows(doc, "upgraded") == [tuple(u) for u in UPGRADES]
    assert entry_rows(doc, "added") == [("jq", "x86_64", None, "1.7.1-6", [])]
    assert entry_rows(doc, "removed") == [("skopeo", "x86_64", "1.16.1-1", None, [])]
    assert entry_rows(doc, "downgraded") == []
    every = [e for p in doc["packages"] for e in p["entries"]]
    assert {e["author"] for e in every} == {f"{MAINTAINER} - {e['version']}" for e in every}
    assert doc["summary"] == {"added": 1, "removed": 1, "upgraded": 7, "downgraded": 0,
                              "etc": len(doc["etc"]), "kernelChanged": True}
    assert doc["kernel"] == {"old": ["6.11.4-301.nb.x86_64"], "new": ["6.11.5-300.nb.x86_64"]}
    assert doc["old"]["packageFormat"] == doc["new"]["packageFormat"] == "rpm-sqlite"
    assert doc["new"]["packages"] == doc["old"]["packages"]  # one added, one removed

    # what a node on v1 downloads: exactly v2's layers that v1 does not have
    old, new = open_image(v1), open_image(v2)
    fresh = [i for i, d in enumerate(new.config.diff_ids) if d not in old.config.diff_ids]
    assert 0 < len(fresh) < len(new.config.diff_ids)
    assert doc["download"] == {
        "layers": len(fresh), "bytes": sum(new.manifest.layers[i].size for i in fresh),
        "totalLayers": len(new.manifest.layers),
        "totalBytes": sum(d.size for d in new.manifest.layers)}

    table = nestbuild("changelog", v1, v2, "-q")
    assert table.returncode == 0, table.stderr
    assert "packages: 7 upgraded, 1 added, 1 removed, 0 downgraded" in table.stdout
    assert "kernel: 6.11.4-301.nb.x86_64 -> 6.11.5-300.nb.x86_64" in table.stdout
    assert "- Fix CVE-2024-50047 (smb client)" in table.stdout
    md = nestbuild("changelog", v1, v2, "--format", "markdown")
    assert md.returncode == 0, md.stderr
    assert "| upgraded | openssl-libs (x86\\_64) | 3.2.2-2 | 3.2.2-3 |" in md.stdout
    assert "<details><summary>kernel-core 6.11.5-300.nb: 1 changelog entry</summary>" in md.stdout

    # the same database in the push attestation, read from the one layer holding it
    listed = packages.package_list(open_image(v2))
    assert listed is not None and listed["format"] == "rpm"
    versions = {p["name"]: p["version"] for p in listed["packages"]}
    assert versions["jq"] == "1.7.1-6" and "skopeo" not in versions
    assert versions["kernel-core"] == "6.11.5-300.nb"


def test_the_same_image_changes_nothing(rpm_bases: dict[int, rpmbase.BuiltRpmBase]) -> None:
    result = changelog(rpm_bases[2].tag, rpm_bases[2].tag)
    assert result.packages == [] and result.etc == [] and not result.kernel_changed
    assert result.download.layers == 0 and result.download.bytes == 0
    assert "nothing changes" in result.summary()[0]


def _deb_status(pkgs: list[tuple[str, str]]) -> bytes:
    return "".join(f"Package: {n}\nStatus: install ok installed\nArchitecture: amd64\n"
                   f"Version: {v}\nInstalled-Size: 10\n\n" for n, v in pkgs).encode()


HELLO_CHANGELOG = b"""\
hello (1:2.10-3) unstable; urgency=medium

  * Fix CVE-2024-0001.

 -- Jane Doe <jane@example.org>  Mon, 21 Oct 2024 10:00:00 +0000

hello (1:2.10-2) unstable; urgency=medium

  * Rebuild.

 -- Jane Doe <jane@example.org>  Mon, 14 Oct 2024 10:00:00 +0000

hello (2.10-1) unstable; urgency=medium

  * The version the old image has.

 -- Jane Doe <jane@example.org>  Mon, 01 Jan 2024 10:00:00 +0000
"""


def test_debian_packages_dpkg_order_changelogs_kargs_and_etc(tmp_path: Path) -> None:
    """A dpkg database: the epoch and ``~`` ordered as dpkg orders them, the changelog of the
    upgrade from the new image's changelog.Debian.gz, kargs.d and /etc as a node sees them
    (a later layer's whiteout removes a file)."""
    base = bootable_base(
        Layer().file("/usr/lib/sysimage/dpkg/status", _deb_status(
            [("hello", "2.10-1"), ("libfoo", "1.0"), ("tool", "2.0~rc1-1"), ("gone", "1")]))
        .file("/usr/lib/bootc/kargs.d/10-console.toml", b'kargs = ["console=ttyS0"]\n')
        .file("/usr/lib/bootc/kargs.d/20-arm.toml",
              b'kargs = ["arm-only"]\nmatch-architectures = ["aarch64"]\n')
        .file("/etc/hosts.allow", b"ALL: LOCAL\n"))
    update = (Layer()
              .file("/usr/lib/sysimage/dpkg/status", _deb_status(
                  [("hello", "1:2.10-3"), ("libfoo", "0.9"), ("tool", "2.0-1"),
                   ("fresh", "5")]))
              .file("/usr/share/doc/hello/changelog.Debian.gz", gzip.compress(HELLO_CHANGELOG))
              .file("/usr/lib/bootc/kargs.d/10-console.toml",
                    b'kargs = ["console=ttyS1", "quiet"]\n')
              .whiteout("/etc/hosts.allow")
              .file("/etc/motd", b"new motd\n"))
    root = tmp_path / "layout"
    write_image(root, [base], tag="v1")
    write_image(root, [base, update], tag="v2", compression="gzip")

    result = changelog(f"oci:{root}:v1", f"oci:{root}:v2")
    rows = [(p.name, p.change, p.old, p.new) for p in result.packages]
    assert rows == [("fresh", "added", None, "5"), ("gone", "removed", "1", None),
                    ("hello", "upgraded", "2.10-1", "1:2.10-3"),
                    ("libfoo", "downgraded", "1.0", "0.9"),
                    ("tool", "upgraded", "2.0~rc1-1", "2.0-1")]
    hello = result.packages[2]
    assert [(e.version, e.text.strip()) for e in hello.entries] == [
        ("1:2.10-3", "* Fix CVE-2024-0001."), ("1:2.10-2", "* Rebuild.")]
    assert result.notes == ["tool: the new image has no changelog.Debian.gz for it"]
    assert (result.kargs_removed, result.kargs_added) == (["console=ttyS0"],
                                                          ["console=ttyS1", "quiet"])
    assert [(e.path, e.change, e.details) for e in result.etc] == [
        ("/etc/hosts.allow", "removed", ()), ("/etc/motd", "modified", ("content",))]
    assert result.old.package_format == "dpkg" and not result.kernel_changed
    assert (result.download.layers, result.download.total_layers) == (1, 2)
    jsonschema.validate(result.to_json(), SCHEMA)


@pytest.fixture(scope="module")
def pushed(rpm_bases: dict[int, rpmbase.BuiltRpmBase], registry: Registry) -> dict[int, str]:
    """The rpm base's versions in a registry: version -> REPO@DIGEST."""
    out = {}
    for version, base in rpm_bases.items():
        dest = f"{registry.host}/changelog/rpm:v{version}"
        push(f"containers-storage:{base.tag}", dest)
        src = RegistrySource(ImageRef("docker", dest), access=RegistryAccess(tls_verify=False))
        out[version] = f"{registry.host}/changelog/rpm@{src.digest}"
    return out


@pytest.mark.ostree
def test_old_from_a_sysroot_nestbuild_deployed_and_rebase_dry_run(
        pushed: dict[int, str], tmp_path: Path) -> None:
    sysroot = tmp_path / "sysroot"
    repo_tag = pushed[1].split("@", 1)[0] + ":v1"
    src = RegistrySource(ImageRef("docker", pushed[1]), access=RegistryAccess(tls_verify=False))
    try:
        deploy.deploy_image(src, sysroot, "nestos", origin_ref=repo_tag)
        assert node_image(sysroot=sysroot) == f"docker://{pushed[1]}"
        r = nestbuild("changelog", "--sysroot", sysroot, f"docker://{pushed[2]}",
                      "--tls-verify", "false", "--format", "json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["old"]["digest"] == pushed[1].split("@", 1)[1]
        assert doc["summary"]["upgraded"] == 7 and doc["summary"]["kernelChanged"]
        assert [p["name"] for p in doc["packages"] if p["change"] != "upgraded"] == [
            "jq", "skopeo"]
        # a node already on v1 has every layer v1 and v2 share
        assert 0 < doc["download"]["layers"] < doc["download"]["totalLayers"]

        # rebase --dry-run: the checks and this summary, and the sysroot stays as it was
        trust = tmp_path / "trust"
        (trust / "etc" / "containers").mkdir(parents=True)
        (trust / "etc" / "containers" / "policy.json").write_text(
            json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        before = deploy.deployments(sysroot)
        r = nestbuild("rebase", f"docker://{pushed[2]}", "--via", "ostree", "--sysroot",
                      sysroot, "--trust", trust, "--dry-run", "--tls-verify", "false", "-q")
        assert r.returncode == 0, r.stderr
        assert "packages: 7 upgraded, 1 added, 1 removed, 0 downgraded" in r.stdout
        assert "kernel: 6.11.4-301.nb.x86_64 -> 6.11.5-300.nb.x86_64" in r.stdout
        assert "dry run, the sysroot is unchanged" in r.stdout
        r = nestbuild("rebase", f"docker://{pushed[2]}", "--via", "ostree", "--sysroot",
                      sysroot, "--trust", trust, "--dry-run", "--tls-verify", "false",
                      "--format", "json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["dryRun"] is True and doc["bytesDownloaded"] == 0
        assert doc["changelog"]["summary"]["upgraded"] == 7
        assert doc["changelog"]["new"]["digest"] == pushed[2].split("@", 1)[1]
        assert deploy.deployments(sysroot) == before
    finally:
        # ostree marks deployment roots immutable; let pytest clean up
        subprocess.run(["chattr", "-R", "-i", str(sysroot)], check=False,
                       stderr=subprocess.DEVNULL)


def test_old_from_a_recorded_bootc_status(pushed: dict[int, str], tmp_path: Path) -> None:
    """bootc's own status document (its test fixture), the booted image made ours."""
    doc = json.loads(bootc_status_json("spec-staged-booted.yaml"))
    repo, digest = pushed[1].split("@", 1)
    booted = doc["status"]["booted"]["image"]
    booted["image"]["image"] = f"{repo}:v1"
    booted["imageDigest"] = digest
    status = tmp_path / "status.json"
    status.write_text(json.dumps(doc))
    r = nestbuild("changelog", "--status", status, f"docker://{pushed[2]}",
                  "--tls-verify", "false", "--format", "markdown")
    assert r.returncode == 0, r.stderr
    assert "| packages | 7 upgraded, 1 added, 1 removed, 0 downgraded |" in r.stdout
    assert "| kernel | 6.11.4-301.nb.x86\\_64 → 6.11.5-300.nb.x86\\_64 |" in r.stdout


def test_a_node_without_an_image_says_so(tmp_path: Path) -> None:
    status = REFERENCE / "rpm-ostree" / "workstation-status.json"
    with pytest.raises(ChangelogError, match="not made from a container image"):
        node_image(status=status.read_text())
    r = nestbuild("changelog", "--status", status, "oci:/nonexistent:v2")
    assert r.returncode == 2 and "not made from a container image" in r.stderr
    r = nestbuild("changelog", "oci:/a:v1")
    assert r.returncode == 2 and "give OLD and NEW" in r.stderr
