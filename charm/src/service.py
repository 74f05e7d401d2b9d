"""The agent as a systemd service, and the principal's Valkey service.

The charm ships the agent binary inside the charm (``bin/valkey-backup-agent``, built by
charmcraft); this module copies it to a fixed path, writes its unit file and drives
``systemctl``. It also finds and stops/starts the Valkey server's own unit for restores.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

AGENT_UNIT = "valkey-backup-agent.service"
# Where charmcraft's `agent` part stages the binary inside the packed charm.
PACKED_AGENT = Path("bin/valkey-backup-agent")

# Test seam: integration tests that drive the charm against their own agent point the
# charm at its socket with this variable (the same one the agent's CLI reads). Juju
# never sets it.
SOCKET_ENV = "VALKEY_BACKUP_SOCKET"

# Candidate units for the principal's server, in the order they are tried: the
# charmed-valkey snap (what the valkey charm installs), then Debian/Ubuntu packages.
VALKEY_SERVICE_CANDIDATES = (
    "snap.charmed-valkey.server.service",
    "valkey-server.service",
    "valkey.service",
    "redis-server.service",
    "redis.service",
)


class ServiceError(Exception):
    """A systemctl call failed; the message carries its (secret-free) stderr."""


@dataclass(frozen=True)
class AgentPaths:
    """Where the agent lives on the machine."""

    binary: Path = Path("/usr/local/bin/valkey-backup-agent")
    unit_file: Path = Path("/etc/systemd/system") / AGENT_UNIT
    socket: Path = Path("/run/valkey-backup-agent/agent.sock")
    state_dir: Path = Path("/var/lib/valkey-backup-agent")

    @classmethod
    def from_env(cls) -> AgentPaths:
        """The default paths, with the socket overridable by ``VALKEY_BACKUP_SOCKET``."""
        socket = os.environ.get(SOCKET_ENV)
        return cls(socket=Path(socket)) if socket else cls()


# How long the agent itself waits for running operations to abort on SIGTERM
# (agent/src/server.rs, SHUTDOWN_GRACE).
AGENT_SHUTDOWN_GRACE_S = 60


def render_unit(paths: AgentPaths) -> str:
    """The systemd unit that runs the agent.

    The socket's directory comes from ``RuntimeDirectory`` with mode 0700, so only root
    can even reach the socket (the agent also checks the peer's uid). The agent runs as
    root because a restore writes into the Valkey server's data directory, whoever owns
    it. ``KillMode=mixed`` sends SIGTERM to the agent alone first, so that it can kill
    the cli and abort an open multipart upload itself before systemd kills the rest;
    ``TimeoutStopSec`` is longer than the agent's own 60 s shutdown grace
    (``AGENT_SHUTDOWN_GRACE_S``), so systemd never kills it while it is still cleaning up.

    ``NoNewPrivileges=yes`` stays: it keeps a compromised agent from gaining anything
    through setuid binaries. Snap commands (``/snap/bin/charmed-valkey.cli``) cannot
    start under it, because snap-confine needs its setuid/capabilities; so beside the
    charmed-valkey snap the charm hands the agent the snap's own binaries
    (``/snap/charmed-valkey/current/usr/bin/valkey-cli`` and ``valkey-server``, on the
    read-only, root-owned squashfs), which run directly, unconfined, as any program.
    """
    runtime_dir = paths.socket.parent
    return f"""\
# Written by the valkey-backup charm; changes are overwritten on upgrade.
[Unit]
Description=valkey-backup agent (streams Valkey snapshots to S3-compatible storage)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={paths.binary} serve --socket {paths.socket} --state-dir {paths.state_dir}
RuntimeDirectory={runtime_dir.name}
RuntimeDirectoryMode=0700
StateDirectory={paths.state_dir.name}
StateDirectoryMode=0700
UMask=0077
Restart=on-failure
RestartSec=5
KillMode=mixed
TimeoutStopSec={AGENT_SHUTDOWN_GRACE_S + 30}
NoNewPrivileges=yes
ProtectSystem=full
PrivateTmp=yes
Environment=RUST_LOG=info

[Install]
WantedBy=multi-user.target
"""


Runner = Callable[..., subprocess.CompletedProcess[str]]


class Systemctl:
    """A thin wrapper over ``systemctl``; ``run`` is injectable for tests."""

    def __init__(self, command: str = "systemctl", run: Runner = subprocess.run):
        self.command = command
        self._run = run

    def _call(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [self.command, *args]
        try:
            proc = self._run(argv, capture_output=True, text=True, check=False, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"{' '.join(argv)} failed: {exc}") from exc
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout or "").strip()[-400:]
            raise ServiceError(f"{' '.join(argv)} exited {proc.returncode}: {detail}")
        return proc

    def daemon_reload(self) -> None:
        """Make systemd re-read unit files."""
        self._call("daemon-reload")

    def enable_now(self, unit: str) -> None:
        """Enable ``unit`` at boot and start it now."""
        self._call("enable", "--now", unit)

    def restart(self, unit: str) -> None:
        """Restart ``unit`` (starts it if stopped)."""
        self._call("restart", unit)

    def start(self, unit: str) -> None:
        """Start ``unit``; systemctl waits for it to be up."""
        self._call("start", unit)

    def stop(self, unit: str) -> None:
        """Stop ``unit``; systemctl waits for it to be down."""
        self._call("stop", unit)

    def disable_now(self, unit: str) -> None:
        """Stop ``unit`` and disable it; a missing unit is not an error."""
        self._call("disable", "--now", unit, check=False)

    def is_active(self, unit: str) -> bool:
        """True if ``unit`` is running."""
        return self._call("is-active", "--quiet", unit, check=False).returncode == 0

    def exists(self, unit: str) -> bool:
        """True if systemd knows the unit (installed, whether running or not)."""
        proc = self._call("show", "--property=LoadState", "--value", unit, check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "loaded"


class AgentService:
    """Installs, upgrades and removes the agent's binary and systemd unit."""

    def __init__(self, paths: AgentPaths, systemctl: Systemctl):
        self.paths = paths
        self.systemctl = systemctl

    def install(self, packed_binary: Path) -> None:
        """Put the binary and unit in place and start the agent (idempotent)."""
        self._install_files(packed_binary)
        self.systemctl.daemon_reload()
        self.systemctl.enable_now(AGENT_UNIT)

    def upgrade(self, packed_binary: Path) -> None:
        """Replace the binary and unit, then restart so the new binary runs.

        A backup started from the agent's CLI at this moment is cancelled by the
        restart (the agent aborts its upload and records the failure); a backup started
        by an action cannot be running, because Juju does not run hooks during actions.
        """
        self._install_files(packed_binary)
        self.systemctl.daemon_reload()
        self.systemctl.enable_now(AGENT_UNIT)
        self.systemctl.restart(AGENT_UNIT)

    def ensure_started(self) -> None:
        """Enable and start the agent if it is not running (idempotent)."""
        self.systemctl.enable_now(AGENT_UNIT)

    def remove(self) -> None:
        """Stop the agent and delete what the charm installed.

        The state directory goes too: it holds the stored configuration, S3 credentials
        and Valkey password included, which must not outlive the charm.
        """
        self.systemctl.disable_now(AGENT_UNIT)
        for path in (self.paths.unit_file, self.paths.binary):
            path.unlink(missing_ok=True)
        self.systemctl.daemon_reload()
        shutil.rmtree(self.paths.state_dir, ignore_errors=True)

    def _install_files(self, packed_binary: Path) -> None:
        _atomic_copy(packed_binary, self.paths.binary, mode=0o755)
        _atomic_write(self.paths.unit_file, render_unit(self.paths), mode=0o644)

    def wait_until_ready(
        self,
        probe: Callable[[], bool],
        *,
        timeout: float,
        interval: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> bool:
        """Poll ``probe`` (e.g. a ``status`` request) until it is true or time runs out."""
        deadline = clock() + timeout
        while True:
            if probe():
                return True
            if clock() >= deadline:
                return False
            sleep(interval)


def find_valkey_service(
    systemctl: Systemctl, configured: str, candidates: Sequence[str] = VALKEY_SERVICE_CANDIDATES
) -> str | None:
    """The Valkey server's unit: the configured one, else the first installed candidate."""
    if configured:
        return configured if systemctl.exists(configured) else None
    return next((unit for unit in candidates if systemctl.exists(unit)), None)


def _atomic_copy(src: Path, dest: Path, *, mode: int) -> None:
    """Copy through a temporary file in the destination directory, then rename.

    A running agent keeps executing its old inode; a half-written binary is never
    visible at ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write(dest: Path, text: str, *, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
