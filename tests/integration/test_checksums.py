"""`s3.checksum`: the integrity header each store really checks, and a part damaged in
transit refused by every store in the suite whatever header it got."""

from __future__ import annotations

import threading
import time

import pytest
from checks import assert_failed_cleanly, bucket_state, failed_backup_id, prefix_of, sha256_hex
from harness import configure_params, load_dataset
from harness.s3proxy import Action, Request, S3Proxy

MiB = 1024 * 1024
# What `auto` must find: Garage checks x-amz-checksum-crc32c; moto checks neither that
# nor Content-MD5, but answers each part with its MD5 as the ETag, which the agent
# compares itself.
EXPECTED = {"moto": "md5-etag", "garage": "crc32c"}


class DamageOnce:
    """Flips a byte in the body of the data object's second part, the first time only."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def __call__(self, req: Request) -> Action | None:
        is_part = req.method == "PUT" and req.query.get("partNumber") == "2"
        if is_part and req.path.endswith("/data.rdb") and not self.done.is_set():
            self.done.set()
            return Action.damage_body()
        return None


@pytest.mark.parametrize("store_name", ["moto", "garage"])
def test_auto_picks_a_header_the_store_checks_and_a_damaged_part_is_refused(
    request, store_name, valkey_server, agent
):
    store = request.getfixturevalue(store_name)
    bucket = store.bucket if store_name == "garage" else store.create_bucket()
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=12, seed=5)
    damage = DamageOnce()
    with S3Proxy(store.endpoint) as proxy:
        proxy.rule(damage)
        a = agent()
        params = configure_params(
            server,
            store,
            bucket,
            cluster=f"ck{int(time.time() * 1000) % 10**9}.{store_name}",
            s3_extra={"endpoint": proxy.endpoint},
            backup={"part-size-bytes": 5 * MiB},
        )
        configured = a.request("configure", params).expect_ok()
        assert configured["s3-checksum"] == EXPECTED[store_name]

        a.request("create-backup").expect_error("s3-error")
        assert damage.done.is_set(), "the damaging rule never fired"
        s3 = store.client()
        prefix = prefix_of(params)
        assert_failed_cleanly(s3, bucket, prefix, failed_backup_id(a), "s3-error")

        # The damage was the link's, not the agent's: the next backup goes through whole.
        result = a.request("create-backup").expect_ok()
        assert result["parts"] >= 2, result
        data = s3.get_object(Bucket=bucket, Key=result["data-key"])["Body"].read()
        assert sha256_hex(data) == result["sha256"]
    # The probe left nothing behind: only the two backups' objects, no open upload.
    state = bucket_state(s3, bucket, prefix)
    assert not state.uploads, state.uploads
    backups = {k.split("/")[-2] for k in state.keys}
    assert len(backups) == 2 and result["backup-id"] in backups, state.keys


def test_an_explicit_crc_is_used_where_checked_and_refused_where_not(
    valkey_server, agent, moto, garage
):
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=6, seed=6)
    a = agent()
    # moto accepts a wrong CRC: a damaged part would be stored, so configure refuses.
    params = configure_params(server, moto, s3_extra={"checksum": "crc32c"})
    err = a.request("configure", params).expect_error("bad-request")
    assert err.message.startswith("s3.checksum"), err.message
    # Garage checks CRC64NVME: configured as asked, and a backup with it completes.
    params = configure_params(
        server,
        garage,
        cluster=f"crc64-{int(time.time() * 1000) % 10**9}.valkey",
        s3_extra={"checksum": "crc64nvme"},
        backup={"part-size-bytes": 5 * MiB},
    )
    assert a.request("configure", params).expect_ok()["s3-checksum"] == "crc64nvme"
    result = a.request("create-backup").expect_ok()
    assert result["parts"] == 2, result
    data = garage.client().get_object(Bucket=garage.bucket, Key=result["data-key"])["Body"].read()
    assert sha256_hex(data) == result["sha256"]
