"""Write-once: on an Object Lock bucket (versioned, default retention), successful and
failed backups leave every key with exactly one version and never attempt a delete."""

from __future__ import annotations

from checks import bucket_state, prefix_of
from faults import cli_wrapper
from harness import configure_params, load_dataset

MiB = 1024 * 1024


def test_object_lock_bucket_sees_one_version_per_key_and_no_delete(
    valkey_server, agent, moto, tmp_path
):
    server = valkey_server("valkey8", password="pw")
    load_dataset(server, size_mb=12, seed=2)
    bucket = moto.create_object_lock_bucket(mode="COMPLIANCE", days=1)
    a = agent()
    params = configure_params(
        server, moto, bucket, cluster="lock.valkey", backup={"part-size-bytes": 5 * MiB}
    )
    a.request("configure", params).expect_ok()
    finished = [a.request("create-backup").expect_ok()["backup-id"] for _ in range(2)]

    junk = dict(
        params,
        valkey=dict(
            params["valkey"], cli=str(cli_wrapper(tmp_path, server.cli, "junk")), source="cli"
        ),
    )
    a.request("configure", junk).expect_ok()
    a.request("create-backup").expect_error("stream-invalid")
    killed = dict(
        params,
        valkey=dict(
            params["valkey"],
            cli=str(cli_wrapper(tmp_path, server.cli, "kill", after_bytes=6 * MiB)),
            source="cli",
        ),
    )
    a.request("configure", killed).expect_ok()
    a.request("create-backup").expect_error("valkey-error")
    wrong_pw = dict(params, valkey=dict(params["valkey"], password="nope"))
    a.request("configure", wrong_pw).expect_ok()
    a.request("create-backup").expect_error("valkey-auth")

    versions = moto.object_versions(bucket)
    assert versions["DeleteMarkers"] == []
    per_key: dict[str, int] = {}
    for v in versions["Versions"]:
        per_key[v["Key"]] = per_key.get(v["Key"], 0) + 1
    assert per_key and all(n == 1 for n in per_key.values()), per_key
    assert moto.delete_attempts(bucket) == []

    listed = a.request("list-backups").expect_ok()["backups"]
    assert sorted(b["status"] for b in listed) == ["failed"] * 3 + ["finished"] * 2
    assert {b["backup-id"] for b in listed if b["status"] == "finished"} == set(finished)
    state = bucket_state(moto.client(), bucket, prefix_of(params))
    assert state.uploads == []
    assert sum(k.endswith("/data.rdb") for k in state.keys) == 2


def test_every_write_carries_content_md5_and_if_none_match(valkey_server, agent, moto, moto_bucket):
    server = valkey_server("valkey9")
    load_dataset(server, size_mb=12, seed=4)
    a = agent()
    params = configure_params(
        server, moto, moto_bucket, cluster="hdr.valkey", backup={"part-size-bytes": 5 * MiB}
    )
    a.request("configure", params).expect_ok()
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    # A store that already holds the key refuses the second write (412), so an agent can
    # never replace a manifest: prove the condition is sent by pre-creating one.
    s3 = moto.client()
    key = f"{prefix_of(params)}{backup_id}/manifest.json"
    try:
        s3.put_object(Bucket=moto_bucket, Key=key, Body=b"{}", IfNoneMatch="*")
        raise AssertionError("moto accepted an overwrite with If-None-Match")
    except s3.exceptions.ClientError as e:
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 412
