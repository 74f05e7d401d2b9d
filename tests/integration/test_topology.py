"""The agent beside a cluster shaped like Canonical's valkey charm (harness/topology.py):
three Valkey 9.1 units on their own addresses, `user default off`, charmed-operator,
three Sentinels, TLS with a CA directory. Backups from every unit, listing and verifying;
restores on the primary whose stop outlasts Sentinel's `down-after-milliseconds`, with
Sentinel suppressed (the primary stays primary, every unit holds the restored data, every
Sentinel gets its setting back) and without (the failover that undoes the restore); an
agent killed mid-restore puts Sentinel back when it starts again."""

from __future__ import annotations

import socket
import ssl

import pytest
from harness import load_dataset, s3_params
from harness.topology import MASTER_NAME, Topology, Unit

MiB = 1024 * 1024


def _configure(agent, topo: Topology, unit: Unit, moto, bucket: str, *, tls: bool = False):
    a = agent()
    params = {
        "cluster": "topo.valkey",
        "unit": unit.name,
        "valkey": topo.valkey_params(unit, tls=tls),
        "s3": s3_params(moto, bucket),
    }
    result = a.request("configure", params).expect_ok()
    return a, result


# --------------------------------------------------------------------------- the topology


def test_the_topology_is_faithful_to_the_charm(topology: Topology):
    primary, *replicas = topology.units
    assert topology.primary() is primary and topology.replicas() == replicas
    for unit in topology.units:
        with topology.client(unit) as c:
            # Bound only to the unit's own address, the same port on every unit.
            assert c.config_get("bind")["bind"] == unit.host
            assert c.config_get("port")["port"] == "6379" or unit.port != 6379
            # `user default off`: an unauthenticated client is refused.
            users = {u.split()[1]: u for u in c.acl_list()}
            assert "off" in users["default"].split(), users["default"]
            assert "+@all" in users["charmed-operator"], users
        with socket.create_connection((unit.host, unit.port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            assert s.recv(100).startswith(b"-NOAUTH"), unit
    for replica in replicas:
        with topology.client(replica) as c:
            info = c.info("replication")
            assert info["master_host"] == primary.host and info["master_link_status"] == "up"
            assert c.config_get("masteruser")["masteruser"] == "charmed-replication"
    # Three Sentinels that know each other and both replicas, with a short down-after.
    assert topology.down_afters() == [topology.down_after_ms] * 3
    assert {topology.master_addr(u) for u in topology.units} == {primary.addr}
    assert topology.sentinels_converged()
    # TLS on the next port, trusted through the CA directory only.
    ctx = ssl.create_default_context(capath=str(topology.ca_dir))
    with (
        socket.create_connection((primary.host, primary.tls_port), timeout=2) as raw,
        ctx.wrap_socket(raw, server_hostname=primary.host) as s,
    ):
        s.sendall(b"PING\r\n")
        assert s.recv(100).startswith(b"-NOAUTH")
    wrong = ssl.create_default_context()  # the system roots do not know this CA
    with (
        socket.create_connection((primary.host, primary.tls_port), timeout=2) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        wrong.wrap_socket(raw, server_hostname=primary.host)


# --------------------------------------------------------------------------- backups


def test_backup_from_every_unit_then_list_and_verify(topology, agent, moto, components):
    bucket = moto.create_bucket()
    primary = topology.units[0]
    with topology.client(primary) as c:
        c.flushall()
    info = load_dataset(primary.server, 0.5, seed=10)
    topology.wait_replicas_in_sync()
    expected = {f"db{db}": n for db, n in info.keys_per_db.items() if n}
    agents = []
    for unit in topology.units:
        # The third unit goes through TLS: CA directory, client certificate.
        a, configured = _configure(agent, topology, unit, moto, bucket, tls=unit.index == 2)
        check = configured["valkey-check"]
        assert check["ok"] is True, check
        assert check["role"] == ("primary" if unit.index == 0 else "replica"), check
        assert check["sentinel"]["ok"] is True, check
        assert check["sentinel"]["master-name"] == MASTER_NAME
        assert check["sentinel"]["sentinels"] == 3, check
        agents.append(a)
    ids = []
    for a in agents:
        result = a.request("create-backup").expect_ok()
        assert result["status"] == "finished" and result["rdb-magic"] == "VALKEY", result
        ids.append(result["backup-id"])
    listed = agents[1].request("list-backups").expect_ok()["backups"]
    by_id = {b["backup-id"]: b for b in listed}
    assert set(ids) <= set(by_id), listed
    assert {by_id[i]["unit"] for i in ids} == {"valkey/0", "valkey/1", "valkey/2"}
    assert all(by_id[i]["status"] == "finished" for i in ids), listed
    server = str(components.server_for("valkey9"))
    for a, backup_id in zip(agents, reversed(ids), strict=True):
        verified = a.request(
            "verify-backup", {"backup-id": backup_id, "load": True, "server": server}
        ).expect_ok()
        assert verified["ok"] is True and verified["load"]["keys"] == expected, verified
