"""CharmConfig: every option is checked before anything reaches the agent."""

from __future__ import annotations

from typing import Any

import pytest

from config_model import CharmConfig, InvalidConfigError, resolve_cli

DEFAULTS: dict[str, Any] = {
    "valkey-host": "127.0.0.1",
    "valkey-port": 6379,
    "valkey-username": "",
    "valkey-cli-path": "",
    "valkey-source": "auto",
    "valkey-tls": False,
    "valkey-tls-ca-file": "",
    "valkey-tls-ca-dir": "",
    "valkey-tls-cert-file": "",
    "valkey-tls-key-file": "",
    "valkey-tls-sni": "",
    "valkey-tls-insecure": False,
    "valkey-service": "",
    "cluster-name": "",
    "upload-concurrency": 2,
    "part-size-mib": 5,
}


def parse(**overrides: Any) -> CharmConfig:
    values = {**DEFAULTS, **{k.replace("_", "-"): v for k, v in overrides.items()}}
    return CharmConfig.from_mapping(
        values,
        path_exists=lambda p: p.startswith("/exists/"),
        dir_exists=lambda p: p.startswith("/exists/"),
    )


def test_defaults_parse_to_loopback_without_tls():
    config = parse()
    assert (config.valkey_host, config.valkey_port) == ("127.0.0.1", 6379)
    assert config.tls.to_params() == {"enabled": False}
    assert config.part_size_bytes == 5 * 1024 * 1024
    assert config.valkey_password_secret == ""


def test_missing_keys_fall_back_to_defaults():
    config = CharmConfig.from_mapping({})
    assert config.valkey_port == 0  # automatic (valkey_target)
    assert config.valkey_host == ""
    assert config.upload_concurrency == 2


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"valkey_port": -1}, "valkey-port -1"),
        ({"valkey_port": 70000}, "valkey-port 70000"),
        ({"valkey_host": "redis://host"}, "valkey-host"),
        ({"valkey_host": "-oProxyCommand"}, "valkey-host"),
        ({"valkey_host": "two words"}, "valkey-host"),
        ({"cluster_name": "../escape"}, "cluster-name"),
        ({"cluster_name": "a/b"}, "cluster-name"),
        ({"cluster_name": "x" * 129}, "cluster-name"),
        ({"upload_concurrency": 0}, "upload-concurrency"),
        ({"upload_concurrency": 17}, "upload-concurrency"),
        ({"part_size_mib": 4}, "part-size-mib"),
        ({"part_size_mib": 5121}, "part-size-mib"),
        ({"valkey_cli_path": "valkey-cli"}, "absolute"),
        ({"valkey_source": "valkey-cli"}, "valkey-source 'valkey-cli' is not one of auto"),
        ({"valkey_tls": True, "valkey_tls_ca_dir": "certs"}, "valkey-tls-ca-dir must be"),
        ({"valkey_tls": True, "valkey_tls_ca_dir": "/missing/certs"}, "not a directory"),
        ({"valkey_service": "--now"}, "valkey-service"),
        ({"valkey_service": "valkey server"}, "valkey-service"),
    ],
)
def test_bad_values_are_rejected_naming_the_option(overrides, fragment):
    with pytest.raises(InvalidConfigError, match=fragment.replace(".", r"\.")):
        parse(**overrides)


def test_ipv6_literal_and_names_are_accepted():
    assert parse(valkey_host="[::1]").valkey_host == "[::1]"
    assert parse(valkey_host="db-1.internal").valkey_host == "db-1.internal"


def test_cluster_and_service_names_that_are_fine():
    config = parse(cluster_name="prod.valkey_1-a", valkey_service="valkey-server@main.service")
    assert config.cluster_name == "prod.valkey_1-a"
    assert config.valkey_service == "valkey-server@main.service"


def test_tls_cert_without_key_is_rejected():
    with pytest.raises(InvalidConfigError, match="set together"):
        parse(valkey_tls=True, valkey_tls_cert_file="/exists/cert.pem")


def test_tls_files_must_exist_and_be_absolute():
    with pytest.raises(InvalidConfigError, match="does not exist"):
        parse(valkey_tls=True, valkey_tls_ca_file="/missing/ca.pem")
    with pytest.raises(InvalidConfigError, match="absolute"):
        parse(valkey_tls=True, valkey_tls_ca_file="ca.pem")


@pytest.mark.parametrize("source", ["auto", "native", "cli"])
def test_every_source_is_accepted(source):
    assert parse(valkey_source=source).valkey_source == source


def test_source_defaults_to_auto():
    assert CharmConfig.from_mapping({}).valkey_source == "auto"
    assert parse(valkey_source="").valkey_source == "auto"


def test_a_ca_dir_is_sent_as_ca_dir():
    config = parse(valkey_tls=True, valkey_tls_ca_dir="/exists/certs")
    params = config.tls.to_params()
    assert params == {"enabled": True, "insecure": False, "ca-dir": "/exists/certs"}


def test_tls_files_are_not_checked_while_tls_is_off():
    assert not parse(valkey_tls_ca_file="/missing/ca.pem").tls.enabled


def test_tls_params_carry_only_set_fields():
    config = parse(
        valkey_tls=True,
        valkey_tls_ca_file="/exists/ca.pem",
        valkey_tls_cert_file="/exists/c.pem",
        valkey_tls_key_file="/exists/k.pem",
        valkey_tls_sni="valkey.internal",
    )
    assert config.tls.to_params() == {
        "enabled": True,
        "insecure": False,
        "ca-file": "/exists/ca.pem",
        "cert-file": "/exists/c.pem",
        "key-file": "/exists/k.pem",
        "sni": "valkey.internal",
    }


def test_resolve_cli_prefers_valkey_cli_then_redis_cli_then_snap():
    found = {
        "redis-cli": "/usr/bin/redis-cli",
        "charmed-valkey.cli": "/snap/bin/charmed-valkey.cli",
    }
    assert resolve_cli("", which=found.get) == "/usr/bin/redis-cli"
    found["valkey-cli"] = "/usr/bin/valkey-cli"
    assert resolve_cli("", which=found.get) == "/usr/bin/valkey-cli"
    assert resolve_cli("", which={"charmed-valkey.cli": "/snap/bin/x"}.get) == "/snap/bin/x"


def test_resolve_cli_without_any_cli_says_what_to_do():
    with pytest.raises(InvalidConfigError, match="set valkey-cli-path"):
        resolve_cli("", which=lambda _: None)


def test_resolve_cli_checks_a_configured_path():
    assert resolve_cli("/opt/cli", is_executable=lambda _: True) == "/opt/cli"
    with pytest.raises(InvalidConfigError, match="not an executable"):
        resolve_cli("/opt/cli", is_executable=lambda _: False)
