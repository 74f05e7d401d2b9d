"""The agent's socket protocol under stress: bad input, foreign peers, restarts, SIGTERM, busy.

Every test talks to the real agent binary over its Unix socket (docs/protocol.md) and
checks that the server keeps serving afterwards. Slow backups are made with a wrapper
around the real valkey-cli (see `SlowCli`): the real cli still talks to the real server,
the wrapper only holds its stdout back until the test releases it.

Run: python -m pytest tests/integration/test_socket.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from harness import Agent, AgentResponse, configure_params, wait_until

MiB = 1024 * 1024
MAX_REQUEST = MiB
PART_SIZE = 5 * MiB
STATUS_LINE = b'{"v": 1, "op": "status"}'
NOBODY = 65534
CLUSTER = "testmodel.valkey"
PREFIX = f"valkey/{CLUSTER}/"


# --------------------------------------------------------------------------- helpers


def assert_framed(resp: AgentResponse) -> None:
    """Progress lines, then exactly one final line, each newline-terminated, nothing else.

    The harness already fails on data after the final line or a missing final line; this
    also checks that nothing but progress precedes the final line and that every line
    the agent sent is a complete JSON line.
    """
    assert resp.raw.endswith(b"\n"), resp.raw[-200:]
    sent = [line for line in resp.raw.split(b"\n") if line.strip()]
    assert len(sent) == len(resp.lines), resp.raw[-500:]
    *progress, final = resp.lines
    assert all(line.get("event") == "progress" for line in progress), progress
    assert final.get("event") in ("result", "error"), final
    assert (resp.result is None) != (resp.error is None)
    if resp.error is not None:
        assert set(final) == {"event", "code", "message"}, final
        assert resp.error.message, final


def assert_serving(a: Agent) -> dict[str, Any]:
    """The agent process is alive and answers `status` with a result."""
    assert a.alive(), f"agent died:\n{a.proc.log_tail() if a.proc else ''}"
    resp = a.request("status", timeout=30)
    assert_framed(resp)
    return resp.expect_ok()


def fill_random(server: Any, mib: int) -> None:
    """`mib` keys of 1 MiB of random bytes (incompressible: the RDB is about `mib` MiB)."""
    with server.client() as c:
        for i in range(mib):
            c.set(f"blob:{i}", os.urandom(MiB))


def rdb_processes(
    process_argvs: Callable[[], list[tuple[int, list[str]]]], port: int
) -> list[tuple[int, list[str]]]:
    """Live processes streaming `--rdb` from the server on `port` (cli or its wrapper).

    Other test runs may stream from their own servers at the same time: the port tells
    this test's processes apart.
    """
    return [(pid, argv) for pid, argv in process_argvs() if "--rdb" in argv and str(port) in argv]


SLOW_CLI = textwrap.dedent(
    """\
    #!{python}
    # Fault injection for tests: runs the real cli with the same argv and environment and
    # copies its stdout; an `--rdb` stream is held after PAUSE_AFTER bytes until the file
    # CTL/release exists (CTL/paused marks the pause). Anything else execs the real cli.
    import ctypes, os, subprocess, sys, time
    REAL = {real!r}
    CTL = {ctl!r}
    PAUSE_AFTER = {pause_after}
    args = sys.argv[1:]
    if "--rdb" not in args:
        os.execv(REAL, [REAL, *args])

    def die_with_parent():
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL

    child = subprocess.Popen([REAL, *args], stdout=subprocess.PIPE, preexec_fn=die_with_parent)
    with open(os.path.join(CTL, "started"), "w") as fh:
        fh.write(str(os.getpid()))
    out = sys.stdout.buffer
    sent, paused = 0, False
    while True:
        chunk = child.stdout.read1(65536)
        if not chunk:
            break
        out.write(chunk)
        out.flush()
        sent += len(chunk)
        if not paused and sent >= PAUSE_AFTER:
            paused = True
            open(os.path.join(CTL, "paused"), "w").close()
            while not os.path.exists(os.path.join(CTL, "release")):
                time.sleep(0.02)
    sys.exit(child.wait())
    """
)


class SlowCli:
    """A wrapper cli (configured as `valkey.cli`) that pauses `--rdb` streams on demand."""

    def __init__(self, directory: Path, real_cli: Path, pause_after: int):
        self.ctl = directory / "slow-cli"
        self.ctl.mkdir()
        self.path = directory / "slow-valkey-cli"
        self.path.write_text(
            SLOW_CLI.format(
                python=sys.executable,
                real=str(real_cli),
                ctl=str(self.ctl),
                pause_after=pause_after,
            )
        )
        self.path.chmod(0o755)

    def paused(self) -> bool:
        return (self.ctl / "paused").exists()

    def wait_paused(self, a: Agent, pending: Future[AgentResponse], timeout: float = 30) -> None:
        """Wait until the stream is held; fail at once if the backup ended before."""

        def check() -> bool:
            a.proc.check_alive("the slow cli to pause")  # type: ignore[union-attr]
            return self.paused() or pending.done()

        wait_until(check, timeout=timeout, what="the --rdb stream to reach the pause")
        if not self.paused():
            raise AssertionError(f"the backup ended before streaming: {pending.result()}")

    def release(self) -> None:
        (self.ctl / "release").touch()


def open_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    return s3.list_multipart_uploads(Bucket=bucket, Prefix=PREFIX).get("Uploads", [])


def object_keys(s3: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


# --------------------------------------------------------------------------- framing limits


def _padded_status(length: int) -> bytes:
    """A valid status request padded with JSON whitespace to exactly `length` bytes."""
    assert length >= len(STATUS_LINE)
    return STATUS_LINE + b" " * (length - len(STATUS_LINE))


@pytest.mark.parametrize(
    ("tail", "half_close"),
    [(b"\n", False), (b"", False), (b"", True)],
    ids=["newline", "no-newline-open", "no-newline-eof"],
)
def test_request_over_one_mib_is_refused(agent, tail, half_close):
    a = agent()
    big = _padded_status(MAX_REQUEST + 4096) + tail
    started = time.monotonic()
    resp = a.request(raw=big, timeout=30, half_close=half_close)
    assert_framed(resp)
    err = resp.expect_error("request-too-large")
    # Refused from the first MiB: the agent neither waits for the rest nor for EOF.
    assert time.monotonic() - started < 10
    assert "1048576" in err.message or "MiB" in err.message, err
    assert assert_serving(a)["agent-version"]


def test_request_of_exactly_one_mib_is_served(agent):
    a = agent()
    resp = a.request(raw=_padded_status(MAX_REQUEST) + b"\n", timeout=30)
    assert_framed(resp)
    assert "agent-version" in resp.expect_ok()
    # One byte more is over the limit.
    over = a.request(raw=_padded_status(MAX_REQUEST + 1) + b"\n", timeout=30)
    over.expect_error("request-too-large")
    assert_serving(a)


# --------------------------------------------------------------------------- malformed input

MALFORMED = [
    # (raw line, code, words the message must contain)
    (b"{not json\n", "bad-request", ["JSON"]),
    (b"\xff\xfe\x00garbage\n", "bad-request", []),
    (b"[1, 2]\n", "bad-request", []),
    (b'"status"\n', "bad-request", []),
    (b"null\n", "bad-request", []),
    (b'{"op": "status"}\n', "bad-request", ['"v"']),
    (b'{"v": 2, "op": "status"}\n', "bad-request", ["version"]),
    (b'{"v": "1", "op": "status"}\n', "bad-request", ["version"]),
    (b'{"v": 1}\n', "bad-request", ['"op"']),
    (b'{"v": 1, "op": 7}\n', "bad-request", ['"op"']),
    (b'{"v": 1, "op": "status", "extra": 1}\n', "bad-request", ["extra"]),
    (b'{"v": 1, "op": "status", "params": [1]}\n', "bad-request", ["params"]),
    (b'{"v": 1, "op": "status"} {"v": 1}\n', "bad-request", []),
    (b'{"v": 1, "op": "drop-database"}\n', "unknown-op", ["drop-database"]),
    (b'{"v": 1, "op": "Status"}\n', "unknown-op", []),
    (b"\n", "bad-request", ["empty"]),
    (b"\r\n", "bad-request", []),
]


def test_malformed_requests_get_errors_and_the_server_carries_on(agent):
    a = agent()
    for raw, code, words in MALFORMED:
        resp = a.request(raw=raw, timeout=30)
        assert_framed(resp)
        err = resp.expect_error(code)
        for word in words:
            assert word in err.message, (raw, err)
        assert a.alive(), raw
    assert_serving(a)


def test_bad_parameters_name_the_field(agent, valkey_server, moto, moto_bucket):
    a = agent()
    server = valkey_server("valkey8")
    good = configure_params(server, moto, moto_bucket)

    def bad(op: str, params: Any, field: str) -> None:
        resp = a.request(op, params, timeout=60)
        assert_framed(resp)
        err = resp.expect_error("bad-request")
        assert field in err.message, (op, params, err)

    bad("create-backup", {"nope": 1}, "nope")
    bad("status", {"verbose": True}, "verbose")
    bad(
        "configure",
        {**good, "s3": {**good["s3"], "bucket": "Not_A_Bucket"}},
        "s3.bucket",
    )
    bad("configure", {**good, "cluster": "../escape"}, "cluster")
    bad("configure", {**good, "unit": "valkey"}, "unit")
    bad(
        "configure",
        {**good, "valkey": {**good["valkey"], "cli": "relative/cli"}},
        "valkey.cli",
    )
    bad(
        "configure",
        {**good, "backup": {"part-size-bytes": 1024}},
        "backup.part-size-bytes",
    )
    bad("configure", {**good, "typo-section": {}}, "typo-section")
    no_cluster = {k: v for k, v in good.items() if k != "cluster"}
    bad("configure", no_cluster, "cluster")
    # A refused configure stores nothing.
    assert assert_serving(a)["configured"] is False

    a.request("configure", good, timeout=60).expect_ok()
    bad("list-backups", {"cluster": "../x"}, "cluster")
    bad("list-backups", {"cluster": "a/b"}, "cluster")
    bad("list-backups", {"clusters": "a.b"}, "clusters")
    # The good configuration survived the bad requests.
    listed = a.request("list-backups", timeout=60).expect_ok()
    assert listed == {"cluster": CLUSTER, "backups": [], "total": 0, "offset": 0, "counts": {}}
    status = assert_serving(a)
    assert status["configured"] is True and status["cluster"] == CLUSTER


def test_silent_and_slow_clients_do_not_stop_the_server(agent):
    a = agent()
    # Connects and closes without sending anything, many times.
    for _ in range(20):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(a.socket_path))
    # Sends half a request and goes away.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(a.socket_path))
        s.sendall(b'{"v": 1, "op": "sta')
    # A request without its newline, then EOF: one final line either way.
    resp = a.request(raw=STATUS_LINE, half_close=True, timeout=30)
    assert_framed(resp)
    # A client that sends part of a line and stays connected holds no one else up.
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        held.connect(str(a.socket_path))
        held.sendall(b'{"v": 1, ')
        started = time.monotonic()
        assert_serving(a)
        assert time.monotonic() - started < 5
    finally:
        held.close()
    # Two requests on one connection: only the first is answered, then the agent closes.
    two = a.request(raw=STATUS_LINE + b"\n" + STATUS_LINE + b"\n", timeout=30)
    assert_framed(two)
    assert two.ok and len(two.lines) == 1
    assert_serving(a)
    assert "panicked" not in a.log_text()


# --------------------------------------------------------------------------- peer uid


def _world_usable(path: Path) -> bool:
    """Whether uid `nobody` can execute `path` (o+x on the file and every parent)."""
    path = path.resolve()
    if not path.is_file() or not path.stat().st_mode & stat.S_IXOTH:
        return False
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)


def _python_for_nobody() -> str:
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if _world_usable(Path(candidate)):
            return candidate
    pytest.fail("no Python interpreter that uid 65534 can run (tried /usr/bin/python3)")


PEER_CLIENT = textwrap.dedent(
    """\
    import json, os, socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    try:
        s.connect(sys.argv[1])
    except OSError as exc:
        print(json.dumps({"uid": os.getuid(), "connect-errno": exc.errno}))
        sys.exit(0)
    try:
        s.sendall(sys.argv[2].encode() + b"\\n")
    except OSError:
        pass  # the agent may answer and close before reading
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    print(json.dumps({"uid": os.getuid(), "reply": data.decode(errors="replace")}))
    """
)


def _ask_as_nobody(
    python: str, sock: Path, op: str = "status", params: dict[str, Any] | None = None
) -> dict[str, Any]:
    request = json.dumps({"v": 1, "op": op, "params": params or {}})
    res = subprocess.run(
        [python, "-I", "-c", PEER_CLIENT, str(sock), request],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["uid"] == NOBODY
    return out


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory under /tmp that uid 65534 can traverse (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="vb-peer-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_peer_with_another_uid_is_refused(world_dir):
    python = _python_for_nobody()
    a = Agent(world_dir / "a")
    allowing = Agent(world_dir / "b", extra_args=["--allow-uid", str(NOBODY)])
    try:
        a.start()
        assert stat.S_IMODE(a.socket_path.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(a.socket_path.stat().st_mode)

        # The file mode alone keeps uid 65534 out.
        out = _ask_as_nobody(python, a.socket_path)
        assert out.get("connect-errno") == 13, out  # EACCES

        # Loosen the mode by accident: SO_PEERCRED still refuses the peer.
        a.socket_path.chmod(0o666)
        out = _ask_as_nobody(python, a.socket_path)
        lines = [json.loads(line) for line in out["reply"].splitlines() if line.strip()]
        assert len(lines) == 1, out
        assert lines[0]["event"] == "error" and lines[0]["code"] == "permission-denied", lines
        assert "peer_uid=65534" in a.log_text()

        # Root is still served, and the agent is fine.
        assert_serving(a)

        # Control: an agent that allows uid 65534 serves the very same client (its socket
        # is 0666: the peer check keeps everyone else out).
        allowing.start()
        assert stat.S_IMODE(allowing.socket_path.stat().st_mode) == 0o666
        out = _ask_as_nobody(python, allowing.socket_path)
        lines = [json.loads(line) for line in out["reply"].splitlines() if line.strip()]
        assert lines and lines[-1]["event"] == "result", out
        assert "agent-version" in lines[-1]["data"]
    finally:
        a.cleanup()
        allowing.cleanup()


# --------------------------------------------------------------------------- persistence


def test_configuration_survives_a_restart(agent, valkey_server, moto, moto_bucket):
    server = valkey_server("valkey8")
    with server.client() as c:
        c.mset({f"k{i}": f"v{i}" for i in range(100)})
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="persist.valkey")
    result = a.request("configure", params, timeout=60).expect_ok()
    assert result["configured"] is True and result["cluster"] == "persist.valkey"

    config = a.state_dir / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(a.state_dir.stat().st_mode) == 0o700
    assert json.loads(config.read_text())["cluster"] == "persist.valkey"
    # No temp files left next to it (statefile.rs names them <file>.<pid>-<n>.tmp).
    assert [p.name for p in a.state_dir.iterdir() if p.name.endswith(".tmp")] == []

    # A write an agent was killed in the middle of leaves a temp file under a pid that is
    # gone; the restarted agent removes it before it answers, and nothing else.
    ended = subprocess.Popen(["true"])
    ended.wait()
    leftover = a.state_dir / f"metrics.json.{ended.pid}-0.tmp"
    leftover.write_bytes(b"{")
    other = a.state_dir / "notes.tmp"
    other.write_bytes(b"not ours")

    old_pid = a.pid
    a.restart()
    assert a.pid != old_pid
    status = assert_serving(a)
    assert not leftover.exists()
    assert other.read_bytes() == b"not ours"
    other.unlink()
    assert status["configured"] is True and status["s3-configured"] is True
    assert status["cluster"] == "persist.valkey"
    assert status["bucket"] == moto_bucket
    assert status["unit"] == "valkey/0"

    backup = a.request("create-backup", timeout=120)
    assert_framed(backup)
    data = backup.expect_ok()
    assert data["cluster"] == "persist.valkey"
    keys = moto.client().list_objects_v2(
        Bucket=moto_bucket, Prefix=f"valkey/persist.valkey/{data['backup-id']}/"
    )
    names = sorted(o["Key"].rsplit("/", 1)[1] for o in keys.get("Contents", []))
    assert names == ["data.rdb", "manifest.json"]
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_during_a_backup_cancels_it_cleanly(
    agent, valkey_server, moto, moto_bucket, tmp_path, process_argvs
):
    server = valkey_server("valkey8")
    fill_random(server, 14)
    slow = SlowCli(tmp_path, server.cli, pause_after=7 * MiB)
    a = agent()
    params = configure_params(server, moto, moto_bucket, backup={"part-size-bytes": PART_SIZE})
    params["valkey"].update(cli=str(slow.path), source="cli")
    a.request("configure", params, timeout=60).expect_ok()
    s3 = moto.client()

    pending = a.request_async("create-backup", timeout=120)
    slow.wait_paused(a, pending)
    # The first 5 MiB part is on its way: a multipart upload is open.
    uploads = wait_until(
        lambda: open_uploads(s3, moto_bucket),
        timeout=30,
        what="the multipart upload to open",
    )
    assert len(uploads) == 1 and uploads[0]["Key"].endswith("/data.rdb")
    backup_id = uploads[0]["Key"][len(PREFIX) :].split("/")[0]
    assert rdb_processes(process_argvs, server.port), "the cli should be streaming now"
    assert not pending.done()

    started = time.monotonic()
    code = a.stop(timeout=30)
    took = time.monotonic() - started
    resp = pending.result(timeout=30)
    assert_framed(resp)
    err = resp.expect_error("cancelled")
    assert "shutting down" in err.message or "cancel" in err.message
    assert code == 0, a.proc.log_tail() if a.proc else ""
    assert took < 10, f"agent took {took:.1f}s to stop"
    assert resp.events, "no progress event before the cancel"
    for event in resp.events:
        assert event.get("backup-id") == backup_id, event

    # Nothing partial in the bucket; the failure is recorded.
    keys = object_keys(s3, moto_bucket)
    assert f"{PREFIX}{backup_id}/data.rdb" not in keys, keys
    assert not any(k.endswith("/data.rdb") for k in keys), keys
    assert f"{PREFIX}{backup_id}/manifest.json" not in keys
    assert open_uploads(s3, moto_bucket) == []
    failure = json.loads(
        s3.get_object(Bucket=moto_bucket, Key=f"{PREFIX}{backup_id}/failure.json")["Body"].read()
    )
    assert failure["code"] == "cancelled", failure
    assert failure["backup-id"] == backup_id

    # The cli (and the wrapper around it) are gone, and so is the socket.
    wait_until(
        lambda: not rdb_processes(process_argvs, server.port),
        timeout=5,
        what="the --rdb processes to go away",
        on_timeout=lambda: f"left: {rdb_processes(process_argvs, server.port)}",
    )
    assert not [argv for _, argv in process_argvs() if str(slow.path) in argv]
    assert not a.socket_path.exists()


def test_sigterm_is_not_held_up_by_a_silent_client(agent):
    a = agent()
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        silent.connect(str(a.socket_path))
        silent.sendall(b'{"v": 1, ')
        assert_serving(a)  # the half-sent request is being read by now
        started = time.monotonic()
        code = a.stop(timeout=5)  # AssertionError (and SIGKILL) when it hangs
        assert code == 0
        assert time.monotonic() - started < 5
        assert not a.socket_path.exists()
    finally:
        silent.close()


# --------------------------------------------------------------------------- busy


def test_second_backup_is_busy_and_names_the_running_one(
    agent, valkey_server, moto, moto_bucket, tmp_path
):
    server = valkey_server("valkey8")
    fill_random(server, 3)
    slow = SlowCli(tmp_path, server.cli, pause_after=MiB)
    a = agent()
    params = configure_params(server, moto, moto_bucket)
    params["valkey"].update(cli=str(slow.path), source="cli")
    a.request("configure", params, timeout=60).expect_ok()

    first = a.request_async("create-backup", timeout=120)
    try:
        slow.wait_paused(a, first)

        status = assert_serving(a)
        assert status["busy"] is True, status
        running = status["running"]
        assert running["op"] == "create-backup"
        backup_id = running["backup-id"]
        assert backup_id and running["started-at"]

        second = a.request("create-backup", timeout=60)
        assert_framed(second)
        err = second.expect_error("busy")
        assert backup_id in err.message, err
        # A refused request leaves no trace in the bucket.
        keys = object_keys(moto.client(), moto_bucket)
        assert all(k.startswith(f"{PREFIX}{backup_id}/") for k in keys), keys

        cli = a.cli("create-backup", timeout=60)
        assert cli.returncode != 0
        assert "busy" in cli.stderr and backup_id in cli.stderr, cli.stderr
        assert not first.done()
    finally:
        slow.release()

    done = first.result(timeout=120)
    assert_framed(done)
    data = done.expect_ok()
    assert data["backup-id"] == backup_id
    assert done.events and all(e.get("backup-id") == backup_id for e in done.events)

    status = assert_serving(a)
    assert status["busy"] is False and status["running"] is None
    assert status["last-backup"]["backup-id"] == backup_id
    assert status["last-backup"]["status"] == "finished"

    # Once released, the next backup runs.
    again = a.request("create-backup", timeout=120)
    assert_framed(again)
    assert again.expect_ok()["backup-id"] != backup_id


def _last_line(out: dict[str, Any]) -> dict[str, Any]:
    lines = [json.loads(line) for line in out["reply"].splitlines() if line.strip()]
    assert lines, out
    return lines[-1]


def test_an_allowed_uid_is_an_operator_never_an_admin(world_dir, tmp_path):
    # --allow-uid may read and back up, but never configure (it names the executable root
    # runs), restore, delete, or name an executable for verify --load.
    python = _python_for_nobody()
    a = Agent(world_dir / "op", extra_args=["--allow-uid", str(NOBODY)])
    try:
        a.start()
        config_before = (a.state_dir / "config.json").exists()
        refused = [
            ("configure", {"cluster": "x.y", "unit": "x/0", "valkey": {"cli": "/tmp/evil"}}),
            ("restore-backup", {"step": "prepare", "backup-id": "20200101T000000Z-v-0-abcdef"}),
            ("prune-backups", {"keep-last": 1, "confirm": True}),
            ("verify-backup", {"backup-id": "20200101T000000Z-v-0-abcdef", "server": "/tmp/x"}),
        ]
        for op, params in refused:
            last = _last_line(_ask_as_nobody(python, a.socket_path, op, params))
            assert last["event"] == "error" and last["code"] == "permission-denied", (op, last)
            assert "reserved to root" in last["message"]
        assert (a.state_dir / "config.json").exists() == config_before
        # Allowed ops reach the op itself (here: not configured yet), not the access check.
        for op, params in [("list-backups", {}), ("prune-backups", {"keep-last": 1})]:
            last = _last_line(_ask_as_nobody(python, a.socket_path, op, params))
            assert last["event"] == "error" and last["code"] == "not-configured", (op, last)
        assert "refused operation" in a.log_text()
        # Root still configures.
        assert_serving(a)
    finally:
        a.cleanup()
