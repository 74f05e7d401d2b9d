"""Client for the valkey-backup agent's Unix socket (protocol v1, docs/protocol.md).

One request per connection: the client writes a single JSON line, then reads zero or
more ``progress`` lines and exactly one ``result`` or ``error`` line. Nothing here knows
about Juju, so the same client drives the agent from the charm, from tests and from a
Python shell on the machine.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
DEFAULT_SOCKET = Path("/run/valkey-backup-agent/agent.sock")

# The agent refuses request lines over 1 MiB; checking here gives a clear error instead
# of a refused connection.
MAX_REQUEST_BYTES = 1 << 20
# Responses are small except list-backups on a long history. The cap bounds the memory a
# misbehaving peer can make the charm use.
MAX_RESPONSE_LINE_BYTES = 32 << 20

# Codes the client itself raises, on top of the agent's closed set (docs/protocol.md).
# They describe the transport, never the request.
CODE_UNAVAILABLE = "agent-unavailable"
CODE_TIMEOUT = "agent-timeout"
CODE_PROTOCOL = "agent-protocol"

ProgressCallback = Callable[[dict[str, Any]], None]


class AgentError(Exception):
    """The agent answered with an error, or could not be talked to.

    ``message`` is the agent's sanitised text (safe to show any Juju user) or one of
    this module's own; ``code`` is the stable machine-readable code.
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class AgentUnavailableError(AgentError):
    """Nothing listens on the socket: the agent is not installed, not running or crashed."""

    def __init__(self, message: str):
        super().__init__(CODE_UNAVAILABLE, message)


class AgentClient:
    """Talks to one agent over its Unix socket.

    Args:
        socket_path: where the agent listens; tests point this at their own agent.
        connect_timeout: seconds to wait for the connection itself.
    """

    def __init__(self, socket_path: str | Path = DEFAULT_SOCKET, *, connect_timeout: float = 5.0):
        self.socket_path = Path(socket_path)
        self.connect_timeout = connect_timeout

    # -- generic call -------------------------------------------------------------------

    def call(
        self,
        op: str,
        params: Mapping[str, Any] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send one request and return the ``data`` of its result.

        Args:
            op: the operation name, e.g. ``create-backup``.
            params: the operation's parameters (kebab-case keys); omitted when None.
            on_progress: called with each ``progress`` event, in order.
            timeout: seconds without any line from the agent before giving up; None
                waits as long as the agent keeps the connection open (backups and
                restores stream progress but may run for hours).

        Raises:
            AgentError: the agent answered with an error, or the exchange failed.
        """
        request: dict[str, Any] = {"v": PROTOCOL_VERSION, "op": op}
        if params is not None:
            request["params"] = dict(params)
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_REQUEST_BYTES:
            raise AgentError("request-too-large", f"the {op} request exceeds 1 MiB")

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout)
            try:
                sock.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise AgentUnavailableError(
                    f"the agent is not running (no listener on {self.socket_path})"
                ) from exc
            except TimeoutError as exc:
                raise AgentUnavailableError(
                    f"the agent did not accept a connection on {self.socket_path} in time"
                ) from exc
            except PermissionError as exc:
                raise AgentUnavailableError(
                    f"not allowed to connect to the agent socket {self.socket_path}"
                ) from exc
            except OSError as exc:
                raise AgentUnavailableError(
                    f"cannot connect to the agent socket {self.socket_path}: {exc.strerror}"
                ) from exc
            sock.settimeout(timeout)
            # No shutdown(SHUT_WR) after the request: the agent may read EOF as "the
            # caller went away" and cancel a running backup.
            sock.sendall(line)
            return self._read_response(sock, op, on_progress)
        except TimeoutError as exc:
            raise AgentError(CODE_TIMEOUT, f"the agent did not answer {op} in time") from exc
        finally:
            sock.close()

    @staticmethod
    def _read_response(
        sock: socket.socket, op: str, on_progress: ProgressCallback | None
    ) -> dict[str, Any]:
        with sock.makefile("rb") as reader:
            while True:
                raw = reader.readline(MAX_RESPONSE_LINE_BYTES + 1)
                if not raw:
                    raise AgentError(
                        CODE_PROTOCOL, f"the agent closed the connection without answering {op}"
                    )
                if len(raw) > MAX_RESPONSE_LINE_BYTES:
                    raise AgentError(CODE_PROTOCOL, f"the agent's answer to {op} is too large")
                try:
                    message = json.loads(raw)
                except ValueError as exc:
                    raise AgentError(
                        CODE_PROTOCOL, f"the agent sent a line that is not JSON for {op}"
                    ) from exc
                if not isinstance(message, dict):
                    raise AgentError(CODE_PROTOCOL, f"the agent sent a non-object line for {op}")
                event = message.get("event")
                if event == "progress":
                    if on_progress is not None:
                        on_progress(message)
                elif event == "result":
                    data = message.get("data")
                    if data is None:
                        return {}
                    if not isinstance(data, dict):
                        raise AgentError(
                            CODE_PROTOCOL, f"the agent's {op} result is not an object"
                        )
                    return data
                elif event == "error":
                    raise AgentError(
                        str(message.get("code") or "internal"),
                        str(message.get("message") or "the agent reported an error"),
                    )
                else:
                    # A newer agent may add event kinds; skipping them keeps old charms
                    # working with it.
                    logger.debug("ignoring agent event %r during %s", event, op)

    # -- one method per op: names the charm can read ------------------------------------

    def status(
        self, *, check_valkey: bool = False, timeout: float | None = 10.0
    ) -> dict[str, Any]:
        """The agent's health and what it is doing (``status`` op).

        ``check_valkey`` makes the agent run configure's check of the server (and its
        Sentinel) again first: the only ``status`` that talks to Valkey.
        """
        if check_valkey:
            return self.call("status", {"check-valkey": True}, timeout=60.0)
        return self.call("status", timeout=timeout)

    def configure(
        self, params: Mapping[str, Any], *, timeout: float | None = 120.0
    ) -> dict[str, Any]:
        """Send the whole configuration; the agent checks it (bucket included) and stores it."""
        return self.call("configure", params, timeout=timeout)

    def create_backup(self, *, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Stream one snapshot to the store; returns the new backup's summary."""
        return self.call("create-backup", {}, on_progress=on_progress)

    def list_backups(
        self,
        cluster: str | None = None,
        *,
        limit: int | None = None,
        offset: int | None = None,
        status: str | None = None,
        timeout: float | None = 300.0,
    ) -> dict[str, Any]:
        """One page of the backups of the configured cluster, or of ``cluster``.

        Newest first: at most ``limit`` (the agent's default: 100) after skipping
        ``offset``, of those with ``status`` if given; ``total`` and ``counts`` cover all.
        """
        params: dict[str, Any] = {"cluster": cluster} if cluster else {}
        if limit is not None:
            params["limit"] = limit
        if offset:
            params["offset"] = offset
        if status:
            params["status"] = status
        return self.call("list-backups", params, timeout=timeout)

    def restore_step(
        self,
        step: str,
        params: Mapping[str, Any],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """One step of a restore: ``prepare``, ``commit``, ``finish`` or ``abort``."""
        return self.call("restore-backup", {"step": step, **params}, on_progress=on_progress)

    def verify_backup(
        self, params: Mapping[str, Any], *, on_progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        """Re-read a stored backup and check it; a failed check is an ``AgentError``."""
        return self.call("verify-backup", params, on_progress=on_progress)

    def prune_backups(
        self, params: Mapping[str, Any], *, on_progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        """Apply retention rules (a dry run unless ``confirm`` is true)."""
        return self.call("prune-backups", params, on_progress=on_progress)
