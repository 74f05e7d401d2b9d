"""Restore and verify read a large plain backup as parallel ranged GETs, in order, and
still hold every byte to the manifest."""

from __future__ import annotations

from harness import configure_params, load_dataset
from harness.s3proxy import S3Proxy

MiB = 1024 * 1024
RANGE = 4 * MiB  # agent/src/pipeline/mod.rs RANGE_BYTES


def test_a_large_backup_is_verified_from_ranged_gets_and_a_flipped_byte_is_caught(
    valkey_server, agent, moto, moto_bucket
):
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=10, dbs=(0,), seed=31)  # three 4 MiB ranges
    with S3Proxy(moto.endpoint) as proxy:
        a = agent()
        params = configure_params(
            server,
            moto,
            moto_bucket,
            cluster="ranged.valkey",
            s3_extra={"endpoint": proxy.endpoint},
        )
        a.request("configure", params).expect_ok()
        backup = a.request("create-backup").expect_ok()
        assert 8 * MiB < backup["size-bytes"] <= 12 * MiB, backup
        proxy.log.clear()
        verified = a.request("verify-backup", {"backup-id": backup["backup-id"]}).expect_ok()
        assert verified["ok"] is True
        gets = [m for (m, p, _, _) in proxy.log if m == "GET" and p.endswith("/data.rdb")]
        assert len(gets) == -(-backup["size-bytes"] // RANGE), proxy.log  # one per range

        # The same object with one byte changed in its middle range (moto lets a test
        # overwrite it): the in-order SHA-256 over the ranges catches it.
        s3 = moto.client()
        data = bytearray(s3.get_object(Bucket=moto_bucket, Key=backup["data-key"])["Body"].read())
        data[6 * MiB] ^= 0x01
        s3.put_object(Bucket=moto_bucket, Key=backup["data-key"], Body=bytes(data))
        err = a.request("verify-backup", {"backup-id": backup["backup-id"]}).expect_error(
            "stream-invalid"
        )
        assert "SHA-256" in err.message or "CRC64" in err.message, err.message
