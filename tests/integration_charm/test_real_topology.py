"""End to end through the charm's handlers, beside a cluster shaped like Canonical's charm.

Three valkey-backup units, one per unit of the topology (harness/topology.py: three
Valkey 9.1 servers on their own 127.N.0.x addresses, `user default off`,
charmed-operator, three Sentinels with a short down-after, TLS through a terminator with
a CA directory). Each unit gets only what the valkey charm would leave on its machine: the
snap's configuration files (``charm_world.write_snap_root``), its juju-info binding
address and the shared ``system-users`` secret. No host, port, user or cli is set.

Then: a backup from each unit, list, verify with a load, and a restore on the primary
whose stop lasts three times the Sentinels' down-after. With Sentinel suppressed the
primary stays primary, serves the restored data, both replicas hold it and every Sentinel
has its setting back; with suppression switched off the same restore is undone by the
failover it allows.
"""

from __future__ import annotations

import json
import time
from typing import Any

from harness import (  # pyright: ignore[reportMissingImports]
    assert_same_dataset,
    dataset_fingerprint,
    load_dataset,
    unique_bucket_name,
    wait_until,
)
from harness.topology import (  # pyright: ignore[reportMissingImports]
    MASTER_NAME,
    OPERATOR,
    SENTINEL_OPERATOR,
    SENTINEL_PEERS,
    Topology,
)
from ops import testing

from charm_world import CharmUnit, write_snap_root
from valkey_target import port_answers

SNAP_SERVICE = "snap.charmed-valkey.server.service"


def charm_units(charm_unit, topo: Topology, tmp_path, *, tls_unit: int | None = None) -> list:
    """One configured valkey-backup unit per topology unit, all in one bucket."""
    assert not port_answers("127.0.0.1", topo.units[0].port), (
        "something listens on 127.0.0.1:6379: the units would take it for their server"
    )
    bucket = unique_bucket_name("vb-topo")
    units: list[CharmUnit] = []
    for unit in topo.units:
        tls = None
        if unit.index == tls_unit:
            # Client TLS on, as the valkey charm does it: plain port closed (port 0), the
            # TLS port with a CA directory and the client pair beside it.
            assert topo.ca is not None
            tls = {
                "port": unit.tls_port,
                "ca_dir": str(topo.ca_dir),
                "cert_file": str(topo.ca.client_cert_path),
                "key_file": str(topo.ca.client_key_path),
            }
        root = write_snap_root(
            tmp_path / f"machine-{unit.index}",
            unit.server,
            sentinel=(unit.sentinel_port, SENTINEL_PEERS, topo.sentinel_peers_password),
            tls=tls,
        )
        # The valkey charm's system-users secret, shared: the key named after each user.
        charm = charm_unit(
            server=unit.server,
            password=topo.operator_password,
            secret_password=topo.operator_password,
            secret_key=OPERATOR,
            extra_secret={SENTINEL_OPERATOR: topo.sentinel_operator_password},
            snap_root=root,
            defaults=True,
            unit_id=unit.index,
            bucket=bucket,  # one cluster: the first configure creates it
        )
        units.append(charm)
    for charm in units:
        state = charm.configure()
        assert state.unit_status == testing.ActiveStatus(""), state.unit_status
    return units


def stored_valkey(unit: CharmUnit) -> dict[str, Any]:
    return json.loads((unit.agent.state_dir / "config.json").read_text())["valkey"]


def assert_no_topology_secrets(units: list[CharmUnit], topo: Topology) -> None:
    """No password of the topology in any result, log or status of any unit or agent."""
    for charm in units:
        charm.assert_no_secrets(charm.agent.log_text())
        text = "\n".join([*charm.seen, charm.agent.log_text()])
        for value in topo.secrets:
            assert value not in text, "a topology password leaked"


def hold_down(topo: Topology) -> None:
    """Keep the stopped server down for three times the Sentinels' down-after.

    The duration is the point of the test (a restore whose stop outlasts down-after),
    not a wait for something to happen.
    """
    deadline = time.monotonic() + 3 * topo.down_after_ms / 1000
    wait_until(lambda: time.monotonic() >= deadline, timeout=30, what="the hold-down time")


def test_every_unit_finds_its_server_and_backs_it_up_list_and_verify(
    charm_unit, topology: Topology, tmp_path
):
    topo = topology
    units = charm_units(charm_unit, topo, tmp_path, tls_unit=2)
    primary = topo.units[0]

    # The defaults found each unit's own server, user, TLS and Sentinel.
    for unit, charm in zip(topo.units, units, strict=True):
        valkey = stored_valkey(charm)
        assert valkey["host"] == unit.host and valkey["username"] == OPERATOR
        assert valkey["sentinel"]["host"] == unit.host
        assert valkey["sentinel"]["port"] == unit.sentinel_port
        check = charm.agent_status()["valkey-check"]
        assert check["ok"] is True and check["sentinel"]["sentinels"] == 3, check
    assert stored_valkey(units[2])["port"] == topo.units[2].tls_port
    assert stored_valkey(units[2])["tls"]["ca-dir"] == str(topo.ca_dir)

    with topo.client(primary) as c:
        c.flushall()
    load_dataset(primary.server, size_mb=0.3, dbs=(0, 1), seed=21)
    topo.wait_replicas_in_sync()
    expected = dataset_fingerprint(primary.server)

    ids = [charm.action("create-backup")["backup-id"] for charm in units]
    listed = json.loads(units[1].action("list-backups", output="json")["backups"])
    by_id = {b["backup-id"]: b for b in listed}
    assert {by_id[i]["unit"] for i in ids} == {"valkey/0", "valkey/1", "valkey/2"}
    assert all(by_id[i]["status"] == "finished" for i in ids)
    for charm, backup_id in zip(units, reversed(ids), strict=True):
        verified = charm.action("verify-backup", **{"backup-id": backup_id, "load": True})
        assert verified["ok"] == "true" and verified["load"]["keys-match"] == "true"
        assert verified["load"]["keys"] == {
            f"db{db}": str(n) for db, (n, _) in expected.keyspace.items()
        }
    assert_no_topology_secrets(units, topo)


def test_a_restore_whose_stop_outlasts_down_after_keeps_the_primary_and_sentinel(
    charm_unit, fresh_topology: Topology, tmp_path
):
    topo = fresh_topology
    units = charm_units(charm_unit, topo, tmp_path)
    primary = topo.units[0]
    load_dataset(primary.server, size_mb=0.3, dbs=(0, 1), seed=21)
    topo.wait_replicas_in_sync()
    expected = dataset_fingerprint(primary.server)
    # A replica's backup, restored on the primary's unit.
    backup_id = units[1].action("create-backup")["backup-id"]

    # Change everything, then restore; the stop outlasts down-after three times over.
    with topo.client(primary) as c:
        c.flushall()
        c.set("after-the-backup", "x")
    topo.wait_replicas_in_sync()
    originals = topo.down_afters()
    units[0].systemd.after_stop = lambda: hold_down(topo)

    results = units[0].action("restore-backup", **{"backup-id": backup_id})

    assert units[0].systemd.verbs() == [f"stop {SNAP_SERVICE}", f"start {SNAP_SERVICE}"]
    assert results["role"] == "primary" and results["writable"] == "true"
    replicas = json.loads(results["replicas"])
    assert len(replicas) == 2 and all(r["in-sync"] and r["keys-match"] for r in replicas)
    assert "sentinel settings of primary: restored" in units[0].ctx.action_logs
    # No failover: the primary is still primary for its server and every Sentinel.
    assert topo.primary() is primary
    assert {topo.master_addr(u) for u in topo.units} == {primary.addr}
    assert topo.down_afters() == originals == [topo.down_after_ms] * 3
    for unit in topo.units:
        assert_same_dataset(expected, dataset_fingerprint(unit.server), what=unit.addr)
    assert_no_topology_secrets(units, topo)


def test_without_sentinel_suppression_the_same_restore_is_undone_by_a_failover(
    charm_unit, fresh_topology: Topology, tmp_path
):
    topo = fresh_topology
    units = charm_units(charm_unit, topo, tmp_path)
    primary = topo.units[0]
    load_dataset(primary.server, size_mb=0.2, dbs=(0,), seed=5)
    topo.wait_replicas_in_sync()
    backup_id = units[0].action("create-backup")["backup-id"]
    with topo.client(primary) as c:
        c.flushall()
        c.set("after-the-backup", "x")
    topo.wait_replicas_in_sync()
    after = dataset_fingerprint(primary.server)

    def failed_over() -> None:
        wait_until(
            lambda: topo.master_addr(topo.units[1]) != primary.addr,
            timeout=30,
            what="Sentinel to promote a replica",
        )

    units[0].systemd.after_stop = failed_over
    # The restored node's former replicas follow the new primary and never come back to
    # it: the wait for them is cut short. The action fails: the agent's `finish` finds the
    # Sentinels naming another master.
    message = units[0].fail(
        "restore-backup", **{"backup-id": backup_id, "sentinel": "ignore", "timeout-seconds": 10}
    )
    assert "[restore-overridden]" in message and MASTER_NAME in message, message

    # The restored node is turned into a replica of the new primary and resyncs from
    # it: the restore is gone, the data is what it was after the backup.
    wait_until(lambda: topo.role(primary) == "slave", timeout=30, what="the old primary to follow")
    new_primary = topo.primary()
    assert new_primary is not primary
    wait_until(
        lambda: dataset_fingerprint(primary.server) == after,
        timeout=30,
        what="the restored node to resync from the new primary",
    )
    assert_same_dataset(after, dataset_fingerprint(new_primary.server), what="new primary")
    assert topo.master_addr(topo.units[2]) == new_primary.addr
    assert MASTER_NAME  # the master the Sentinels watch kept its name
