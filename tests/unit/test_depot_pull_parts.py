"""The pure parts of ``depot pull``: picker keys and state, the engine's progress messages,
platform choice, build references, local names, output targets and the project lookup."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from core.errors import InputError
from depot import builds, engine, picker, platforms
from depot.local_output import DOCKER_ARCHIVE, OCI, OutputError, parse_output
from depot.progress import apply_engine_event
from depot.project import ProjectError, find_project

# -- picker -----------------------------------------------------------------------------------


def test_keys_from_terminal_bytes() -> None:
    assert picker.parse_keys(b"\x1b[A\x1b[B\x1bOA\r") == ["up", "down", "up", "enter"]
    assert picker.parse_keys(b"\x1b") == ["cancel"]
    assert picker.parse_keys(b"ab\x7f\n") == ["a", "b", "backspace", "enter"]
    assert picker.parse_keys("é".encode()) == ["é"]
    assert picker.parse_keys(b"\x1b[1;5Cx") == ["x"]  # an unknown sequence is skipped
    assert picker.parse_keys(b"\x03") == ["cancel"]


def choices() -> list[picker.Choice]:
    return [
        picker.Choice("c3", ("c3", "gamma", "linux/amd64")),
        picker.Choice("b2", ("b2", "beta", "linux/arm64")),
        picker.Choice("a1", ("a1", "alpha", "linux/amd64")),
    ]


def test_arrows_move_within_the_list() -> None:
    state = picker.PickerState(choices())
    assert state.press("up") is None and state.current is not None
    assert state.current.value == "c3"  # stays at the top
    for _ in range(5):
        state.press("down")
    assert state.current.value == "a1"  # stops at the bottom
    state.press("home")
    assert state.press("enter") == "c3"


def test_typing_filters_every_term() -> None:
    state = picker.PickerState(choices())
    state.press("down")
    for key in "amd64 al":
        state.press(key)
    assert [c.value for c in state.visible()] == ["a1"]
    assert state.cursor == 0
    assert state.press("enter") == "a1"
    state.press("clear")
    assert len(state.visible()) == 3
    for key in "zzz":
        state.press(key)
    assert state.visible() == [] and state.press("enter") is None  # nothing to pick
    state.press("backspace")
    state.press("backspace")
    state.press("backspace")
    assert len(state.visible()) == 3


def test_escape_cancels() -> None:
    with pytest.raises(picker.PickerCancelled):
        picker.PickerState(choices()).press("cancel")


# -- progress ---------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def start(self, key: str, total: int | None) -> None:
        self.calls.append(("start", key, total))

    def update(self, key: str, completed: int | None, total: int | None, status: str) -> None:
        self.calls.append(("update", key, completed, total, status))

    def finish(self, key: str, status: str) -> None:
        self.calls.append(("finish", key, status))

    def note(self, text: str) -> None:
        self.calls.append(("note", text))

    def close(self) -> None:
        pass


def test_engine_messages_become_layer_progress() -> None:
    seen = Recorder()
    messages: list[dict[str, Any]] = [
        {"status": "Pulling from p1x2", "id": "b1"},
        {"status": "Pulling fs layer", "id": "aaa", "progressDetail": {}},
        {"status": "Downloading", "id": "aaa", "progressDetail": {"current": 5, "total": 10}},
        {"status": "Download complete", "id": "aaa", "progressDetail": {}},
        {"status": "Extracting", "id": "aaa", "progressDetail": {"current": 10, "total": 10}},
        {"status": "Pull complete", "id": "aaa", "progressDetail": {}},
        {"status": "Already exists", "id": "bbb", "progressDetail": {}},
        {"status": "Digest: sha256:" + "0" * 64},
        {"status": "Status: Downloaded newer image for 127.0.0.1:5000/p1x2:b1"},
    ]
    digests = [apply_engine_event(m, seen) for m in messages]
    assert digests[-2] == "sha256:" + "0" * 64 and digests.count(None) == len(messages) - 1
    assert seen.calls == [
        ("note", "b1: Pulling from p1x2"),
        ("start", "aaa", None),
        ("update", "aaa", 5, 10, "downloading"),
        ("update", "aaa", None, None, "download complete"),
        ("update", "aaa", None, None, "extracting"),
        ("finish", "aaa", "pull complete"),
        ("finish", "bbb", "already exists"),
        ("note", "Status: Downloaded newer image for 127.0.0.1:5000/p1x2:b1"),
    ]


# -- platforms, references, names, outputs ----------------------------------------------------


INDEX = {
    "manifests": [
        {"digest": "sha256:1", "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:2", "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
        {"digest": "sha256:3", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"digest": "sha256:4", "platform": {"os": "unknown", "architecture": "unknown"}},
    ]
}


def test_platform_choice() -> None:
    assert platforms.choose(INDEX, "linux/amd64")["digest"] == "sha256:1"
    assert platforms.choose(INDEX, "linux/arm/v7")["digest"] == "sha256:3"
    assert platforms.choose(INDEX, "linux/arm")["digest"] == "sha256:2"  # any variant: the first
    with pytest.raises(InputError, match=r"no image for linux/s390x \(it has: linux/amd64, "):
        platforms.choose(INDEX, "linux/s390x")
    with pytest.raises(InputError, match="not a platform"):
        platforms.parse_platform("amd64")
    assert platforms.local_platform().startswith("linux/")


def test_build_references() -> None:
    assert builds.split_reference("main", None) == (None, "main")
    assert builds.split_reference("main", "p1") == ("p1", "main")
    assert builds.split_reference("p1:b1", None) == ("p1", "b1")
    assert builds.split_reference("p1:b1", "p1") == ("p1", "b1")
    with pytest.raises(InputError, match="names project p1"):
        builds.split_reference("p1:b1", "p2")
    with pytest.raises(InputError):
        builds.split_reference(":b1", None)


def test_local_names() -> None:
    assert engine.split_name("app") == ("app", "latest")
    assert engine.split_name("app:v1") == ("app", "v1")
    assert engine.split_name("127.0.0.1:5000/team/app:v1") == ("127.0.0.1:5000/team/app", "v1")
    assert engine.split_name("127.0.0.1:5000/app") == ("127.0.0.1:5000/app", "latest")
    with pytest.raises(InputError):
        engine.split_name("app@sha256:" + "0" * 64)


def test_engine_address_and_auth() -> None:
    assert engine.engine_address({}).socket == "/var/run/docker.sock"
    assert engine.engine_address({"DOCKER_HOST": "unix:///tmp/d.sock"}).socket == "/tmp/d.sock"
    tcp = engine.engine_address({"DOCKER_HOST": "tcp://10.0.0.1:2375"})
    assert (tcp.socket, tcp.base_url) == (None, "http://10.0.0.1:2375")
    with pytest.raises(InputError):
        engine.engine_address({"DOCKER_HOST": "ssh://me@host"})
    header = engine.registry_auth("x-token", "secret", "127.0.0.1:5000")
    assert json.loads(base64.urlsafe_b64decode(header)) == {
        "username": "x-token",
        "password": "secret",
        "serveraddress": "127.0.0.1:5000",
    }


def test_output_targets() -> None:
    target = parse_output("oci:/tmp/out")
    assert (target.kind, target.path, target.ref) == (OCI, Path("/tmp/out"), None)
    assert parse_output("oci:out:v1").ref == "v1"
    assert parse_output("docker-archive:a.tar").kind == DOCKER_ARCHIVE
    for bad in ("out", "tar:a.tar", "oci:"):
        with pytest.raises(OutputError):
            parse_output(bad)


def test_project_lookup(tmp_path: Path) -> None:
    assert find_project("flag", {"DEPOT_PROJECT_ID": "env"}, tmp_path) == "flag"
    assert find_project(None, {"DEPOT_PROJECT_ID": "env"}, tmp_path) == "env"
    assert find_project(None, {}, tmp_path) is None
    (tmp_path / "depot.json").write_text('{"id": "fromfile"}')
    assert find_project(None, {}, tmp_path) == "fromfile"
    (tmp_path / "depot.json").write_text('{"name": "x"}')
    with pytest.raises(ProjectError, match="no project id"):
        find_project(None, {}, tmp_path)
