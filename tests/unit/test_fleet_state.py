"""The rollout's state file: a round trip keeps everything, a save replaces the file whole,
and any file that is not a state this version wrote is one StateError line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nestbuild.fleet.state import (
    NODE_STATES,
    NodeState,
    RolloutState,
    StateError,
    load,
    save,
)

DIGEST = "sha256:" + "ab" * 32


def sample() -> RolloutState:
    state = RolloutState(
        "reg.example.com/os:v2", f"reg.example.com/os@{DIGEST}", DIGEST,
        inventory="inv.ini", limit="web:!db", status="running",
        options={"canary": 1, "maxUnavailable": "25%"}, waves=[["a"], ["b", "c"]],
        message="wave 2")
    state.nodes = {
        "a": NodeState("healthy", 1, "ostree", "sha256:" + "01" * 32, DIGEST,
                       {"state": "healthy", "health": {"ok": True, "checks": []}}, None,
                       1.5, 2.5),
        "b": NodeState("rolled-back", 2, "bootc", message="cmd failed"),
        "c": NodeState(),
    }
    return state


def test_round_trip(tmp_path: Path) -> None:
    state = sample()
    assert RolloutState.from_json(json.loads(json.dumps(state.to_json())), "x").to_json() \
        == state.to_json()
    path = tmp_path / "deep" / "rollout.json"
    save(state, path)
    loaded = load(path)
    assert loaded.to_json() == state.to_json()
    assert loaded.count("healthy") == 1 and loaded.names("pending", "rolled-back") == ["b", "c"]
    for s in NODE_STATES:
        assert NodeState.from_json({"state": s}, "x").state == s


def test_save_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "rollout.json"
    state = sample()
    save(state, path)
    state.status = "completed"
    save(state, path)
    assert load(path).status == "completed"
    assert [p.name for p in tmp_path.iterdir()] == ["rollout.json"]  # no temporary left


def test_save_that_fails_leaves_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "rollout.json"
    save(sample(), path)
    before = path.read_bytes()
    bad = sample()
    bad.options = {"x": object()}  # not JSON: the save fails before anything is replaced
    with pytest.raises(TypeError):
        save(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["rollout.json"]


def one_line(path: Path) -> str:
    with pytest.raises(StateError) as info:
        load(path)
    assert "\n" not in info.value.message
    return info.value.message


def test_damaged_files(tmp_path: Path) -> None:
    path = tmp_path / "rollout.json"
    save(sample(), path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # half a file
    assert "not valid JSON" in one_line(path)
    path.write_bytes(b"\xff\xfe")
    assert "not valid JSON" in one_line(path)
    docs: list[object] = [[], {"version": 99}, {"version": 1}, {"version": 1, "nodes": []},
                {"version": 1, "image": "i", "pinned": "p", "digest": "d",
                 "nodes": {"a": "healthy"}},
                {"version": 1, "image": "i", "pinned": "p", "digest": "d", "nodes": {},
                 "started": "yesterday"}]
    for doc in docs:
        path.write_text(json.dumps(doc))
        assert str(path) in one_line(path)


def test_unknown_states_refused(tmp_path: Path) -> None:
    path = tmp_path / "rollout.json"
    doc = sample().to_json()
    doc["nodes"]["a"]["state"] = "exploded"
    path.write_text(json.dumps(doc))
    assert "unknown node state 'exploded'" in one_line(path)
    doc = sample().to_json()
    doc["status"] = "paused"
    path.write_text(json.dumps(doc))
    assert "unknown rollout status 'paused'" in one_line(path)


def test_missing_file_names_the_cause(tmp_path: Path) -> None:
    message = one_line(tmp_path / "nope.json")
    assert "no rollout state" in message and "--state" in message
    (tmp_path / "dir.json").mkdir()
    assert "dir.json" in one_line(tmp_path / "dir.json")
