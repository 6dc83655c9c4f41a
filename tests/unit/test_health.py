"""The node's health gate with real checks: ``sh`` commands, a loopback HTTP server, systemd
states read through the same callable the step passes. Verdicts are asserted, never timings;
every timeout here is short, so the whole file takes a few seconds."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nestbuild.node.health import HealthReport, HealthSpec, gate

TARGET = "sha256:" + "aa" * 32
OTHER = "sha256:" + "bb" * 32


def run_gate(tmp_path: Path, *, commands: tuple[str, ...] = (), urls: tuple[str, ...] = (),
             timeout: float = 0.5, interval: float = 0.05, booted: str | None = TARGET,
             systemd: Iterator[str] | None = None, env: dict[str, str] | None = None,
             boot_error: str | None = None) -> HealthReport:
    states = systemd
    return gate(HealthSpec(commands, urls, timeout, interval), target=TARGET, booted=booted,
                root=tmp_path, systemd=None if states is None else (lambda: next(states)),
                env=env, boot_error=boot_error)


def test_a_passing_command(tmp_path: Path) -> None:
    report = run_gate(tmp_path, commands=("echo fine",))
    assert report.ok
    assert [(c.name, c.ok, c.output, c.attempts) for c in report.checks] == \
        [("booted", True, f"booted {TARGET}", 1), ("cmd: echo fine", True, "fine", 1)]
    assert report.to_json()["ok"] is True


def test_a_command_that_never_passes(tmp_path: Path) -> None:
    count = tmp_path / "count"
    cmd = f'echo x >> {count}; echo "still broken" >&2; exit 3'
    report = run_gate(tmp_path, commands=(cmd,), timeout=2, interval=0.2)
    assert not report.ok
    failed = report.failed()
    assert [c.name for c in failed] == [f"cmd: {cmd}"]
    assert failed[0].output == "still broken"  # the last attempt's output is kept
    assert failed[0].attempts == len(count.read_text().splitlines()) >= 1
    assert any("still broken" in line for line in report.lines())


def test_a_command_that_passes_on_its_third_attempt(tmp_path: Path) -> None:
    count = tmp_path / "count"
    cmd = f'echo x >> {count}; test "$(wc -l < {count})" -ge 3'
    report = run_gate(tmp_path, commands=(cmd,), timeout=30, interval=0.05)
    assert report.ok
    assert report.checks[-1].attempts == 3


def test_commands_see_the_root_and_extra_env(tmp_path: Path) -> None:
    root = tmp_path / "deployed tree"
    root.mkdir()
    report = gate(HealthSpec(('printf %s "$NESTBUILD_ROOT"', 'test "$EXTRA" = "a b"'),
                             timeout=0.3, interval=0.05),
                  target=TARGET, booted=TARGET, root=root, systemd=None,
                  env={"EXTRA": "a b", "NESTBUILD_ROOT": "/not-this"})
    assert report.ok, report.lines()
    assert report.checks[1].output == str(root)


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = 200 if self.path == "/ok" else 500
            body = b"all good" if code == 200 else b"broken"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_urls(tmp_path: Path, http_url: str) -> None:
    report = run_gate(tmp_path, urls=(f"{http_url}/ok",))
    assert report.ok and report.checks[-1].output == "HTTP 200 all good"
    report = run_gate(tmp_path, urls=(f"{http_url}/ok", f"{http_url}/fail"), timeout=0.2)
    assert [c.ok for c in report.checks] == [True, True, False]
    assert report.checks[-1].output.startswith("HTTP 500")


def test_a_refused_connection_fails(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = run_gate(tmp_path, urls=(f"http://127.0.0.1:{port}/",), timeout=0.2)
    assert not report.ok and report.checks[-1].name == f"url: http://127.0.0.1:{port}/"
    assert "refused" in report.checks[-1].output.lower()


def test_wrong_image_runs_no_check(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for booted, error in ((OTHER, None), (None, None), (TARGET, "no boot within 10s")):
        report = run_gate(tmp_path, commands=(f"touch {marker}",), booted=booted,
                          systemd=iter(["running"]), boot_error=error)
        assert not report.ok and [c.name for c in report.checks] == ["booted"]
        assert not marker.exists()
    assert OTHER in run_gate(tmp_path, booted=OTHER).checks[0].output


def test_systemd_states(tmp_path: Path) -> None:
    assert run_gate(tmp_path, systemd=iter(["running\n"])).ok
    degraded = run_gate(tmp_path, systemd=iter(["degraded\n"]))
    assert not degraded.ok and degraded.checks[-1].output == "system state degraded"
    settling = run_gate(tmp_path, systemd=iter(["initializing", "starting", "running"]),
                        timeout=30, interval=0.01)
    assert settling.ok and settling.checks[-1].attempts == 3
    stuck = run_gate(tmp_path, systemd=iter(["starting"] * 1000), timeout=0.1, interval=0.02)
    assert not stuck.ok and stuck.checks[-1].output == "system state starting"


def test_report_round_trip(tmp_path: Path) -> None:
    report = run_gate(tmp_path, commands=("false",), timeout=0.1)
    again = HealthReport.from_json(report.to_json())
    assert again.to_json() == report.to_json() and not again.ok
    assert HealthReport.from_json("damaged").checks == []


def test_a_spec_kept_in_a_rollout_state_reads_back_as_itself() -> None:
    spec = HealthSpec(("true", "test -e x"), ("http://localhost:1/",), 42.0)
    assert HealthSpec.from_json(spec.to_json()) == spec
    assert HealthSpec.from_json(None) == HealthSpec()
