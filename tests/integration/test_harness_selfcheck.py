"""Self-checks of the integration harness.

Each real server starts and behaves as the suite assumes, so a failing product test can
be trusted to point at the product.

Run: python -m pytest tests/integration/test_harness_selfcheck.py -q
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from harness import (
    SERVER_KINDS,
    Agent,
    Components,
    MotoServer,
    assert_same_dataset,
    dataset_fingerprint,
    fingerprint_diff,
    load_dataset,
)
from harness.agent import AgentProtocolError
from harness.s3proxy import S3Proxy
from harness.servers import _s3_client

MiB = 1024 * 1024
VERSION_PREFIX = {"valkey8": "8.1.", "valkey9": "9.1.", "redis7": "7.0."}


def _error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


# --------------------------------------------------------------------------- components


def test_missing_component_fails_with_install_hint(components):
    for kind in SERVER_KINDS:
        assert components.server_for(kind).is_file()
        assert components.cli_for(kind).is_file()
    with pytest.raises(pytest.fail.Exception, match=r"scripts/setup\.sh --garage-only"):
        Components().require("garage")


# --------------------------------------------------------------------------- Valkey / Redis


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_server_starts_with_password(valkey_server, kind):
    import valkey

    server = valkey_server(kind, password="s3cret-pw")
    assert server.version().startswith(VERSION_PREFIX[kind])
    with server.client() as c:
        assert c.ping()
        assert c.execute_command("DEBUG", "DIGEST") == b"0" * 40
    wrong = valkey.Valkey(host=server.host, port=server.port, password="nope")
    with pytest.raises(valkey.exceptions.AuthenticationError):
        wrong.ping()
    # The matching cli reaches it with the password in the environment only.
    res = server.run_cli("PING")
    assert res.returncode == 0 and res.stdout.strip() == b"PONG", res


def test_acl_user_and_extra_args(valkey_server):
    import valkey

    server = valkey_server(
        "valkey8",
        username="backup",
        password="pw-1",
        extra_args=["--appendonly", "yes"],
    )
    with server.client() as c:
        assert c.acl_whoami() == "backup"
        assert c.config_get("appendonly") == {"appendonly": "yes"}
    anonymous = valkey.Valkey(host=server.host, port=server.port)
    with pytest.raises(valkey.exceptions.ValkeyError):
        anonymous.ping()


def test_dataset_is_large_fast_and_deterministic(valkey_server, tmp_path):
    a = valkey_server("valkey8")
    info = load_dataset(a, 20, seed=7)
    assert set(info.keys_per_db) == {0, 1, 3}
    rdb = a.dump_rdb(tmp_path / "a.rdb")
    assert 15 * MiB < rdb.stat().st_size < 25 * MiB
    b = valkey_server("valkey8")
    load_dataset(b, 20, seed=7)
    assert_same_dataset(
        dataset_fingerprint(a, per_key=False), dataset_fingerprint(b, per_key=False)
    )


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_rdb_round_trip_keeps_fingerprint(valkey_server, tmp_path, kind):
    source = valkey_server(kind, password="pw")
    load_dataset(source, 2)
    before = dataset_fingerprint(source)
    assert set(before.keyspace) == {0, 1, 3}
    assert all(expires > 0 for _, expires in before.keyspace.values())

    # A FILE target: `--rdb -` would add diskless mode's 40-byte EOF marker.
    rdb = source.dump_rdb(tmp_path / "dump.rdb")
    assert rdb.read_bytes()[:5] in (b"REDIS", b"VALKE")

    restored = valkey_server.from_rdb(kind, rdb)
    after = dataset_fingerprint(restored)
    assert_same_dataset(before, after)

    # Changing a single key in db 3 changes DEBUG DIGEST and the diff names the key.
    with restored.client(3) as c:
        c.set(b"text:0", b"changed")
    changed = dataset_fingerprint(restored)
    assert changed.digest != before.digest
    diff = fingerprint_diff(before, changed)
    assert any("db3 b'text:0': value differs" in line for line in diff), diff
    with pytest.raises(AssertionError, match="text:0"):
        assert_same_dataset(before, changed)


@pytest.mark.parametrize(("src", "dst"), [("redis7", "valkey9"), ("valkey8", "valkey9")])
def test_cross_version_restore_compares_logically(valkey_server, tmp_path, src, dst):
    source = valkey_server(src)
    load_dataset(source, 1)
    rdb = source.dump_rdb(tmp_path / "dump.rdb")
    restored = valkey_server.from_rdb(dst, rdb)
    assert_same_dataset(
        dataset_fingerprint(source, logical=True),
        dataset_fingerprint(restored, logical=True),
    )


def test_unloadable_rdb_fails_startup_with_log(valkey_server, tmp_path):
    from harness import StartupError

    bad = tmp_path / "bad.rdb"
    bad.write_bytes(b"REDIS0011" + b"\x00" * 64)
    with pytest.raises(StartupError) as exc:
        valkey_server.from_rdb("valkey8", bad)
    assert "exited" in str(exc.value)


# --------------------------------------------------------------------------- moto


def test_moto_put_get_and_object_lock(moto: MotoServer, moto_bucket):
    s3 = moto.client()
    s3.put_object(Bucket=moto_bucket, Key="a/b", Body=b"hello")
    assert s3.get_object(Bucket=moto_bucket, Key="a/b")["Body"].read() == b"hello"
    # Conditional write, as the agent uses for write-once objects.
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=moto_bucket, Key="a/b", Body=b"again", IfNoneMatch="*")
    assert _error_code(exc) in ("PreconditionFailed", "412")

    lock = moto.create_object_lock_bucket(mode="COMPLIANCE", days=1)
    body = b"locked"
    md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
    s3.put_object(Bucket=lock, Key="x", Body=body, ContentMD5=md5)
    assert moto.delete_attempts(lock) == []
    version = moto.object_versions(lock)["Versions"][0]["VersionId"]
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=lock, Key="x", VersionId=version)
    attempts = moto.delete_attempts(lock)
    assert [(r.method, r.key) for r in attempts] == [("DELETE", "x")]
    assert attempts[0].status == 403
    assert moto.object_versions(lock)["DeleteMarkers"] == []


def test_proxy_restamps_the_store_times_of_chosen_keys_only(moto: MotoServer, moto_bucket):
    s3 = moto.client()
    for key in ("old/a", "new/b"):
        s3.put_object(Bucket=moto_bucket, Key=key, Body=b"x")
    s3.create_multipart_upload(Bucket=moto_bucket, Key="old/c")
    s3.create_multipart_upload(Bucket=moto_bucket, Key="new/d")
    when = dt.datetime(2020, 1, 1, 0, 5, tzinfo=dt.UTC)
    with S3Proxy(moto.endpoint) as proxy:
        proxy.restamp(lambda key: when if key.startswith("old/") else None)
        via = _s3_client(proxy.endpoint, moto.region, moto.access_key, moto.secret_key)
        listed = {
            o["Key"]: o["LastModified"] for o in via.list_objects_v2(Bucket=moto_bucket)["Contents"]
        }
        assert listed["old/a"] == when
        assert listed["new/b"] > when + dt.timedelta(days=365)
        versions = {
            v["Key"]: v["LastModified"]
            for v in via.list_object_versions(Bucket=moto_bucket)["Versions"]
        }
        assert versions["old/a"] == when and versions["new/b"] != when
        uploads = {
            u["Key"]: u["Initiated"]
            for u in via.list_multipart_uploads(Bucket=moto_bucket)["Uploads"]
        }
        assert uploads["old/c"] == when and uploads["new/d"] != when
        assert via.head_object(Bucket=moto_bucket, Key="old/a")["LastModified"] == when
        got = via.get_object(Bucket=moto_bucket, Key="old/a")
        assert got["LastModified"] == when and got["Body"].read() == b"x"
        assert via.head_object(Bucket=moto_bucket, Key="new/b")["LastModified"] != when
    # The store itself is untouched.
    assert s3.head_object(Bucket=moto_bucket, Key="old/a")["LastModified"] != when


def test_moto_auth_rejects_bad_and_restricted_keys(moto_auth: MotoServer):
    bucket = moto_auth.create_bucket()
    moto_auth.client().put_object(Bucket=bucket, Key="k", Body=b"v")

    unknown = moto_auth.unknown_credentials()
    with pytest.raises(ClientError) as exc:
        moto_auth.client(unknown.access_key, unknown.secret_key).put_object(
            Bucket=bucket, Key="k2", Body=b"v"
        )
    assert _error_code(exc) == "InvalidAccessKeyId"

    with pytest.raises(ClientError) as exc:
        moto_auth.client(moto_auth.access_key, "wrong-secret").get_object(Bucket=bucket, Key="k")
    assert _error_code(exc) == "SignatureDoesNotMatch"

    limited = moto_auth.create_key(deny=["s3:CreateBucket"])
    s3 = moto_auth.client(limited.access_key, limited.secret_key)
    s3.put_object(Bucket=bucket, Key="k3", Body=b"v")
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="not-allowed-bucket")
    assert _error_code(exc) == "AccessDenied"
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket="not-allowed-bucket")
    assert _error_code(exc) in ("404", "NoSuchBucket")


def test_moto_tls_needs_the_private_ca(moto_tls: MotoServer):
    from botocore.exceptions import SSLError

    assert moto_tls.endpoint.startswith("https://127.0.0.1:")
    assert moto_tls.ca is not None and "BEGIN CERTIFICATE" in moto_tls.ca.ca_pem
    bucket = moto_tls.create_bucket()
    moto_tls.client().put_object(Bucket=bucket, Key="k", Body=b"tls")
    untrusting = moto_tls.client(verify=None)
    with pytest.raises(SSLError):
        untrusting.get_object(Bucket=bucket, Key="k")


# --------------------------------------------------------------------------- Garage


def test_garage_put_get(garage):
    s3 = garage.client()
    s3.put_object(Bucket=garage.bucket, Key="hello.txt", Body=b"garage")
    assert s3.get_object(Bucket=garage.bucket, Key="hello.txt")["Body"].read() == b"garage"
    other = garage.create_key()
    with pytest.raises(ClientError) as exc:
        garage.client(other.access_key, other.secret_key).put_object(
            Bucket=garage.bucket, Key="nope", Body=b"x"
        )
    assert _error_code(exc) in ("AccessDenied", "403")


# --------------------------------------------------------------------------- argv scans


def test_argv_sampler_sees_short_lived_processes(argv_sampler, process_argvs):
    assert any(pid == os.getpid() for pid, _ in process_argvs())
    marker = "vb-selfcheck-secret-" + os.urandom(4).hex()
    with argv_sampler() as sampler:
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.2)", marker], check=True)
    assert sampler.leaks([marker])
    assert not sampler.leaks(["never-present-" + marker[::-1]])


# --------------------------------------------------------------------------- agent harness

# A stand-in agent that speaks docs/protocol.md, to check the harness's framing code
# independently of the real agent's progress.
FAKE_AGENT = textwrap.dedent(
    """\
    #!{python}
    import json, os, signal, socket, sys
    args = sys.argv[1:]
    sock_path = args[args.index("--socket") + 1]
    if "serve" not in args:
        s = socket.socket(socket.AF_UNIX); s.connect(sock_path)
        s.sendall(json.dumps({{"v": 1, "op": args[-1]}}).encode() + b"\\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        sys.stdout.write(data.decode()); sys.exit(0)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    srv = socket.socket(socket.AF_UNIX); srv.bind(sock_path); srv.listen()
    while True:
        conn, _ = srv.accept()
        line = conn.makefile("rb").readline()
        try:
            req = json.loads(line)
        except ValueError:
            conn.sendall(b'{{"event": "error", "code": "bad-request", "message": "bad json"}}\\n')
        else:
            if req.get("op") == "status":
                conn.sendall(b'{{"event": "result", "data": {{"agent-version": "fake"}}}}\\n')
            elif req.get("op") == "create-backup":
                for i in range(3):
                    event = {{"event": "progress", "bytes-done": i}}
                    conn.sendall(json.dumps(event).encode() + b"\\n")
                conn.sendall(b'{{"event": "result", "data": {{"backup-id": "x"}}}}\\n')
            elif req.get("op") == "hang-up":
                pass
            else:
                conn.sendall(b'{{"event": "error", "code": "unknown-op", "message": "no"}}\\n')
        conn.close()
    """
)


@pytest.fixture
def fake_agent_bin(tmp_path: Path) -> Path:
    path = tmp_path / "fake-agent"
    path.write_text(FAKE_AGENT.format(python=sys.executable))
    path.chmod(0o755)
    return path


def test_agent_harness_speaks_the_protocol(agent, fake_agent_bin):
    a = agent(binary=fake_agent_bin)
    assert a.request("status").expect_ok() == {"agent-version": "fake"}
    backup = a.request("create-backup", {})
    assert [e["bytes-done"] for e in backup.events] == [0, 1, 2]
    assert backup.result == {"backup-id": "x"} and backup.error is None
    assert a.request("nope").expect_error("unknown-op").message == "no"
    assert a.request(raw=b"{not json\n").expect_error("bad-request")
    with pytest.raises(AgentProtocolError):
        a.request("hang-up")
    assert a.request_async("status").result(timeout=30).ok
    cli = a.cli("status")
    assert cli.returncode == 0 and '"agent-version": "fake"' in cli.stdout
    assert a.stop() == 0
    a.start()
    a.kill()
    assert not a.alive()
    assert a.group_pids() == []


def test_missing_agent_binary_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("VB_AGENT_BIN", str(tmp_path / "no-such-agent"))
    with pytest.raises(pytest.fail.Exception, match="cargo build"):
        Agent(tmp_path / "a").start()


def test_real_agent_answers_status(agent):
    """Fails (with a build hint) until the agent binary is built."""
    status = agent().request("status").expect_ok()
    assert "agent-version" in status
