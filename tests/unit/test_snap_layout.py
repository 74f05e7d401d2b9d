"""Reading the charmed-valkey snap's layout: ports, TLS files, Sentinel, binaries."""

from __future__ import annotations

import os
from pathlib import Path

from fakes import make_snap_root
from snap_layout import (
    Endpoint,
    SentinelCredentials,
    endpoint_from,
    parse_conf,
    read_layout,
    read_regular_file,
)


def test_parse_conf_keeps_the_last_directive_and_keys_sentinel_lines_by_name():
    conf = parse_conf(
        "# comment\nport 6379\nport 0\n  tls-port 6380  \n"
        'sentinel sentinel-pass "pw"\nsentinel down-after-milliseconds primary 30000\n'
    )
    assert conf["port"] == ["0"]
    assert conf["tls-port"] == ["6380"]
    assert conf["sentinel sentinel-pass"] == ["pw"]
    assert conf["sentinel down-after-milliseconds"] == ["primary", "30000"]


def test_a_quoted_argument_loses_its_quotes():
    assert parse_conf('sentinel sentinel-pass "secret"')["sentinel sentinel-pass"] == ["secret"]
    assert parse_conf("dir '/var/lib/x'")["dir"] == ["/var/lib/x"]


def test_the_plain_port_is_the_endpoint_unless_client_tls_closed_it():
    assert endpoint_from(parse_conf("port 6379\ntls-port 6380"), 6379, 6380) == Endpoint(
        6379, tls=False
    )
    assert endpoint_from(parse_conf("port 0\ntls-port 6380"), 6379, 6380) == Endpoint(
        6380, tls=True
    )
    assert endpoint_from(parse_conf(""), 6379, 6380) == Endpoint(6379, tls=False)
    assert endpoint_from(parse_conf("port 0"), 6379, 6380) is None
    assert endpoint_from(parse_conf("port nonsense"), 6379, 6380) == Endpoint(6379, tls=False)


def test_no_snap_no_layout(tmp_path):
    assert read_layout(tmp_path) is None


def test_layout_of_the_valkey_charms_files(tmp_path):
    layout = read_layout(make_snap_root(tmp_path))
    assert layout is not None
    assert layout.server == Endpoint(6379, tls=False)
    assert layout.sentinel == Endpoint(26379, tls=False)
    assert layout.tls.ca_dir == "/var/snap/charmed-valkey/current/tls/ca_certs"
    assert layout.tls.cert_file == "/var/snap/charmed-valkey/current/tls/client.pem"
    assert layout.tls.key_file == "/var/snap/charmed-valkey/current/tls/client.key"
    assert layout.sentinel_credentials == SentinelCredentials(
        "charmed-sentinel-peers", "peers-Pa55"
    )
    bindir = tmp_path / "snap/charmed-valkey/current/usr/bin"
    assert layout.cli == str(bindir / "valkey-cli")
    assert layout.server_binary == str(bindir / "valkey-server")
    assert layout.data_dir == "/var/snap/charmed-valkey/common/var/lib/charmed-valkey"


def test_client_tls_on_switches_server_and_sentinel_to_their_tls_ports(tmp_path):
    root = make_snap_root(
        tmp_path,
        valkey_conf="port 0\ntls-port 6380\n",
        sentinel_conf="port 0\ntls-port 26380\n",
        conf_dir="etc/charmed-valkey",
        binaries=("valkey-cli",),
    )
    layout = read_layout(root)
    assert layout is not None
    assert layout.server == Endpoint(6380, tls=True)
    assert layout.sentinel == Endpoint(26380, tls=True)
    # Files the configuration does not name are the valkey charm's defaults.
    data = root / "var/snap/charmed-valkey/current"
    assert layout.tls.ca_dir == str(data / "tls/ca_certs")
    assert layout.tls.cert_file == str(data / "tls/client.pem")
    assert layout.sentinel_credentials is None
    assert layout.server_binary == ""


def test_a_snap_without_sentinel_configuration_has_no_sentinel(tmp_path):
    layout = read_layout(make_snap_root(tmp_path, sentinel_conf=None))
    assert layout is not None and layout.sentinel is None


def test_a_symlinked_configuration_is_not_followed(tmp_path):
    secret = tmp_path / "elsewhere.conf"
    secret.write_text("port 1234\nsentinel sentinel-user x\nsentinel sentinel-pass y\n")
    root = make_snap_root(tmp_path / "root")
    conf = root / "var/snap/charmed-valkey/current/etc/valkey/sentinel.conf"
    conf.unlink()
    conf.symlink_to(secret)
    assert read_regular_file(conf) is None
    layout = read_layout(root)
    assert layout is not None
    assert layout.sentinel is None and layout.sentinel_credentials is None


def test_read_regular_file_refuses_directories_and_fifos(tmp_path):
    assert read_regular_file(tmp_path) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_regular_file(fifo) is None  # and does not block on it
    assert read_regular_file(Path("/nonexistent/file")) is None
