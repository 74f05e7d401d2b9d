"""Every way a backup can fail leaves no data object, no open upload, a failure record
(where the store can still be written), a free lock and a clear error code."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from checks import assert_failed_cleanly, bucket_state, failed_backup_id, prefix_of
from faults import cli_wrapper
from harness import MotoServer, configure_params, free_port, load_dataset

MiB = 1024 * 1024
PART = {"part-size-bytes": 5 * MiB}


def _lock_is_free(a) -> None:
    status = a.request("status").expect_ok()
    assert status["busy"] is False and status["running"] is None, status


def _no_cli_left(process_argvs, server) -> None:
    # Only this test's server counts: other suites on the machine run clis of their own.
    left = [
        (pid, argv) for pid, argv in process_argvs() if "--rdb" in argv and str(server.port) in argv
    ]
    details = []
    for pid, argv in left:
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue
        details.append(
            (pid, argv, [ln for ln in status.splitlines() if ln.startswith(("State", "PPid"))])
        )
    assert not details, details


@pytest.mark.parametrize("source", ["native", "cli"])
def test_wrong_valkey_password(source, valkey_server, agent, moto, moto_bucket):
    server = valkey_server("valkey8", password="right-pw")
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="pw.valkey", source=source)
    params["valkey"]["password"] = "wrong-pw"
    a.request("configure", params).expect_ok()
    err = a.request("create-backup").expect_error("valkey-auth")
    assert "credentials" in err.message and "wrong-pw" not in err.message
    backup_id = failed_backup_id(a)
    assert_failed_cleanly(moto.client(), moto_bucket, prefix_of(params), backup_id, "valkey-auth")
    _lock_is_free(a)


def test_missing_password_is_an_auth_error_too(valkey_server, agent, moto, moto_bucket):
    server = valkey_server("redis7", password="needed")
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="nopw.redis")
    del params["valkey"]["password"]
    a.request("configure", params).expect_ok()
    a.request("create-backup").expect_error("valkey-auth")


def test_unreachable_valkey(valkey_server, agent, moto, moto_bucket):
    server = valkey_server("valkey9")
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="down.valkey")
    params["valkey"]["port"] = free_port()  # nothing listens there
    a.request("configure", params).expect_ok()
    err = a.request("create-backup").expect_error("valkey-unreachable")
    assert str(params["valkey"]["port"]) in err.message
    backup_id = failed_backup_id(a)
    assert_failed_cleanly(
        moto.client(), moto_bucket, prefix_of(params), backup_id, "valkey-unreachable"
    )
    _lock_is_free(a)


def test_cli_output_that_is_not_an_rdb(valkey_server, agent, moto, moto_bucket, tmp_path):
    server = valkey_server("valkey8")
    server.client().set("k", "v")
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="junk.valkey")
    params["valkey"].update(cli=str(cli_wrapper(tmp_path, server.cli, "junk")), source="cli")
    a.request("configure", params).expect_ok()
    err = a.request("create-backup").expect_error("stream-invalid")
    assert "not an RDB" in err.message
    backup_id = failed_backup_id(a)
    assert_failed_cleanly(
        moto.client(), moto_bucket, prefix_of(params), backup_id, "stream-invalid"
    )
    _lock_is_free(a)


def test_cli_killed_mid_stream_aborts_the_started_upload(
    valkey_server, agent, moto, moto_bucket, tmp_path, process_argvs
):
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=16, seed=11)
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="killed.valkey", backup=PART)
    # 7 MiB reach the agent: one part is uploaded before the cli dies.
    params["valkey"]["cli"] = str(cli_wrapper(tmp_path, server.cli, "kill", after_bytes=7 * MiB))
    params["valkey"]["source"] = "cli"
    a.request("configure", params).expect_ok()
    resp = a.request("create-backup")
    err = resp.expect_error("valkey-error")
    assert "signal 9" in err.message
    backup_id = failed_backup_id(a)
    mine = [r for r in moto.requests(moto_bucket) if backup_id in r.path]
    assert any(r.method == "POST" and "uploads" in r.query_keys for r in mine), "upload started"
    assert any(r.method == "DELETE" and "uploadId" in r.query_keys for r in mine), "and aborted"
    failure = assert_failed_cleanly(
        moto.client(), moto_bucket, prefix_of(params), backup_id, "valkey-error"
    )
    assert failure["bytes-streamed"] >= 7 * MiB
    _lock_is_free(a)
    _no_cli_left(process_argvs, server)


def test_revoked_s3_keys(valkey_server, agent, moto_auth):
    server = valkey_server("valkey8")
    server.client().set("k", "v")
    bucket = moto_auth.create_bucket()
    user = f"revoked-{uuid.uuid4().hex[:8]}"
    creds = moto_auth.create_key(name=user)
    a = agent()
    params = configure_params(server, moto_auth, bucket, cluster="keys.valkey", credentials=creds)
    a.request("configure", params).expect_ok()
    moto_auth.iam_client().delete_access_key(UserName=user, AccessKeyId=creds.access_key)
    err = a.request("create-backup").expect_error("s3-access-denied")
    assert "access key" in err.message
    # The failure record cannot be written with revoked keys; nothing else may exist.
    # (moto's signature check mishandles a '/' in a listing prefix: list the whole bucket)
    state = bucket_state(moto_auth.client(), bucket)
    assert state.keys == {} and state.uploads == []
    _lock_is_free(a)


def test_wrong_s3_keys_are_refused_at_configure(valkey_server, agent, moto_auth):
    server = valkey_server("valkey8")
    bucket = moto_auth.create_bucket()
    a = agent()
    wrong_secret = dataclasses.replace(moto_auth.create_key(), secret_key="x" * 40)
    for creds in (moto_auth.unknown_credentials(), wrong_secret):
        params = configure_params(
            server, moto_auth, bucket, cluster="keys.valkey", credentials=creds
        )
        a.request("configure", params).expect_error("s3-access-denied")
    assert a.request("status").expect_ok()["configured"] is False


def test_missing_bucket_without_rights_to_create(valkey_server, agent, moto_auth, bucket_name):
    server = valkey_server("valkey8")
    creds = moto_auth.create_key(deny=["s3:CreateBucket"])
    a = agent()
    params = configure_params(
        server, moto_auth, bucket_name, cluster="nob.valkey", credentials=creds
    )
    err = a.request("configure", params).expect_error("s3-no-bucket")
    assert bucket_name in err.message and "cannot be created" in err.message
    assert a.request("status").expect_ok()["configured"] is False
    # With the right to create, configure makes the bucket.
    params = configure_params(server, moto_auth, bucket_name, cluster="nob.valkey")
    assert a.request("configure", params).expect_ok()["bucket-created"] is True


def test_s3_endpoint_down(valkey_server, agent, tmp_path, process_argvs):
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=8, seed=5)
    store = MotoServer(tmp_path / "moto-down").start()
    try:
        bucket = store.create_bucket()
        a = agent()
        params = configure_params(server, store, bucket, cluster="s3down.valkey", backup=PART)
        a.request("configure", params).expect_ok()
    finally:
        store.stop()
    err = a.request("create-backup").expect_error("s3-unreachable")
    assert store.endpoint in err.message
    _lock_is_free(a)
    _no_cli_left(process_argvs, server)
    # Nothing was left running: a second attempt fails the same way, not `busy`.
    a.request("create-backup").expect_error("s3-unreachable")


def test_bucket_removed_after_configure(valkey_server, agent, moto):
    server = valkey_server("valkey8")
    server.client().set("k", "v")
    bucket = moto.create_bucket()
    a = agent()
    a.request(
        "configure", configure_params(server, moto, bucket, cluster="gone.valkey")
    ).expect_ok()
    moto.client().delete_bucket(Bucket=bucket)
    err = a.request("create-backup").expect_error("s3-no-bucket")
    assert bucket in err.message


@pytest.mark.parametrize("op", ["create-backup", "list-backups"])
def test_ops_before_configure_say_what_to_do(agent, op):
    err = agent().request(op).expect_error("not-configured")
    assert "configure" in err.message


def test_configure_without_s3_keeps_valkey_and_refuses_backups(
    valkey_server, agent, moto, moto_bucket
):
    server = valkey_server("valkey8")
    a = agent()
    a.request(
        "configure", configure_params(server, moto, moto_bucket, cluster="rel.valkey")
    ).expect_ok()
    a.request("configure", configure_params(server, None, cluster="rel.valkey")).expect_ok()
    status = a.request("status").expect_ok()
    assert status["configured"] is True and status["s3-configured"] is False
    err = a.request("create-backup").expect_error("not-configured")
    assert "s3-integrator" in err.message


def test_a_stalled_stream_fails_and_frees_the_lock(
    valkey_server, agent, moto, moto_bucket, tmp_path, process_argvs
):
    # The cli sends 6 MiB and then nothing (the marker it waits for never appears): a
    # hung server must not hold the unit's lock forever.
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=10, seed=8)
    a = agent()
    params = configure_params(
        server,
        moto,
        moto_bucket,
        cluster="stall.valkey",
        backup={**PART, "stall-timeout-seconds": 1},
    )
    params["valkey"]["source"] = "cli"
    params["valkey"]["cli"] = str(
        cli_wrapper(
            tmp_path, server.cli, "pause", after_bytes=6 * MiB, marker=str(tmp_path / "never")
        )
    )
    a.request("configure", params).expect_ok()
    err = a.request("create-backup", timeout=60).expect_error("valkey-error")
    assert "no data from the cli for 1 s" in err.message
    backup_id = failed_backup_id(a)
    assert_failed_cleanly(moto.client(), moto_bucket, prefix_of(params), backup_id, "valkey-error")
    _lock_is_free(a)
    _no_cli_left(process_argvs, server)


@pytest.mark.parametrize("source", ["native", "cli"])
def test_acl_user_without_sync_rights_is_told_what_to_grant(
    source, valkey_server, agent, moto, moto_bucket
):
    server = valkey_server("valkey8", username="backup", password="acl-pw")
    server.client().execute_command("ACL", "SETUSER", "backup", "-sync", "-psync")
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="acl.valkey", source=source)
    a.request("configure", params).expect_ok()
    err = a.request("create-backup").expect_error("valkey-permission")
    assert "+sync" in err.message and "NOPERM" in err.message
    assert_failed_cleanly(
        moto.client(), moto_bucket, prefix_of(params), failed_backup_id(a), "valkey-permission"
    )
