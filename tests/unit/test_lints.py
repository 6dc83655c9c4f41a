"""Each rule fires on what it is for, and stays quiet on a clean image."""

from __future__ import annotations

from pathlib import Path

from nestbuild.validation.policy import preset
from nestbuild.validation.validate import validate
from tests.ocibuilder import KVER, Layer, bootable_base, derived

PEM_KEY = (b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
           b"-----END OPENSSH PRIVATE KEY-----\n")


def findings(tmp_path: Path, layers: list[Layer], *, base_extra: Layer | None = None,
             composefs: bool = True, policy: str = "strict") -> set[tuple[str, str, str | None]]:
    _, image_ref = derived(tmp_path / "l", [bootable_base(base_extra, composefs=composefs)], layers)
    report = validate(image_ref, policy=preset(policy))
    return {(f.rule, f.severity, f.path) for f in report.findings}


def test_clean_base_and_etc_change_pass_without_findings(tmp_path: Path) -> None:
    assert findings(tmp_path, [Layer().file("/etc/motd", b"hello\n")]) == set()


def test_path_policy_collapses_to_the_topmost_added_directory(tmp_path: Path) -> None:
    layer = Layer().dir("/usr/local").dir("/usr/local/bin").file("/usr/local/bin/x", b"x", 0o755)
    assert findings(tmp_path, [layer]) == {("path-policy", "error", "/usr/local")}
    assert findings(tmp_path / "p", [layer], policy="packages") == set()


def test_packages_preset_still_protects_the_kernel(tmp_path: Path) -> None:
    layer = Layer().file(f"/usr/lib/modules/{KVER}/vmlinuz", b"evil kernel")
    assert findings(tmp_path, [layer], policy="packages") == {
        ("path-policy", "error", f"/usr/lib/modules/{KVER}/vmlinuz")}


def test_setuid_capabilities_world_writable_ownership(tmp_path: Path) -> None:
    layer = (Layer().file("/usr/bin/su2", b"x", 0o4755)
             .file("/usr/bin/ping2", b"x", 0o755,
                   xattrs={"security.capability": b"\x01\x00\x00\x02\x00\x20\x00\x00"})
             .file("/etc/open", b"x", 0o666).dir("/etc/shared", 0o777)
             .dir("/etc/sticky", 0o1777).file("/usr/bin/owned", b"x", 0o755, uid=1000))
    got = findings(tmp_path, [layer], policy="packages")
    assert got == {
        ("setuid", "error", "/usr/bin/su2"),
        ("file-capabilities", "warning", "/usr/bin/ping2"),
        ("world-writable", "error", "/etc/open"),
        ("world-writable", "error", "/etc/shared"),
        ("ownership", "warning", "/usr/bin/owned"),
    }


def test_secret_in_a_layer_is_reported_even_if_a_later_layer_deletes_it(tmp_path: Path) -> None:
    first = Layer().dir("/etc/ssh").file("/etc/ssh/ssh_host_ed25519_key", PEM_KEY, 0o600)
    first.file("/etc/app.pem", b"junk\n" + PEM_KEY)
    first.file("/etc/containers/auth.json",
               b'{"auths": {"r.example.com": {"auth": "dXNlcjpzZWNyZXQ="}}}')
    second = Layer().whiteout("/etc/app.pem")
    got = findings(tmp_path, [first, second])
    assert {(r, p) for r, _, p in got if r == "secret"} == {
        ("secret", "/etc/ssh/ssh_host_ed25519_key"),
        ("secret", "/etc/app.pem"),
        ("secret", "/etc/containers/auth.json"),
    }


def test_unsafe_entries(tmp_path: Path) -> None:
    layer = Layer().file("/etc/../../escape", b"x").symlink("/etc/up", "../../../etc/shadow")
    layer.device("/etc/disk", 8, 0).file("/etc/bad\udcffname", b"x")
    got = findings(tmp_path, [layer])
    unsafe = {p for r, _, p in got if r == "unsafe-path"}
    assert unsafe == {"/etc/../../escape", "/etc/up", "/etc/disk", "/etc/bad\\xffname"}
    assert ("utf8", "error", "/etc/bad\\xffname") in got


def test_kernel_lints(tmp_path: Path) -> None:
    layer = (Layer().dir("/usr/lib/modules/9.9.9").file("/usr/lib/modules/9.9.9/vmlinuz", b"k")
             .file(f"/usr/lib/modules/{KVER}/extra/ok.ko", b"m")
             .file("/usr/lib/modules/5.0.0/extra/stale.ko.xz", b"m"))
    got = findings(tmp_path, [layer], policy="permissive")
    assert ("kernel", "error", "/usr/lib/modules") in got
    assert ("kmod-kernel-mismatch", "error", "/usr/lib/modules/5.0.0/extra/stale.ko.xz") in got
    assert not any(p and p.endswith("ok.ko") for _, _, p in got)


def test_dropped_paths_depend_on_composefs(tmp_path: Path) -> None:
    layer = Layer().dir("/opt").file("/opt/app", b"x").file("/run/x", b"x").file("/boot/y", b"y")
    without = findings(tmp_path / "a", [layer], composefs=False, policy="permissive")
    assert {p for r, _, p in without if r == "dropped-path"} == {"/opt", "/run/x", "/boot/y"}
    with_cfs = findings(tmp_path / "b", [layer], composefs=True, policy="permissive")
    assert {p for r, _, p in with_cfs if r == "dropped-path"} == {"/run/x", "/boot/y"}
    # bootc's nonempty-* lints do not repeat what dropped-path reports
    assert not any(r.startswith("nonempty") for r, _, _ in with_cfs)


def test_var_content_suggests_tmpfiles_lines(tmp_path: Path) -> None:
    layer = Layer().dir("/var/lib/agent", 0o750).file("/var/lib/agent/state", b"s")
    _, image_ref = derived(tmp_path / "l", [bootable_base()], [layer])
    report = validate(image_ref)
    (f,) = [f for f in report.findings if f.rule == "var-content"]
    assert f.path == "/var/lib/agent" and f.severity == "warning"
    assert "d /var/lib/agent 0750 root root -" in f.message
    assert "C /var/lib/agent/state 0644 root root - /usr/share/factory/var/lib/agent/state" in (
        f.message)
    assert report.passed


def test_bootc_structural_lints(tmp_path: Path) -> None:
    layer = (Layer().dir("/usr/etc").file("/etc/hostname", b"")
             .dir("/usr/lib/bootc").dir("/usr/lib/bootc/kargs.d")
             .file("/usr/lib/bootc/kargs.d/00-good.toml", b'kargs = ["console=ttyS0"]\n')
             .file("/usr/lib/bootc/kargs.d/10-bad.toml", b'kargs = ["a"]\nextra = 1\n')
             .whiteout("/var/run").dir("/var/run")
             .file("/etc/passwd", b"root:x:0:0::/root:/bin/sh\napp:x:500:500::/:/bin/sh\n")
             .dir("/var/log").file("/var/log/build.log", b"log"))
    got = findings(tmp_path, [layer], policy="permissive")
    assert {
        ("etc-usretc", "error", "/usr/etc"),
        ("buildah-injected", "warning", "/etc/hostname"),
        ("bootc-kargs", "error", "/usr/lib/bootc/kargs.d/10-bad.toml"),
        ("var-run", "error", "/var/run"),
        ("sysusers", "warning", "/etc/passwd"),
        ("var-log", "warning", "/var/log/build.log"),
    } <= got
    assert not any(p and p.endswith("00-good.toml") for _, _, p in got)


def test_findings_the_base_already_has_are_marked_inherited(tmp_path: Path) -> None:
    _, image_ref = derived(tmp_path / "l", [bootable_base(composefs=False)],
                           [Layer().file("/etc/motd", b"x")])
    report = validate(image_ref)
    (f,) = report.findings
    assert (f.rule, f.inherited) == ("baseimage-composefs", True)


def test_modules_to_load_must_exist_for_the_kernel(tmp_path: Path) -> None:
    base_extra = (Layer().dir(f"/usr/lib/modules/{KVER}/kernel")
                  .file(f"/usr/lib/modules/{KVER}/kernel/overlay.ko.xz", b"m")
                  .file(f"/usr/lib/modules/{KVER}/modules.builtin", b"kernel/fs/ext4/ext4.ko\n"))
    layer = Layer().dir("/etc/modules-load.d").file(
        "/etc/modules-load.d/host.conf", b"# modules\noverlay\next4\nbr-netfilter\n")
    _, image_ref = derived(tmp_path / "l", [bootable_base(base_extra)], [layer])
    report = validate(image_ref)
    (f,) = [f for f in report.findings if f.rule == "kmod-kernel-mismatch"]
    assert f.path == "/etc/modules-load.d/host.conf"
    assert f.message == f"module br-netfilter to load is not in kernel {KVER}"
