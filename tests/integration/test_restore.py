"""restore-backup and verify-backup against real servers: the data comes back, exactly,
and a damaged backup is refused before anything is touched."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess

import pytest
from checks import bucket_state, failed_backup_id, get_json, prefix_of
from harness import (
    assert_same_dataset,
    configure_params,
    dataset_fingerprint,
    load_dataset,
    wait_until,
)

MiB = 1024 * 1024


def _change_everything(server) -> None:
    """Make the live data differ from the backup in every database."""
    for db in (0, 1, 3):
        c = server.client(db)
        c.flushdb()
        c.set(f"after-backup-{db}", "x")


def _save(server) -> None:
    """SAVE once the fork that served the backup's replication stream has exited (it can
    outlive the transfer by a moment, and SAVE refuses to run beside it)."""
    c = server.client()
    wait_until(
        lambda: c.info("persistence")["rdb_bgsave_in_progress"] == 0,
        timeout=30,
        what="the replication fork to exit",
    )
    c.save()


def _restore(a, server, backup_id, **extra):
    """prepare → stop → commit → start → finish, as the charm drives it."""
    prepared = a.request(
        "restore-backup", {"step": "prepare", "backup-id": backup_id, **extra}
    ).expect_ok()
    server.stop()
    committed = a.request(
        "restore-backup", {"step": "commit", "restore-id": prepared["restore-id"]}
    ).expect_ok()
    server.start_again()
    finished = a.request(
        "restore-backup", {"step": "finish", "restore-id": prepared["restore-id"]}
    ).expect_ok()
    return prepared, committed, finished


def test_round_trip_restores_exactly_the_backed_up_dataset(
    server_kind, valkey_server, agent, moto, moto_bucket
):
    server = valkey_server(server_kind, password="restore-pw")
    load_dataset(server, size_mb=6, dbs=(0, 1, 3), seed=21)
    expected = dataset_fingerprint(server)
    a = agent()
    a.request("configure", configure_params(server, moto, moto_bucket, cluster="rt.valkey"))
    backup = a.request("create-backup").expect_ok()
    _change_everything(server)
    assert dataset_fingerprint(server) != expected
    _save(server)  # the live dump that the restore must keep aside
    live = (server.dir / "dump.rdb").read_bytes()

    prepared, committed, finished = _restore(a, server, backup["backup-id"])
    assert prepared["size-bytes"] == backup["size-bytes"]
    assert prepared["sha256"] == backup["sha256"]
    assert_same_dataset(expected, dataset_fingerprint(server))
    assert finished["loaded"] is True
    assert finished["keys"] == {f"db{db}": n for db, (n, _) in expected.keyspace.items()}
    assert finished["keys-match"] is True
    # The replaced dump is kept beside the restored one, and no temp file is left.
    target = server.dir / "dump.rdb"
    assert committed["target"] == str(target)
    assert committed["previous"] == str(server.dir / "dump.rdb.pre-restore")
    assert (server.dir / "dump.rdb.pre-restore").read_bytes() == live
    assert not [p for p in os.listdir(server.dir) if p.endswith(".tmp")]
    # The lock is free again: a backup works right away.
    a.request("create-backup").expect_ok()


def test_restore_with_appendonly_makes_the_backup_the_live_data(
    valkey_server, agent, moto, moto_bucket
):
    server = valkey_server("valkey8", extra_args=["--appendonly", "yes"])
    load_dataset(server, size_mb=4, dbs=(0, 2), seed=5)
    expected = dataset_fingerprint(server)
    a = agent()
    a.request("configure", configure_params(server, moto, moto_bucket, cluster="aof.valkey"))
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    _change_everything(server)
    server.client().bgrewriteaof()  # the AOF now holds the changed data
    wait_until(
        lambda: server.client().info("persistence")["aof_rewrite_in_progress"] == 0,
        timeout=30,
        what="AOF rewrite",
    )

    prepared, committed, finished = _restore(a, server, backup_id)
    assert finished["keys-match"] is True
    assert prepared["appendonly"] is True
    assert committed["previous-aof"] == str(server.dir / "appendonlydir.pre-restore")
    assert_same_dataset(expected, dataset_fingerprint(server))
    assert server.client().info("persistence")["aof_enabled"] == 1
    # It stays the live data across another restart (the AOF now carries it).
    server.stop()
    server.start_again()
    assert_same_dataset(expected, dataset_fingerprint(server))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_object_is_refused_and_the_live_dump_untouched(
    damage, valkey_server, agent, moto, moto_bucket
):
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=3, seed=9)
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="bad.valkey")
    a.request("configure", params).expect_ok()
    backup = a.request("create-backup").expect_ok()
    _save(server)  # a live dump.rdb that must survive
    live = (server.dir / "dump.rdb").read_bytes()

    s3 = moto.client()
    data = bytearray(s3.get_object(Bucket=moto_bucket, Key=backup["data-key"])["Body"].read())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-1000:]
    s3.put_object(Bucket=moto_bucket, Key=backup["data-key"], Body=bytes(data))  # bit rot

    err = a.request(
        "restore-backup", {"step": "prepare", "backup-id": backup["backup-id"]}
    ).expect_error("stream-invalid")
    assert ("truncated" if damage == "truncate" else "corrupted") in err.message
    assert (server.dir / "dump.rdb").read_bytes() == live
    assert sorted(os.listdir(server.dir)) == sorted(["dump.rdb", "server.log"])
    a.request("create-backup").expect_ok()  # the lock was released

    verr = a.request("verify-backup", {"backup-id": backup["backup-id"]})
    verr.expect_error("stream-invalid")
    keys = [k for k in bucket_state(s3, moto_bucket, prefix_of(params)).keys if "/verify/" in k]
    assert len(keys) == 1
    record = get_json(s3, moto_bucket, keys[0])
    assert record["ok"] is False and record["code"] == "stream-invalid"
    listed = a.request("list-backups").expect_ok()["backups"]
    entry = next(b for b in listed if b["backup-id"] == backup["backup-id"])
    assert entry["last-verify"]["ok"] is False


def test_restore_into_another_cluster_never_writes_to_the_source_prefix(
    valkey_server, agent, moto, moto_bucket
):
    source = valkey_server("valkey9")
    load_dataset(source, size_mb=3, seed=13)
    expected = dataset_fingerprint(source)
    a = agent()
    src_params = configure_params(source, moto, moto_bucket, cluster="prod.valkey")
    a.request("configure", src_params).expect_ok()
    backup_id = a.request("create-backup").expect_ok()["backup-id"]

    target = valkey_server("valkey9")
    b = agent()
    dst_params = configure_params(target, moto, moto_bucket, cluster="staging.valkey")
    b.request("configure", dst_params).expect_ok()
    s3 = moto.client()
    before = bucket_state(s3, moto_bucket, prefix_of(src_params)).keys

    listed = b.request("list-backups", {"cluster": "prod.valkey"}).expect_ok()["backups"]
    assert [x["backup-id"] for x in listed] == [backup_id]
    _restore(b, target, backup_id, **{"source-cluster": "prod.valkey"})
    assert_same_dataset(expected, dataset_fingerprint(target))
    b.request("verify-backup", {"backup-id": backup_id, "source-cluster": "prod.valkey"})
    own = b.request("create-backup").expect_ok()

    assert bucket_state(s3, moto_bucket, prefix_of(src_params)).keys == before
    assert own["data-key"].startswith(prefix_of(dst_params))


def test_restore_refuses_a_replica_and_unfinished_backups(valkey_server, agent, moto, moto_bucket):
    primary = valkey_server("valkey8")
    primary.client().set("k", "v")
    a = agent()
    params = configure_params(primary, moto, moto_bucket, cluster="rep.valkey")
    a.request("configure", params).expect_ok()
    backup_id = a.request("create-backup").expect_ok()["backup-id"]

    replica = valkey_server("valkey8")
    replica.client().replicaof(primary.host, primary.port)
    b = agent()
    b.request("configure", configure_params(replica, moto, moto_bucket, cluster="rep.valkey"))
    err = b.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_error(
        "valkey-replica"
    )
    assert "primary" in err.message
    b.request("create-backup").expect_ok()  # refused restores release the lock

    bad = dict(params, valkey=dict(params["valkey"], password="wrong"))
    a.request("configure", bad).expect_ok()
    a.request("create-backup").expect_error("valkey-auth")
    failed = failed_backup_id(a)
    a.request("configure", params).expect_ok()
    err = a.request("restore-backup", {"step": "prepare", "backup-id": failed}).expect_error(
        "not-found"
    )
    assert "failed" in err.message
    a.request(
        "restore-backup", {"step": "prepare", "backup-id": "20200101T000000Z-valkey-0-abcdef"}
    ).expect_error("not-found")
    for bad_id in ("../x", "latest", "20200101T000000Z-valkey-0-abcdef/../../y"):
        a.request("restore-backup", {"step": "prepare", "backup-id": bad_id}).expect_error(
            "bad-request"
        )


def test_commit_needs_the_server_stopped_and_the_session_holds_the_lock(
    valkey_server, agent, moto, moto_bucket
):
    server = valkey_server("redis7", password="pw")
    server.client().set("k", "v")
    a = agent()
    a.request("configure", configure_params(server, moto, moto_bucket, cluster="s.redis"))
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    prepared = a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_ok()
    rid = prepared["restore-id"]
    err = a.request("create-backup").expect_error("busy")
    assert backup_id in err.message
    a.request("restore-backup", {"step": "commit", "restore-id": rid}).expect_error(
        "valkey-running"
    )
    a.request("restore-backup", {"step": "finish", "restore-id": rid}).expect_error("bad-request")
    a.request("restore-backup", {"step": "commit", "restore-id": "r0000dead"}).expect_error(
        "not-found"
    )
    aborted = a.request("restore-backup", {"step": "abort", "restore-id": rid}).expect_ok()
    assert aborted["committed"] is False
    assert not [p for p in os.listdir(server.dir) if p.endswith(".tmp")]
    a.request("create-backup").expect_ok()


def test_cli_restore_on_a_plain_machine(valkey_server, agent, moto, moto_bucket, tmp_path):
    # A server this test runs itself (daemonized), stopped and started by shell commands
    # exactly as an operator would give them to the CLI.
    probe = valkey_server("valkey8")
    port, binary, cli = probe.port, probe.server_bin, probe.cli
    probe.stop()
    data = tmp_path / "data"
    data.mkdir()
    pidfile = tmp_path / "server.pid"
    start = (
        f"{binary} --port {port} --bind 127.0.0.1 --dir {data} --save '' "
        f"--daemonize yes --pidfile {pidfile} --logfile {tmp_path}/server.log "
        f"--repl-diskless-sync-delay 0"
    )
    stop = (
        f"pid=$(cat {pidfile}); {cli} -p {port} shutdown nosave; "
        "while [ -e /proc/$pid ]; do sleep 0.05; done"
    )
    subprocess.run(["/bin/sh", "-c", start], check=True)
    try:
        import valkey

        c = valkey.Valkey(host="127.0.0.1", port=port)
        wait_until(lambda: c.ping(), timeout=10, what="daemonized server")
        c.mset({"a": "1", "b": "2"})
        a = agent()
        params = configure_params(probe, moto, moto_bucket, cluster="plain.valkey")
        params["valkey"]["port"] = port
        a.request("configure", params).expect_ok()
        backup_id = a.request("create-backup").expect_ok()["backup-id"]
        c.flushall()
        out = a.cli(
            "restore-backup",
            backup_id,
            "--stop-command",
            stop,
            "--start-command",
            start,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["keys"] == {"db0": 2}
        c = valkey.Valkey(host="127.0.0.1", port=port)
        assert c.mget("a", "b") == [b"1", b"2"]
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_verify_with_load_writes_a_record_and_list_shows_it(
    server_kind, valkey_server, agent, moto, moto_bucket
):
    server = valkey_server(server_kind)
    load_dataset(server, size_mb=3, dbs=(0, 5), seed=17)
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster=f"v.{server_kind}")
    a.request("configure", params).expect_ok()
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    verify = {"backup-id": backup_id, "load": True}
    if server_kind == "valkey9":
        # A Valkey 9 backup is VALKEY080, which the servers found by default on this
        # machine (beside the Valkey 8 cli, Debian's Redis 7) cannot load.
        verify["server"] = str(server.server_bin)
    result = a.request("verify-backup", verify).expect_ok()
    assert result["ok"] is True
    assert result["load"]["keys-match"] is True and result["load"]["keys-exact-at-backup"]
    record = get_json(moto.client(), moto_bucket, result["record-key"])
    assert record["ok"] is True and record["load"]["keys"] == result["load"]["keys"]
    assert result["record-key"].startswith(f"{prefix_of(params)}{backup_id}/verify/")
    entry = a.request("list-backups").expect_ok()["backups"][0]
    assert entry["last-verify"] == {"checked-at": record["checked-at"], "ok": True, "code": None}
    # A second run adds a second record; nothing is overwritten.
    a.request("verify-backup", {"backup-id": backup_id}).expect_ok()
    keys = bucket_state(moto.client(), moto_bucket, prefix_of(params)).keys
    assert sum("/verify/" in k for k in keys) == 2


def test_an_out_of_range_finish_timeout_is_refused_and_the_session_survives(
    valkey_server, agent, moto, moto_bucket
):
    server = valkey_server("valkey8")
    server.client().set("k", "v")
    a = agent()
    a.request("configure", configure_params(server, moto, moto_bucket, cluster="t.valkey"))
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    rid = a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_ok()[
        "restore-id"
    ]
    server.stop()
    a.request("restore-backup", {"step": "commit", "restore-id": rid}).expect_ok()
    server.start_again()
    for bad in (2**64 - 1, 0, 86_401):
        err = a.request(
            "restore-backup", {"step": "finish", "restore-id": rid, "timeout-seconds": bad}
        ).expect_error("bad-request")
        assert "timeout-seconds" in err.message
    # The committed session was not lost: finish still completes it.
    done = a.request("restore-backup", {"step": "finish", "restore-id": rid}).expect_ok()
    assert done["keys"] == {"db0": 1}


def test_a_restore_that_would_not_fit_is_refused_before_anything_is_written(
    valkey_server, agent, moto, moto_bucket, tmp_path
):
    # The server's dir is a small filesystem of its own: the backup plus the agent's
    # 64 MiB headroom does not fit there.
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=66m", "tmpfs", str(small)], check=True)
    try:
        server = valkey_server("valkey8", extra_args=["--dir", str(small)])
        load_dataset(server, size_mb=3, seed=2)
        a = agent()
        a.request("configure", configure_params(server, moto, moto_bucket, cluster="nf.valkey"))
        backup = a.request("create-backup").expect_ok()
        err = a.request(
            "restore-backup", {"step": "prepare", "backup-id": backup["backup-id"]}
        ).expect_error("no-space")
        assert str(small) in err.message and "nothing was changed" in err.message
        assert os.listdir(small) == []
        a.request("create-backup").expect_ok()  # the lock was released
    finally:
        valkey_server.stop_all()
        subprocess.run(["umount", str(small)], check=True)
