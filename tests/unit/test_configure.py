"""The configure request: Juju state in, the agent's params out (docs/protocol.md)."""

from __future__ import annotations

import base64

from config_model import CharmConfig, TlsSettings
from configure import build_configure_params, keep_days, s3_params, tls_ca_chain
from valkey_target import SentinelTarget, ValkeyTarget

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


def config(**values) -> CharmConfig:
    return CharmConfig.from_mapping(values)


def target(username: str = "", password: str | None = None, **changes) -> ValkeyTarget:
    values = {
        "host": "127.0.0.1",
        "port": 6379,
        "username": username,
        "password": password,
        "tls": TlsSettings(),
        "sentinel": None,
        "host_source": "loopback",
        **changes,
    }
    return ValkeyTarget(**values)


def test_s3_params_keep_the_integrators_field_names_and_drop_unknown_ones():
    info = {
        "endpoint": "https://s3.example:9000",
        "bucket": "backups",
        "path": "valkey",
        "region": "eu-west-1",
        "access-key": "AK",
        "secret-key": "SK",
        "s3-uri-style": "host",
        "storage-class": "STANDARD_IA",
        "s3-api-version": "4",
        "attributes": "a=b",
        "delete-older-than-days": "7",
    }
    assert s3_params(info) == {
        "delete-older-than-days": 7,
        "endpoint": "https://s3.example:9000",
        "bucket": "backups",
        "path": "valkey",
        "region": "eu-west-1",
        "access-key": "AK",
        "secret-key": "SK",
        "s3-uri-style": "host",
        "storage-class": "STANDARD_IA",
    }


def test_s3_params_turn_json_decoded_values_back_into_strings():
    # The library json-decodes every relation value: a bucket named 2024 is an int.
    params = s3_params({"bucket": 2024, "access-key": "AK", "secret-key": "SK", "path": ""})
    assert params["bucket"] == "2024"
    assert "path" not in params


def test_tls_ca_chain_accepts_every_shape_providers_send():
    b64 = base64.b64encode(PEM.encode()).decode()
    assert tls_ca_chain([PEM, PEM]) == [PEM, PEM]
    assert tls_ca_chain(f'["{b64}"]') == [b64]
    assert tls_ca_chain(PEM) == [PEM]
    assert tls_ca_chain(b64) == [b64]
    assert tls_ca_chain(None) == []
    assert tls_ca_chain(["", "  "]) == []
    assert tls_ca_chain("[not json") == ["[not json"]


def test_tls_ca_chain_is_forwarded_as_a_list():
    params = s3_params({"bucket": "b", "tls-ca-chain": [PEM]})
    assert params["tls-ca-chain"] == [PEM]


def test_unusable_retention_hints_are_not_sent():
    assert "delete-older-than-days" not in s3_params({"bucket": "b", "delete-older-than-days": ""})
    assert "delete-older-than-days" not in s3_params({"bucket": "b", "delete-older-than-days": 0})


def test_keep_days_takes_only_positive_integers():
    assert keep_days({"delete-older-than-days": "30"}) == 30
    assert keep_days({"delete-older-than-days": 7}) == 7
    assert keep_days({"delete-older-than-days": "0"}) is None
    assert keep_days({"delete-older-than-days": "soon"}) is None
    assert keep_days({"delete-older-than-days": True}) is None
    assert keep_days({}) is None


def test_full_request_shape():
    params = build_configure_params(
        cluster="m.valkey",
        unit="valkey/0",
        config=config(**{"upload-concurrency": 4}),
        target=target("backup", "pw"),
        cli="/usr/bin/valkey-cli",
        s3_info={
            "bucket": "b",
            "access-key": "AK",
            "secret-key": "SK",
            "delete-older-than-days": "9",
        },
    )
    assert params == {
        "cluster": "m.valkey",
        "unit": "valkey/0",
        "s3": {
            "bucket": "b",
            "access-key": "AK",
            "secret-key": "SK",
            "delete-older-than-days": 9,
        },
        "valkey": {
            "host": "127.0.0.1",
            "port": 6379,
            "username": "backup",
            "password": "pw",
            "source": "auto",
            "cli": "/usr/bin/valkey-cli",
            "tls": {"enabled": False},
        },
        "backup": {
            "part-size-bytes": 5 * 1024 * 1024,
            "upload-concurrency": 4,
            "compression": "none",
        },
    }


def test_without_storage_s3_is_null():
    params = build_configure_params(
        cluster="m.valkey",
        unit="valkey/0",
        config=config(),
        target=target(),
        cli="/c",
        s3_info=None,
    )
    assert params["s3"] is None
    assert "password" not in params["valkey"]
    assert "username" not in params["valkey"]


def test_the_source_is_sent_and_a_missing_cli_is_left_out():
    params = build_configure_params(
        cluster="m.valkey",
        unit="valkey/0",
        config=config(**{"valkey-source": "native"}),
        target=target(),
        cli=None,
        s3_info=None,
    )
    assert params["valkey"]["source"] == "native"
    assert "cli" not in params["valkey"]


def test_the_sentinel_is_sent_on_its_own_port_and_credentials():
    tls = TlsSettings(enabled=True, ca_dir="/snap/tls/ca_certs", cert_file="/c", key_file="/k")
    sentinel = SentinelTarget("10.0.0.5", 26380, "charmed-sentinel-operator", "spw", tls=True)
    params = build_configure_params(
        cluster="m.valkey",
        unit="valkey/0",
        config=config(),
        target=target("charmed-operator", "pw", tls=tls, sentinel=sentinel, port=6380),
        cli=None,
        s3_info=None,
    )
    tls_params = {
        "enabled": True,
        "insecure": False,
        "ca-dir": "/snap/tls/ca_certs",
        "cert-file": "/c",
        "key-file": "/k",
    }
    assert params["valkey"]["tls"] == tls_params
    assert params["valkey"]["sentinel"] == {
        "host": "10.0.0.5",
        "port": 26380,
        "username": "charmed-sentinel-operator",
        "password": "spw",
    }
