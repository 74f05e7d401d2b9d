"""Fault injection around the real valkey-cli.

Some failures cannot be produced by a real server: a cli that prints something that is
not an RDB, or a cli that dies halfway through a transfer. These wrappers are configured
as the agent's `valkey.cli`; they run the real cli (which speaks to the real server) for
everything, and only bend the `--rdb` stream as the test asks.
"""

from __future__ import annotations

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
