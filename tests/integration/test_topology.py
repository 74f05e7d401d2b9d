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
import time

import pytest
from harness import dataset_fingerprint, load_dataset, s3_params, wait_until
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
        # The third unit goes through TLS: CA directory, client certificate, to the server
        # and to its Sentinel (valkey.sentinel.tls, the Sentinel's TLS port).
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


# --------------------------------------------------------------------------- restores

SUPPRESSED = 86_400_000


def _backup_then_change(agent, topo: Topology, moto):
    """An agent on the primary's unit, a backup of a known dataset, then different live
    data on every unit: what the restore must bring back, and what it must replace."""
    primary = topo.units[0]
    load_dataset(primary.server, 0.3, seed=21)
    topo.wait_replicas_in_sync()
    backed_up = dataset_fingerprint(primary.server)
    a, _ = _configure(agent, topo, primary, moto, moto.create_bucket())
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    with topo.client(primary) as c:
        c.flushall()
        c.set("after-the-backup", "1")
    topo.wait_replicas_in_sync()
    return a, backup_id, backed_up


def _hold_stopped_past_down_after(topo: Topology, stopped_at: float) -> None:
    """Keeps the primary stopped for twice Sentinel's down-after plus a second, checking
    all along that no Sentinel holds it down (they would, after down-after, unsuppressed)."""
    bound = 2 * topo.down_after_ms / 1000 + 1.0

    def outlasted() -> bool:
        for unit in topo.units:
            assert not topo.sdown_seen_by(unit), "a Sentinel counts the stopped primary as down"
        return time.monotonic() - stopped_at > bound

    wait_until(outlasted, timeout=bound + 30, what="the stop to outlast down-after")


def _assert_every_unit_holds(topo: Topology, expected) -> None:
    for unit in topo.units:
        assert dataset_fingerprint(unit.server) == expected, unit


def test_restore_on_the_primary_outlasting_down_after_keeps_it_primary(
    tmp_path, components, agent, moto
):
    # With min-replicas-to-write 2 the restarted primary refuses writes until both
    # replicas are back: `finish` must wait for that, not report a refusal.
    with Topology(tmp_path / "topo", components=components, min_replicas_to_write=2) as topo:
        _restore_keeping_the_primary(topo, agent, moto)


def _restore_keeping_the_primary(topo: Topology, agent, moto) -> None:
    primary = topo.units[0]
    a, backup_id, backed_up = _backup_then_change(agent, topo, moto)
    prepared = a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_ok()
    # Every Sentinel of the master is suppressed before the caller stops the server.
    assert topo.down_afters() == [SUPPRESSED] * 3
    shown = prepared["sentinel"]
    assert shown["master-name"] == MASTER_NAME and shown["mode"] == "suppress", shown
    assert sorted(s["addr"] for s in shown["sentinels"]) == sorted(
        f"{u.host}:{u.sentinel_port}" for u in topo.units
    )
    assert {s["down-after-milliseconds"] for s in shown["sentinels"]} == {topo.down_after_ms}
    # One replica is down too, and comes back only while `finish` runs.
    late = topo.units[2]
    late.server.stop()
    primary.server.stop()
    stopped_at = time.monotonic()
    _hold_stopped_past_down_after(topo, stopped_at)
    rid = prepared["restore-id"]
    a.request("restore-backup", {"step": "commit", "restore-id": rid}).expect_ok()
    primary.server.start_again()
    finishing = a.request_async(
        "restore-backup", {"step": "finish", "restore-id": rid, "timeout-seconds": 60}
    )

    def agent_probe_refused() -> bool:
        # The agent's write probe is a DEL; the server counts the ones it refused.
        with topo.client(primary, socket_timeout=2.0) as c:
            stats = c.info("commandstats").get("cmdstat_del", {})
        return int(stats.get("rejected_calls", 0)) >= 1

    # min-replicas-to-write 2 with one replica away: the restored primary refuses the
    # agent's write probe (NOREPLICAS), and `finish` keeps trying instead of reporting it.
    wait_until(agent_probe_refused, timeout=30, what="the agent's write probe to be refused")
    assert not finishing.done()
    late.server.start_again()
    finished = finishing.result(timeout=90).expect_ok()
    assert finished["role"] == "primary" and finished["writable"] is True, finished
    assert finished["keys-match"] is True, finished
    replicas = finished["replicas"]
    assert sorted(r["addr"] for r in replicas) == sorted(u.addr for u in topo.units[1:])
    assert all(r["in-sync"] and r["keys-match"] and r["state"] == "online" for r in replicas), (
        replicas
    )
    assert finished["sentinel"]["restored"] is True, finished
    assert topo.down_afters() == [topo.down_after_ms] * 3
    # Still the primary for every Sentinel and server, and every unit serves the backup.
    assert {topo.master_addr(u) for u in topo.units} == {primary.addr}
    assert topo.primary() is primary
    topo.wait_replicas_in_sync()
    _assert_every_unit_holds(topo, backed_up)
    log = a.log_text()
    assert not [s for s in topo.secrets if s in log or s in str(finished)]


def test_without_suppression_sentinel_fails_over_and_undoes_the_restore(
    fresh_topology, agent, moto
):
    topo = fresh_topology
    primary = topo.units[0]
    a, backup_id, backed_up = _backup_then_change(agent, topo, moto)
    changed = dataset_fingerprint(primary.server)
    prepared = a.request(
        "restore-backup", {"step": "prepare", "backup-id": backup_id, "sentinel": "ignore"}
    ).expect_ok()
    assert prepared["sentinel"]["mode"] == "ignore", prepared
    assert topo.down_afters() == [topo.down_after_ms] * 3
    primary.server.stop()
    # The same stop, unsuppressed: Sentinel promotes a replica.
    promoted = wait_until(
        lambda: topo.master_addr(topo.units[1]) != primary.addr and topo.master_addr(topo.units[1]),
        timeout=60,
        what="Sentinel to promote a replica",
    )
    assert promoted in {u.addr for u in topo.units[1:]}
    rid = prepared["restore-id"]
    a.request("restore-backup", {"step": "commit", "restore-id": rid}).expect_ok()
    primary.server.start_again()
    # `finish` tells the restore was discarded: Sentinel names another master (the
    # restarted server may still report itself master for a few seconds).
    err = a.request(
        "restore-backup", {"step": "finish", "restore-id": rid, "timeout-seconds": 10}
    ).expect_error("restore-overridden")
    assert promoted in err.message and MASTER_NAME in err.message, err
    assert a.request("status").expect_ok()["busy"] is False
    # Sentinel turns the restored server into a replica of the new primary, and the
    # resync replaces the restored data with the new primary's.
    wait_until(lambda: topo.role(primary) == "slave", timeout=60, what="the old primary to follow")
    wait_until(
        lambda: dataset_fingerprint(primary.server) == changed,
        timeout=60,
        what="the resync to discard the restore",
    )
    assert dataset_fingerprint(primary.server) != backed_up


def test_a_sentinel_that_cannot_be_suppressed_refuses_the_restore(topology, agent, moto):
    primary = topology.units[0]
    a, _ = _configure(agent, topology, primary, moto, moto.create_bucket())
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    params = topology.valkey_params(primary)
    params["sentinel"]["password"] = "not-the-sentinel-pw"
    a.request(
        "configure",
        {"cluster": "topo.valkey", "unit": "valkey/0", "valkey": params,
         "s3": s3_params(moto, a.request("status").expect_ok()["bucket"])},
    ).expect_ok()  # fmt: skip
    err = a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_error(
        "sentinel-error"
    )
    assert "not-the-sentinel-pw" not in err.message and "Sentinel" in err.message, err
    assert topology.down_afters() == [topology.down_after_ms] * 3
    leftovers = [p.name for p in primary.server.dir.iterdir() if ".restore-" in p.name]
    assert leftovers == [], leftovers
    status = a.request("status").expect_ok()
    assert status["busy"] is False, status


def test_an_agent_killed_mid_restore_puts_sentinel_back_when_it_starts(topology, agent, moto):
    primary = topology.units[0]
    a, _ = _configure(agent, topology, primary, moto, moto.create_bucket())
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_ok()
    assert topology.down_afters() == [SUPPRESSED] * 3
    record = a.state_dir / "sentinel-suppression.json"
    assert record.stat().st_mode & 0o777 == 0o600
    assert not [s for s in topology.secrets if s in record.read_text()]
    a.kill()
    assert topology.down_afters() == [SUPPRESSED] * 3, "nobody put it back yet"
    a.start()
    wait_until(
        lambda: topology.down_afters() == [topology.down_after_ms] * 3,
        timeout=30,
        what="the restarted agent to put every Sentinel back",
    )
    wait_until(lambda: not record.exists(), timeout=10, what="the record to go")


def test_one_sentinel_refusing_the_change_sets_the_others_back(topology, agent, moto):
    primary, _, last = topology.units
    a, _ = _configure(agent, topology, primary, moto, moto.create_bucket())
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    # The last unit's Sentinel lets the operator read but not change the master's settings.
    topology.sentinel_call(last, "ACL", "SETUSER", "charmed-sentinel-operator", "-sentinel|set")
    try:
        err = a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_error(
            "sentinel-error"
        )
        assert "NOPERM" in err.message and f"{last.host}:{last.sentinel_port}" in err.message
    finally:
        topology.sentinel_call(last, "ACL", "SETUSER", "charmed-sentinel-operator", "+sentinel|set")
    # All or nothing: the Sentinels already raised are back, the record is gone.
    assert topology.down_afters() == [topology.down_after_ms] * 3
    assert not (a.state_dir / "sentinel-suppression.json").exists()
    assert a.request("status").expect_ok()["busy"] is False


def test_a_sentinel_already_suppressed_refuses_the_restore(topology, agent, moto):
    # Another restore (Canonical's own, or a lost record) has one Sentinel at a day: that
    # value must not be recorded as the one to put back.
    primary, _, last = topology.units
    a, _ = _configure(agent, topology, primary, moto, moto.create_bucket())
    backup_id = a.request("create-backup").expect_ok()["backup-id"]

    def set_last(ms: int) -> None:
        topology.sentinel_call(
            last, "SENTINEL", "SET", MASTER_NAME, "down-after-milliseconds", str(ms)
        )

    set_last(SUPPRESSED)
    try:
        err = a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_error(
            "sentinel-error"
        )
        assert "another restore is suppressing Sentinel" in err.message, err
        assert topology.down_afters() == [topology.down_after_ms] * 2 + [SUPPRESSED]
    finally:
        set_last(topology.down_after_ms)
    assert not (a.state_dir / "sentinel-suppression.json").exists()
    assert a.request("status").expect_ok()["busy"] is False


def test_a_stopped_agent_puts_sentinel_back_before_it_exits(topology, agent, moto):
    primary = topology.units[0]
    a, _ = _configure(agent, topology, primary, moto, moto.create_bucket())
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_ok()
    assert topology.down_afters() == [SUPPRESSED] * 3
    # SIGTERM (the charm's remove hook stops the agent, then deletes its state directory):
    # every Sentinel is back by the time the process has exited.
    assert a.stop(timeout=60) == 0
    assert topology.down_afters() == [topology.down_after_ms] * 3
    assert not (a.state_dir / "sentinel-suppression.json").exists()


def test_an_abort_with_the_server_stopped_waits_for_sentinel_to_hear_it(
    fresh_topology, agent, moto
):
    topology = fresh_topology
    primary = topology.units[0]
    a, _ = _configure(agent, topology, primary, moto, moto.create_bucket())
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    prepared = a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_ok()
    primary.server.stop()
    stopped_at = time.monotonic()
    _hold_stopped_past_down_after(topology, stopped_at)
    aborted = a.request(
        "restore-backup", {"step": "abort", "restore-id": prepared["restore-id"]}
    ).expect_ok()
    # Putting the short value back now would fail the stopped primary over at once.
    assert aborted["sentinel"]["restored"] is False, aborted
    assert topology.down_afters() == [SUPPRESSED] * 3
    primary.server.start_again()
    wait_until(
        lambda: topology.down_afters() == [topology.down_after_ms] * 3,
        timeout=60,
        what="Sentinel put back once it hears the server",
    )
    wait_until(
        lambda: not (a.state_dir / "sentinel-suppression.json").exists(),
        timeout=10,
        what="the record to go",
    )
    assert topology.master_addr(topology.units[1]) == primary.addr
    assert topology.primary() is primary


def test_a_failed_put_back_then_a_second_restore(topology, agent, moto):
    primary, _, last = topology.units
    a, _ = _configure(agent, topology, primary, moto, moto.create_bucket())
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    first = a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_ok()
    topology.sentinel_call(last, "ACL", "SETUSER", "charmed-sentinel-operator", "-sentinel|set")
    try:
        aborted = a.request(
            "restore-backup", {"step": "abort", "restore-id": first["restore-id"]}
        ).expect_ok()
    finally:
        topology.sentinel_call(last, "ACL", "SETUSER", "charmed-sentinel-operator", "+sentinel|set")
    assert aborted["sentinel"]["restored"] is False, aborted
    # The background put-back is retrying the first restore's record; a second restore
    # puts it back itself and owns its own suppression, which nobody undoes under it.
    second = a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_ok()
    assert topology.down_afters() == [SUPPRESSED] * 3
    assert {s["down-after-milliseconds"] for s in second["sentinel"]["sentinels"]} == {
        topology.down_after_ms
    }
    record = a.state_dir / "sentinel-suppression.json"
    assert second["restore-id"] in record.read_text()
    # Past the background loop's first retries (3 s, then 6 s): still suppressed, and the
    # record is still the second restore's.
    watched_from = time.monotonic()

    def still_suppressed_past_the_retries() -> bool:
        assert topology.down_afters() == [SUPPRESSED] * 3
        assert second["restore-id"] in record.read_text()
        return time.monotonic() - watched_from > 10

    wait_until(still_suppressed_past_the_retries, timeout=30, what="the retries to pass")
    a.request("restore-backup", {"step": "abort", "restore-id": second["restore-id"]}).expect_ok()
    assert topology.down_afters() == [topology.down_after_ms] * 3
    assert not record.exists()


def test_a_record_naming_a_sentinel_that_left_the_group_is_still_put_back(
    fresh_topology, agent, moto
):
    # A Sentinel that no longer watches the master has nothing to put back: the record
    # must not stay (and block every later restore) because of it.
    topology = fresh_topology
    primary, _, last = topology.units
    a, _ = _configure(agent, topology, primary, moto, moto.create_bucket())
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_ok()
    a.kill()
    topology.sentinel_call(last, "SENTINEL", "REMOVE", MASTER_NAME)
    a.start()
    record = a.state_dir / "sentinel-suppression.json"
    wait_until(lambda: not record.exists(), timeout=30, what="the record to go")
    assert [topology.down_after(u) for u in topology.units[:2]] == [topology.down_after_ms] * 2
