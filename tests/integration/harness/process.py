"""Process plumbing shared by every server the harness starts.

Why this exists:
- Every child runs in its own session (process group) so teardown can kill it *and*
  anything it spawned (the agent's valkey-cli, for instance), even when a test failed
  halfway. An `atexit` hook kills whatever a crashed fixture left behind.
- Every child writes stdout+stderr to a log file; `conftest.py` attaches the part of each
  log written during a failing test to the pytest report.
- Synchronisation is by polling a real condition against a deadline (`wait_until`),
  never by sleeping a fixed time.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Every process started through ManagedProcess, in start order (for log capture and
#: last-resort cleanup).
ALL_PROCESSES: list[ManagedProcess] = []
_LOCK = threading.Lock()


class StartupError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
    max_interval: float = 0.25,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns a truthy value, and return that value.

    The poll interval grows from `interval` to `max_interval` so a fast condition is seen
    quickly without busy-looping on a two-core machine. Exceptions from the predicate
    count as "not yet"; the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    delay = interval
    while True:
        try:
            value = predicate()
            if value:
                return value
        except StartupError:
            raise
        except Exception as exc:  # any other failure means "not yet"
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_exc!r}" if last_exc else ""
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{detail}{extra}")
        time.sleep(delay)
        delay = min(delay * 1.5, max_interval)


# --- ports -----------------------------------------------------------------------------

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that is free now and was not handed out before in this run.

    Ports are drawn at random *below* the kernel's ephemeral range, so outgoing
    connections (which take ephemeral ports) cannot grab one between this check and the
    server's bind; remembering handed-out ports keeps two servers of one test run apart.
    A server that still loses the race fails to bind, and the servers here retry with a
    new port (see `ManagedProcess.bind_failed`).
    """
    lo_eph, _ = _ephemeral_range()
    lo, hi = 20000, max(20001, lo_eph - 1)
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randint(lo, hi)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found")


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- processes -------------------------------------------------------------------------


class ManagedProcess:
    """A child process in its own process group, logging to a file.

    `stop()` sends SIGTERM to the whole group and escalates to SIGKILL; it is idempotent
    and safe to call from any teardown.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ):
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        with _LOCK:
            ALL_PROCESSES.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int, *, group: bool = False) -> None:
        """Send `sig` to the process (or to its whole process group)."""
        if self.popen is None:
            return
        try:
            if group:
                os.killpg(self.popen.pid, sig)
            elif self.popen.poll() is None:
                self.popen.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float | None = None) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, wait up to `timeout`, then SIGKILL the group; return exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM, group=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # Whatever is still in the group (children the process left behind) goes now.
        self.signal(signal.SIGKILL, group=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        return self.popen.poll()

    def kill(self) -> None:
        """SIGKILL the whole group and reap the process."""
        self.signal(signal.SIGKILL, group=True)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log_text()
        return text if len(text) <= chars else "…" + text[-chars:]

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def bind_failed(self) -> bool:
        """True when the process exited because its port was taken (retry with another)."""
        text = self.log_text().lower()
        return not self.alive() and ("address already in use" in text or "eaddrinuse" in text)

    def describe(self) -> str:
        state = "running" if self.alive() else f"exited with {self.returncode}"
        pid = self.popen.pid if self.popen else "-"
        return f"{self.name} (pid {pid}, {state}), log {self.log_path}"

    def check_alive(self, what: str) -> None:
        """Raise StartupError with the log tail when the process has died."""
        if not self.alive():
            raise StartupError(
                f"{self.name} exited with {self.returncode} while waiting for {what}\n"
                f"--- {self.log_path} (tail) ---\n{self.log_tail()}"
            )


def _cleanup_all() -> None:
    for proc in ALL_PROCESSES:
        if proc.alive():
            proc.kill()


atexit.register(_cleanup_all)


# --- argv of every process (secret-leak checks) ------------------------------------------


def process_group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes whose process group is `pgid`."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def all_process_argv() -> list[tuple[int, list[str]]]:
    """(pid, argv) of every process on the machine, from /proc/*/cmdline.

    Used to prove that no password or secret key is ever visible on a command line.
    Processes that exit while being read are skipped.
    """
    out: list[tuple[int, list[str]]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            argv = [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]
            out.append((int(entry.name), argv))
    return out


def argv_containing(needles: Iterable[str]) -> list[tuple[int, list[str]]]:
    """Processes whose argv contains any of `needles` (empty needles are ignored)."""
    wanted = [n for n in needles if n]
    return [
        (pid, argv) for pid, argv in all_process_argv() if any(n in a for a in argv for n in wanted)
    ]


class ArgvSampler:
    """Collect every argv seen on the machine while a block runs (context manager).

    Child processes such as the agent's valkey-cli live for a short time, so one
    snapshot can miss them; this samples /proc in a background thread (every `period`
    seconds) until the block ends. `leaks(secrets)` lists sampled argvs containing a
    secret. The sampling period is a measurement rate, not a synchronisation sleep.
    """

    def __init__(self, period: float = 0.01):
        self.period = period
        self.seen: dict[tuple[int, tuple[str, ...]], list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, argv in all_process_argv():
                self.seen.setdefault((pid, tuple(argv)), argv)
            self._stop.wait(self.period)

    def __enter__(self) -> ArgvSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for pid, argv in all_process_argv():  # one last look
            self.seen.setdefault((pid, tuple(argv)), argv)

    def argvs(self) -> list[list[str]]:
        return list(self.seen.values())

    def leaks(self, secrets: Iterable[str]) -> list[list[str]]:
        wanted = [s for s in secrets if s]
        return [argv for argv in self.argvs() if any(s in a for a in argv for s in wanted)]
