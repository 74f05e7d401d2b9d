"""Fault injection around the real valkey-cli.

Some failures cannot be produced by a real server: a cli that prints something that is
not an RDB, or a cli that dies halfway through a transfer. These wrappers are configured
as the agent's `valkey.cli`; they run the real cli (which speaks to the real server) for
everything, and only bend the `--rdb` stream as the test asks.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

_TEMPLATE = r"""#!{python}
import json, os, signal, subprocess, sys, time
REAL = {real!r}
OPTS = json.loads({opts!r})
argv = sys.argv[1:]
if "--rdb" not in argv:
    os.execv(REAL, [REAL, *argv])
mode = OPTS["mode"]
if mode == "junk":
    sys.stdout.buffer.write(b"this is not an RDB snapshot\n" * 1000)
    sys.exit(0)
child = subprocess.Popen([REAL, *argv], stdout=subprocess.PIPE)
out = sys.stdout.buffer
sent = 0
limit = OPTS.get("after_bytes", 0)
while True:
    chunk = child.stdout.read(min(65536, max(1, limit - sent)) if sent < limit else 65536)
    if not chunk:
        break
    out.write(chunk)
    sent += len(chunk)
    if sent >= limit:
        out.flush()
        if mode == "kill":
            child.kill()
            child.wait()
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "pause":
            marker = OPTS["marker"]
            open(marker + ".reached", "w").close()
            while not os.path.exists(marker):
                time.sleep(0.01)
            mode = "pass"
out.flush()
sys.exit(child.wait())
"""


def cli_wrapper(tmp: Path, real_cli: Path, mode: str, **opts: object) -> Path:
    """Write an executable wrapper around `real_cli` and return its path.

    Modes:
    - `junk`: `--rdb` prints text that is not an RDB and exits 0;
    - `kill`: `--rdb` forwards `after_bytes` bytes, then SIGKILLs the real cli and itself;
    - `pause`: forwards `after_bytes` bytes, creates `<marker>.reached`, and waits until
      the file `marker` exists before forwarding the rest.
    """
    path = tmp / f"cli-{mode}"
    path.write_text(
        _TEMPLATE.format(
            python=sys.executable, real=str(real_cli), opts=json.dumps({"mode": mode, **opts})
        )
    )
    path.chmod(0o755)
    return path


class FakePrimary:
    """A TCP peer that speaks just enough RESP to pass for a Valkey 8.1 primary, then
    misbehaves after `SYNC` in a way a real server cannot be made to:

    - `garbage`: answers `SYNC` with an HTTP response (a wrong port, a proxy);
    - `not-rdb`: announces a 4096-byte payload and sends bytes that are not an RDB;
    - `stall`: announces a payload, sends an RDB header and 4 KiB, then nothing while
      keeping the connection open.

    Every other command gets a plausible answer (`AUTH`/`REPLCONF` +OK, `INFO` a server
    section, `CONFIG GET` an empty array). Runs in a daemon thread; `stop()` closes it.
    """

    INFO = (
        b"# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.8\r\n"
        b"# Replication\r\nrole:master\r\n# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n"
    )

    def __init__(self, mode: str):
        import socket
        import threading

        self.mode = mode
        self.host = "127.0.0.1"
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((self.host, 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self._conns: list = []
        self.commands: list[list[bytes]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_command(f) -> list[bytes] | None:
        line = f.readline()
        if not line:
            return None
        if not line.startswith(b"*"):
            return line.strip().split()  # an inline command
        args = []
        for _ in range(int(line[1:])):
            n = int(f.readline()[1:])
            args.append(f.read(n + 2)[:-2])
        return args

    def _handle(self, conn) -> None:
        f = conn.makefile("rb")
        try:
            while (cmd := self._read_command(f)) is not None:
                self.commands.append(cmd)
                name = cmd[0].upper()
                if name == b"INFO":
                    conn.sendall(b"$%d\r\n%s\r\n" % (len(self.INFO), self.INFO))
                elif name == b"CONFIG":
                    conn.sendall(b"*0\r\n")
                elif name == b"SYNC":
                    self._misbehave(conn)
                    return
                else:
                    conn.sendall(b"+OK\r\n")
        except OSError:
            return

    def _misbehave(self, conn) -> None:
        conn.sendall(b"\n\n")
        if self.mode == "garbage":
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            conn.close()
        elif self.mode == "not-rdb":
            conn.sendall(b"$4096\r\n" + b"<html>not a snapshot</html>".ljust(4096, b" "))
        elif self.mode == "stall":
            conn.sendall(b"$1000000\r\nREDIS0011" + bytes(4096))
            # Hold the connection open, sending nothing more, until the agent hangs up.
            while conn.recv(4096):
                pass

    def stop(self) -> None:
        self._listener.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()
