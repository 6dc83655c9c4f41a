"""``apply_plans`` through the official Kubernetes client, against a stand-in API server.

No Kubernetes API server can run on the test machines, so a small loopback HTTP server stands
in for one: it plays only the Plans endpoint of the API (create, get, replace, with the
resourceVersion check and the Status bodies a real server sends) and records every request.
The client, its kubeconfig handling and its HTTP are the real ones.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nestbuild.errors import NestbuildError, UsageError
from nestbuild.fleet.kubernetes import KubePlanSpec, apply_plans, plans

TOKEN = "s3cr3t-token-never-printed"
PREFIX = "/apis/upgrade.cattle.io/v1/namespaces/"
IMAGE = "registry.example.com/nodes/os@sha256:" + "ab" * 32


@dataclass
class FakeApi:
    """What the stand-in server holds and saw."""

    url: str = ""
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None, Any]] = field(default_factory=list)
    #: Answer every request with this status and Status message instead.
    refuse: tuple[int, str] | None = None


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "message": message, "reason": reason, "code": code})

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            api.requests.append((self.command, self.path, self.headers.get("Authorization"),
                                 copy.deepcopy(body)))
            if api.refuse is not None:
                self._status(api.refuse[0], "Refused", api.refuse[1])
                return
            path = self.path.split("?")[0]
            if not path.startswith(PREFIX):
                self._status(404, "NotFound", "the server could not find the requested resource")
                return
            namespace, plural, *rest = path[len(PREFIX):].split("/")
            if plural != "plans" or len(rest) > 1:
                self._status(404, "NotFound", "the server could not find the requested resource")
                return
            if self.command == "POST" and not rest:
                key = (namespace, body["metadata"]["name"])
                if key in api.objects:
                    self._status(409, "AlreadyExists",
                                 f'plans.upgrade.cattle.io "{key[1]}" already exists')
                    return
                body["metadata"]["resourceVersion"] = "1"
                api.objects[key] = body
                self._send(201, body)
                return
            key = (namespace, rest[0]) if rest else ("", "")
            if key not in api.objects:
                self._status(404, "NotFound", f'plans.upgrade.cattle.io "{key[1]}" not found')
                return
            current = api.objects[key]
            if self.command == "GET":
                self._send(200, current)
            elif self.command == "PUT":
                held = current["metadata"]["resourceVersion"]
                if body["metadata"].get("resourceVersion") != held:
                    self._status(409, "Conflict", "the object has been modified")
                    return
                body["metadata"]["resourceVersion"] = str(int(held) + 1)
                api.objects[key] = body
                self._send(200, body)
            else:
                self._status(405, "MethodNotAllowed", "method not allowed")

        do_GET = do_POST = do_PUT = do_PATCH = _serve

    return Handler


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubeconfig(path: Path, live: str, *, current: str = "live") -> Path:
    """A kubeconfig with a context for ``live`` and one for a server that is not there."""
    dead = f"http://127.0.0.1:{_closed_port()}"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "live", "cluster": {"server": live}},
                     {"name": "dead", "cluster": {"server": dead}}],
        "users": [{"name": "admin", "user": {"token": TOKEN}}],
        "contexts": [{"name": "live", "context": {"cluster": "live", "user": "admin"}},
                     {"name": "dead", "context": {"cluster": "dead", "user": "admin"}}],
    }))
    return path


def test_plans_are_created_then_replaced(fake_api: FakeApi, tmp_path: Path) -> None:
    made = plans(KubePlanSpec(image=IMAGE, namespace="upgrades"))
    config = kubeconfig(tmp_path / "kubeconfig", fake_api.url)
    assert apply_plans(made, config) == ["created upgrades/nestbuild-canary",
                                         "created upgrades/nestbuild-fleet"]
    creates = [r for r in fake_api.requests if r[0] == "POST"]
    assert [r[1] for r in creates] == [f"{PREFIX}upgrades/plans"] * 2
    assert [r[3] for r in creates] == made  # the Plans as emitted, canary first
    assert {r[2] for r in fake_api.requests} == {f"Bearer {TOKEN}"}

    # a new image: the same Plans are replaced, on top of the version the server holds
    newer = plans(KubePlanSpec(image=IMAGE.replace("ab" * 32, "cd" * 32), namespace="upgrades"))
    fake_api.requests.clear()
    assert apply_plans(newer, config) == ["updated upgrades/nestbuild-canary",
                                          "updated upgrades/nestbuild-fleet"]
    assert [r[0] for r in fake_api.requests] == ["POST", "GET", "PUT"] * 2
    for plan in newer:
        held = fake_api.objects[("upgrades", plan["metadata"]["name"])]
        assert held["metadata"].pop("resourceVersion") == "2"
        assert held == plan
    assert "resourceVersion" not in newer[0]["metadata"]  # the caller's Plans are untouched


def test_the_named_context_is_used(fake_api: FakeApi, tmp_path: Path) -> None:
    made = plans(KubePlanSpec(image=IMAGE, canary=0))
    config = kubeconfig(tmp_path / "kubeconfig", fake_api.url, current="dead")
    assert apply_plans(made, config, context="live") == ["created system-upgrade/nestbuild-fleet"]
    with pytest.raises(NestbuildError, match="cannot reach the Kubernetes API server"):
        apply_plans(made, config)
    with pytest.raises(UsageError, match="not a usable kubeconfig"):
        apply_plans(made, config, context="nowhere")


@pytest.mark.parametrize(("code", "says"), [
    (403, "403"), (404, "is system-upgrade-controller installed"), (422, "422")])
def test_a_refusal_is_one_line_without_secrets(fake_api: FakeApi, tmp_path: Path, code: int,
                                               says: str) -> None:
    fake_api.refuse = (code, 'plans.upgrade.cattle.io is forbidden:\nUser "system:anonymous" '
                             "cannot create resource")
    config = kubeconfig(tmp_path / "kubeconfig", fake_api.url)
    with pytest.raises(NestbuildError) as caught:
        apply_plans(plans(KubePlanSpec(image=IMAGE)), config)
    message = str(caught.value)
    assert says in message and "nestbuild-canary" in message and "system:anonymous" in message
    assert "\n" not in message and TOKEN not in message
    assert len(fake_api.requests) == 1  # the first refusal stops the rollout


def test_a_broken_kubeconfig_is_named_not_quoted(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text(f'users:\n- name: admin\n  user: {{token: "{TOKEN}\n')
    with pytest.raises(UsageError) as caught:
        apply_plans(plans(KubePlanSpec(image=IMAGE)), bad)
    assert str(bad) in str(caught.value) and TOKEN not in str(caught.value)
    with pytest.raises(UsageError, match="no such kubeconfig"):
        apply_plans([], tmp_path / "missing")
