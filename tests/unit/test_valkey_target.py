"""Resolving this unit's server: explicit options, then the snap's layout, then defaults."""

from __future__ import annotations

import socket

import pytest

from config_model import CharmConfig, InvalidConfigError
from fakes import make_snap_root
from snap_layout import read_layout
from valkey_target import pick_password, port_answers, resolve_target

BINDING = "10.20.30.4"


def config(**values) -> CharmConfig:
    return CharmConfig.from_mapping(values)


def closed(host: str, port: int) -> bool:
    return False


def loopback_open(host: str, port: int) -> bool:
    return host == "127.0.0.1"


@pytest.fixture
def layout(tmp_path):
    return read_layout(make_snap_root(tmp_path))


def test_plain_machine_defaults_are_loopback_6379_and_the_default_user():
    target = resolve_target(
        config(), None, secret={"password": "pw"}, binding_address=BINDING, probe=loopback_open
    )
    assert (target.host, target.port, target.host_source) == ("127.0.0.1", 6379, "loopback")
    assert target.username == "" and target.password == "pw"
    assert target.tls.enabled is False and target.sentinel is None


def test_a_server_not_on_loopback_is_found_on_the_units_binding_address(layout):
    calls: list[tuple[str, int]] = []

    def probe(host: str, port: int) -> bool:
        calls.append((host, port))
        return False

    target = resolve_target(
        config(), layout, secret={"charmed-operator": "op"}, binding_address=BINDING, probe=probe
    )
    assert calls == [("127.0.0.1", 6379)]  # one cheap probe, nothing else
    assert (target.host, target.port, target.host_source) == (BINDING, 6379, "binding")
    assert target.username == "charmed-operator" and target.password == "op"


def test_an_explicit_host_wins_and_is_not_probed(layout):
    def probe(host: str, port: int) -> bool:
        raise AssertionError("probed although valkey-host is set")

    target = resolve_target(
        config(**{"valkey-host": "db.internal", "valkey-port": 7000}),
        layout,
        secret=None,
        binding_address=BINDING,
        probe=probe,
    )
    assert (target.host, target.port, target.host_source) == ("db.internal", 7000, "config")


def test_without_binding_address_loopback_is_the_last_resort():
    target = resolve_target(config(), None, secret=None, binding_address=None, probe=closed)
    assert target.host == "127.0.0.1"


def test_without_the_snap_the_binding_address_is_used_only_when_the_server_answers_there():
    def on_binding(host: str, port: int) -> bool:
        return host == BINDING

    found = resolve_target(config(), None, secret=None, binding_address=BINDING, probe=on_binding)
    assert (found.host, found.host_source) == (BINDING, "binding")
    # A server that answers nowhere (restarting) is looked for on loopback, so the
    # agent's host does not flip with every restart of a loopback-bound server.
    down = resolve_target(config(), None, secret=None, binding_address=BINDING, probe=closed)
    assert (down.host, down.host_source) == ("127.0.0.1", "loopback")


def test_beside_the_snap_a_server_that_is_down_is_still_looked_for_on_the_binding(layout):
    target = resolve_target(config(), layout, secret=None, binding_address=BINDING, probe=closed)
    assert target.host == BINDING


def test_client_tls_in_the_snap_means_its_tls_port_and_files(tmp_path):
    layout = read_layout(
        make_snap_root(tmp_path, valkey_conf="port 0\ntls-port 6380\n", sentinel_conf=None)
    )
    assert layout is not None
    target = resolve_target(
        config(), layout, secret={"charmed-operator": "op"}, binding_address=BINDING, probe=closed
    )
    assert target.port == 6380
    data = tmp_path / "var/snap/charmed-valkey/current"
    assert target.tls.to_params() == {
        "enabled": True,
        "insecure": False,
        "ca-dir": str(data / "tls/ca_certs"),
        "cert-file": str(data / "tls/client.pem"),
        "key-file": str(data / "tls/client.key"),
    }


def test_explicit_tls_files_and_port_win_over_the_snaps(tmp_path, layout):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    target = resolve_target(
        config(**{"valkey-tls": True, "valkey-tls-ca-file": str(ca), "valkey-port": 6390}),
        layout,
        secret=None,
        binding_address=BINDING,
        probe=closed,
    )
    params = target.tls.to_params()
    assert target.port == 6390
    assert params["ca-file"] == str(ca) and "ca-dir" not in params
    # The client pair still comes from the snap: the server may require it.
    assert params["cert-file"].endswith("tls/client.pem")


def test_an_explicit_port_does_not_turn_tls_on(tmp_path):
    layout = read_layout(make_snap_root(tmp_path, valkey_conf="port 0\ntls-port 6380\n"))
    target = resolve_target(
        config(**{"valkey-port": 6379}), layout, secret=None, binding_address=None, probe=closed
    )
    assert target.tls.enabled is False


def test_sentinel_credentials_from_the_secret_first_then_from_sentinels_own_config(layout):
    shared = {"charmed-operator": "op", "charmed-sentinel-operator": "sop"}
    target = resolve_target(config(), layout, secret=shared, binding_address=BINDING, probe=closed)
    assert target.sentinel is not None
    assert target.sentinel.to_params() == {
        "host": BINDING,
        "port": 26379,
        "username": "charmed-sentinel-operator",
        "password": "sop",
    }
    assert set(target.secrets()) == {"op", "sop"}

    target = resolve_target(
        config(), layout, secret={"charmed-operator": "op"}, binding_address=BINDING, probe=closed
    )
    assert target.sentinel is not None
    assert (target.sentinel.username, target.sentinel.password) == (
        "charmed-sentinel-peers",
        "peers-Pa55",
    )
    assert "peers-Pa55" in target.secrets()  # redacted like the server's password


def test_an_explicit_username_is_kept_beside_the_snap(layout):
    target = resolve_target(
        config(**{"valkey-username": "backup"}),
        layout,
        secret={"backup": "b", "charmed-operator": "op"},
        binding_address=None,
        probe=loopback_open,
    )
    assert (target.username, target.password) == ("backup", "b")


def test_pick_password_prefers_the_users_key_and_falls_back_to_password():
    assert pick_password({"charmed-operator": "a", "password": "b"}, "charmed-operator") == "a"
    assert pick_password({"password": "b"}, "charmed-operator") == "b"
    assert pick_password({"default": "d"}, "") == "d"
    assert pick_password(None, "x") is None
    with pytest.raises(InvalidConfigError, match="no 'charmed-operator' or 'password' key"):
        pick_password({"charmed-replication": "r"}, "charmed-operator")


def test_port_answers_is_true_for_a_listener_and_false_for_a_closed_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert port_answers("127.0.0.1", port) is True
    assert port_answers("127.0.0.1", port) is False
