"""Drive the real `valkey-backup-agent` binary: as a server over its Unix socket, and as a CLI.

The socket speaks docs/protocol.md: one JSON request line per connection, answered by
zero or more `progress` lines and exactly one `result` or `error` line. `Agent.request`
implements exactly that and nothing more, so a test sees what the charm would see.

The binary is `$VB_AGENT_BIN` or `<repo>/target/debug/valkey-backup-agent`. The module
imports without it; `Agent.start()` fails the test with a build hint when it is missing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .process import (
    ManagedProcess,
    StartupError,
    process_group_members,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[3]

#: Unix socket paths are limited to 108 bytes (sun_path); leave room.
_MAX_SOCKET_PATH = 100


def agent_binary() -> Path:
    """Path of the agent binary under test (`$VB_AGENT_BIN` or the debug build)."""
    env = os.environ.get("VB_AGENT_BIN")
    return Path(env) if env else REPO_ROOT / "target" / "debug" / "valkey-backup-agent"


def require_agent_binary() -> Path:
    """The agent binary, or a test failure saying how to build it."""
    path = agent_binary()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"agent binary not found at {path}.\n"
            "Build it with `cargo build -p valkey-backup-agent` (from the repository root), "
            "or point VB_AGENT_BIN at a build.",
            pytrace=False,
        )
    return path


@dataclass(frozen=True)
class AgentError:
    code: str
    message: str


@dataclass
class AgentResponse:
    """Everything the agent sent back for one request.

    `events` are the progress lines, `result` the `data` of a result line, `error` the
    code and message of an error line; `lines` are all parsed lines in order and `raw`
    the bytes received.
    """

    events: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: AgentError | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: bytes = b""

    @property
    def ok(self) -> bool:
        return self.result is not None and self.error is None

    def expect_ok(self) -> dict[str, Any]:
        """The result data, or an AssertionError showing the error the agent sent."""
        if not self.ok:
            raise AssertionError(f"agent answered an error instead of a result: {self.error}")
        assert self.result is not None
        return self.result

    def expect_error(self, code: str) -> AgentError:
        """The error, asserting its code (AssertionError with the whole answer otherwise)."""
        if self.error is None or self.error.code != code:
            raise AssertionError(f"expected error {code!r}, got {self.error or self.result!r}")
        return self.error


class AgentProtocolError(AssertionError):
    """The agent broke the framing of docs/protocol.md (closed early, bad JSON…)."""


class Agent:
    """One `valkey-backup-agent serve` process with its own socket and state dir.

    `workdir/agent.sock` is the socket (or a short path under /tmp when `workdir` is too
    deep for a Unix socket path), `workdir/state` the state dir, `workdir/agent.log` its
    stdout+stderr.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binary: Path | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        state_dir: Path | None = None,
    ):
        """`env` is added to (overrides) this process's environment for `serve` and `cli`."""
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.state_dir = Path(state_dir) if state_dir else self.dir / "state"
        self.log_path = self.dir / "agent.log"
        sock = self.dir / "agent.sock"
        self._short_dir: str | None = None
        if len(str(sock)) > _MAX_SOCKET_PATH:
            self._short_dir = tempfile.mkdtemp(prefix="vb-sock-", dir="/tmp")
            sock = Path(self._short_dir) / "agent.sock"
        self.socket_path = sock
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("RUST_BACKTRACE", "1")
        self.extra_args = list(extra_args)
        self.proc: ManagedProcess | None = None
        self._all_procs: list[ManagedProcess] = []  # every start, for cleanup
        self._pool: ThreadPoolExecutor | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Agent:
        """Start `serve` and wait until a `status` request gets a result."""
        binary = self.binary or require_agent_binary()
        self.binary = binary
        argv = [
            str(binary), "serve",
            "--socket", str(self.socket_path),
            "--state-dir", str(self.state_dir),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = ManagedProcess(argv, self.log_path, env=self.env, name="agent").start()
        self._all_procs.append(self.proc)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.proc.kill()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll the socket with `status` until the agent answers with a result."""
        assert self.proc is not None

        def ready() -> bool:
            self.proc.check_alive("the agent socket")  # type: ignore[union-attr]
            if not self.socket_path.exists():
                return False
            resp = self.request("status", timeout=5)
            if resp.error is not None:
                raise StartupError(f"agent answered `status` with an error: {resp.error}")
            return resp.ok

        try:
            wait_until(ready, timeout=timeout, what=f"agent socket {self.socket_path}")
        except TimeoutError as exc:
            raise StartupError(f"{exc}\n--- agent log tail ---\n{self.proc.log_tail()}") from None

    def restart(self, timeout: float = 30.0) -> Agent:
        """Stop (SIGTERM) and start again with the same socket and state dir."""
        self.stop()
        return self.start(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the agent, wait for it to exit, and return its exit status.

        Only the agent gets SIGTERM: killing its children is its own job, and a test can
        check that with `group_pids()` afterwards. Leftovers die at teardown (`cleanup`).
        """
        if self.proc is None or self.proc.popen is None:
            return None
        self.proc.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(
                f"agent did not exit within {timeout}s of SIGTERM\n{self.proc.log_tail()}"
            ) from None
        return code

    def kill(self) -> None:
        """SIGKILL the agent process only (its children are left to its own handling)."""
        if self.proc is not None:
            self.proc.signal(signal.SIGKILL)
            if self.proc.popen is not None:
                self.proc.popen.wait(10)

    def cleanup(self) -> None:
        """Teardown: kill the agent(s) and their process groups, release resources."""
        for proc in self._all_procs:
            proc.kill()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._short_dir:
            import shutil

            shutil.rmtree(self._short_dir, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def group_pids(self) -> list[int]:
        """PIDs still in the agent's process group other than the agent itself.

        The agent runs in its own session, so its valkey-cli children land in this group
        unless they start their own; after `stop()`/`kill()` this shows what it left
        behind.
        """
        if self.proc is None:
            return []
        return [p for p in process_group_members(self.proc.pid) if p != self.proc.pid]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Agent:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- socket protocol ----------------------------------------------------------------

    def request(
        self,
        op: str | None = None,
        params: Any = None,
        raw: bytes | None = None,
        *,
        timeout: float = 300.0,
        half_close: bool = False,
    ) -> AgentResponse:
        """Send one request and read the answer up to its `result`/`error` line.

        `{"v":1,"op":op}` plus `"params"` when given; `raw` sends those bytes verbatim
        instead (newline not added). The request is written from a helper thread while
        this one reads, so an agent that answers before reading a huge request (e.g.
        `request-too-large`) cannot deadlock the test. `half_close=True` shuts down the
        write side after sending (for requests without a newline).
        Raises AgentProtocolError when the connection ends without a final line.
        """
        if raw is None:
            msg: dict[str, Any] = {"v": 1, "op": op}
            if params is not None:
                msg["params"] = params
            raw = json.dumps(msg).encode() + b"\n"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.socket_path))
            send_error: list[BaseException] = []

            def send() -> None:
                try:
                    sock.sendall(raw)
                    if half_close:
                        sock.shutdown(socket.SHUT_WR)
                except OSError as exc:  # the agent may close before reading everything
                    send_error.append(exc)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            resp = self._read_response(sock)
            sender.join(timeout=5)
            return resp
        finally:
            sock.close()

    def _read_response(self, sock: socket.socket) -> AgentResponse:
        resp = AgentResponse()
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            resp.raw += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise AgentProtocolError(
                        f"agent sent a line that is not JSON: {line[:300]!r}"
                    ) from None
                resp.lines.append(obj)
                event = obj.get("event")
                if event == "progress":
                    resp.events.append(obj)
                elif event == "result":
                    resp.result = obj.get("data")
                    return self._expect_close(sock, resp, buf)
                elif event == "error":
                    resp.error = AgentError(str(obj.get("code")), str(obj.get("message")))
                    return self._expect_close(sock, resp, buf)
                else:
                    raise AgentProtocolError(f"agent sent an unknown event: {obj!r}")
        raise AgentProtocolError(
            f"connection closed without a result or error line; received {resp.raw[-500:]!r}"
        )

    @staticmethod
    def _expect_close(sock: socket.socket, resp: AgentResponse, rest: bytes) -> AgentResponse:
        """After the final line the agent must send nothing more and close."""
        sock.settimeout(10)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AgentProtocolError(
                "agent did not close the connection after its final line"
            ) from None
        if rest.strip():
            raise AgentProtocolError(f"agent sent data after its final line: {rest[:300]!r}")
        return resp

    def request_async(self, op: str, params: Any = None, **kwargs: Any) -> Future[AgentResponse]:
        """Start `request` in a background thread (for `busy`/shutdown tests).

        Returns a Future; `future.result(timeout)` gives the AgentResponse.
        """
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="agent-req")
        return self._pool.submit(self.request, op, params, **kwargs)

    # -- CLI ----------------------------------------------------------------------------

    def cli(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run `valkey-backup-agent --socket PATH ARGS…` as a client; never raises on exit code."""
        binary = self.binary or require_agent_binary()
        return subprocess.run(
            [str(binary), "--socket", str(self.socket_path), *args],
            check=False,
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
