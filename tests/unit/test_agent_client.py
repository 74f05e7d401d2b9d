"""AgentClient against a scripted server on a real Unix socket (protocol v1 framing)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent_client import (
    CODE_PROTOCOL,
    CODE_TIMEOUT,
    CODE_UNAVAILABLE,
    AgentClient,
    AgentError,
    AgentUnavailableError,
)

Script = Callable[[socket.socket, dict], None]


class ScriptedServer:
    """Accepts one connection per request and answers it with a script."""

    def __init__(self, path: Path):
        self.path = path
        self.requests: list[dict] = []
        self.script: Script = lambda conn, req: None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            # The reader holds the socket open too: close both so that the client sees
            # end-of-stream when the script returns.
            with conn, conn.makefile("rb") as reader:
                line = reader.readline()
                request = json.loads(line)
                self.requests.append(request)
                # A client that gave up (timeout tests) makes writes fail: not an error.
                with contextlib.suppress(OSError):
                    self.script(conn, request)

    def close(self) -> None:
        self._sock.close()


def send(conn: socket.socket, *messages: dict | bytes) -> None:
    for message in messages:
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        conn.sendall(data)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    # Unix socket paths are limited to ~108 bytes: keep the directory short.
    directory = Path(tempfile.mkdtemp(prefix="vb-", dir="/tmp"))
    srv = ScriptedServer(directory / "agent.sock")
    yield srv
    srv.close()
    shutil.rmtree(directory, ignore_errors=True)


def test_request_is_one_versioned_json_line_and_result_data_is_returned(server):
    server.script = lambda conn, req: send(conn, {"event": "result", "data": {"configured": True}})
    client = AgentClient(server.path)
    assert client.configure({"cluster": "m.v"}) == {"configured": True}
    assert server.requests == [{"v": 1, "op": "configure", "params": {"cluster": "m.v"}}]


def test_params_are_omitted_for_status(server):
    server.script = lambda conn, req: send(conn, {"event": "result", "data": {}})
    AgentClient(server.path).status()
    assert server.requests == [{"v": 1, "op": "status"}]


def test_progress_events_reach_the_callback_in_order(server):
    def script(conn, req):
        send(
            conn,
            {"event": "progress", "phase": "streaming", "bytes-done": 1},
            {"event": "progress", "phase": "streaming", "bytes-done": 2},
            {"event": "result", "data": {"backup-id": "b1"}},
        )

    server.script = script
    seen: list[int] = []
    result = AgentClient(server.path).create_backup(
        on_progress=lambda e: seen.append(e["bytes-done"])
    )
    assert result == {"backup-id": "b1"}
    assert seen == [1, 2]


def test_error_event_raises_with_code_and_message(server):
    server.script = lambda conn, req: send(
        conn,
        {"event": "progress", "phase": "streaming"},
        {"event": "error", "code": "busy", "message": "a backup is already running"},
    )
    with pytest.raises(AgentError) as info:
        AgentClient(server.path).create_backup()
    assert (info.value.code, info.value.message) == ("busy", "a backup is already running")


def test_restore_steps_carry_the_step(server):
    server.script = lambda conn, req: send(conn, {"event": "result", "data": {"restore-id": "r1"}})
    AgentClient(server.path).restore_step("prepare", {"backup-id": "b1"})
    assert server.requests[0]["params"] == {"step": "prepare", "backup-id": "b1"}


def test_list_backups_sends_the_cluster_only_when_given(server):
    server.script = lambda conn, req: send(conn, {"event": "result", "data": {"backups": []}})
    client = AgentClient(server.path)
    client.list_backups()
    client.list_backups("other.valkey")
    assert [r["params"] for r in server.requests] == [{}, {"cluster": "other.valkey"}]


def test_unknown_events_are_skipped(server):
    server.script = lambda conn, req: send(
        conn, {"event": "heartbeat"}, {"event": "result", "data": {"ok": True}}
    )
    assert AgentClient(server.path).status() == {"ok": True}


def test_connection_closed_without_an_answer_is_a_protocol_error(server):
    server.script = lambda conn, req: send(conn, {"event": "progress"})
    with pytest.raises(AgentError) as info:
        AgentClient(server.path).status()
    assert info.value.code == CODE_PROTOCOL


def test_non_json_answer_is_a_protocol_error(server):
    server.script = lambda conn, req: send(conn, b"hello\n")
    with pytest.raises(AgentError) as info:
        AgentClient(server.path).status()
    assert info.value.code == CODE_PROTOCOL


def test_non_object_result_data_is_a_protocol_error(server):
    server.script = lambda conn, req: send(conn, {"event": "result", "data": [1]})
    with pytest.raises(AgentError) as info:
        AgentClient(server.path).status()
    assert info.value.code == CODE_PROTOCOL


def test_silence_past_the_timeout_is_reported(server):
    done = threading.Event()
    server.script = lambda conn, req: done.wait(5)
    try:
        with pytest.raises(AgentError) as info:
            AgentClient(server.path).status(timeout=0.2)
        assert info.value.code == CODE_TIMEOUT
    finally:
        done.set()


def test_missing_socket_means_the_agent_is_unavailable(tmp_path):
    with pytest.raises(AgentUnavailableError) as info:
        AgentClient(tmp_path / "nothing.sock").status()
    assert info.value.code == CODE_UNAVAILABLE
    assert "not running" in info.value.message


def test_socket_file_without_listener_means_unavailable():
    directory = Path(tempfile.mkdtemp(prefix="vb-", dir="/tmp"))
    try:
        path = directory / "stale.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.close()  # the file stays, nobody listens: like a crashed agent
        with pytest.raises(AgentUnavailableError):
            AgentClient(path).status()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_oversized_request_is_refused_before_sending(tmp_path):
    with pytest.raises(AgentError) as info:
        AgentClient(tmp_path / "x.sock").configure({"blob": "x" * (1 << 20)})
    assert info.value.code == "request-too-large"
