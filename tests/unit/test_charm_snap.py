"""Beside Canonical's valkey charm: the charm's defaults find everything per unit.

A fake charmed-valkey snap root (``fakes.make_snap_root``) stands in for the machine;
the charm runs under ops.testing with the fake agent, so these tests see exactly the
configure request and action params the charm builds from the snap's layout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ops import testing

import snap_layout
from fakes import BACKUP_ID, full_state, make_snap_root

OPERATOR_PW = "op-Pa55-shared-secret"
SENTINEL_PW = "sentinel-op-Pa55"
UNIT_ADDRESS = "10.20.30.4"


@pytest.fixture
def snap_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_snap_root(tmp_path / "machine")
    monkeypatch.setattr(snap_layout, "SNAP_ROOT", root)
    return root


def snap_state(secret_content: dict[str, str], **kwargs) -> testing.State:
    """A unit whose password secret is the valkey charm's system-users secret."""
    system_users = testing.Secret(secret_content)
    base = full_state(**kwargs)
    network = testing.Network(
        "juju-info", bind_addresses=[testing.BindAddress([testing.Address(UNIT_ADDRESS)])]
    )
    config = {**base.config, "valkey-password": system_users.id}
    return testing.State(
        relations=[*base.relations],
        secrets=[*base.secrets, system_users],
        config=config,
        model=base.model,
        networks={network},
    )


def sent_valkey(agent) -> dict:
    params = agent.params_of("configure")[-1]
    assert params is not None
    return params["valkey"]


def test_defaults_beside_the_snap_need_no_per_unit_settings(ctx, agent, snap_root, probe):
    state = ctx.run(ctx.on.config_changed(), snap_state({"charmed-operator": OPERATOR_PW}))

    valkey = sent_valkey(agent)
    bindir = snap_root / "snap/charmed-valkey/current/usr/bin"
    assert valkey == {
        "host": UNIT_ADDRESS,  # nothing answered on loopback: the unit's own address
        "port": 6379,
        "username": "charmed-operator",
        "password": OPERATOR_PW,
        "source": "auto",
        "cli": str(bindir / "valkey-cli"),  # the snap's binary, not charmed-valkey.cli
        "tls": {"enabled": False},
        "sentinel": {
            "host": UNIT_ADDRESS,
            "port": 26379,
            "username": "charmed-sentinel-peers",
            "password": "peers-Pa55",
        },
    }
    assert probe.calls == [("127.0.0.1", 6379)] * len(probe.calls)
    assert state.unit_status == testing.ActiveStatus("")
    assert OPERATOR_PW not in str(ctx.juju_log) and "peers-Pa55" not in str(ctx.juju_log)


def test_a_server_answering_on_loopback_is_used_there(ctx, agent, snap_root, probe):
    probe.open.add(("127.0.0.1", 6379))
    ctx.run(ctx.on.config_changed(), snap_state({"charmed-operator": OPERATOR_PW}))
    assert sent_valkey(agent)["host"] == "127.0.0.1"
    assert sent_valkey(agent)["sentinel"]["host"] == "127.0.0.1"


def test_the_shared_secrets_sentinel_key_is_used_for_sentinel(ctx, agent, snap_root):
    content = {"charmed-operator": OPERATOR_PW, "charmed-sentinel-operator": SENTINEL_PW}
    ctx.run(ctx.on.config_changed(), snap_state(content))
    sentinel = sent_valkey(agent)["sentinel"]
    assert (sentinel["username"], sentinel["password"]) == (
        "charmed-sentinel-operator",
        SENTINEL_PW,
    )


def test_a_rotated_system_users_secret_reaches_the_agent(ctx, agent, snap_root):
    state = snap_state({"charmed-operator": OPERATOR_PW})
    state = ctx.run(ctx.on.config_changed(), state)
    secret = next(s for s in state.secrets if "charmed-operator" in s.tracked_content)
    rotated = testing.Secret(
        {"charmed-operator": OPERATOR_PW},
        latest_content={"charmed-operator": "rotated-Pa55"},
        id=secret.id,
    )
    state = testing.State(
        relations=state.relations,
        secrets=[rotated, *[s for s in state.secrets if s.id != secret.id]],
        config=state.config,
        model=state.model,
        networks=state.networks,
    )
    ctx.run(ctx.on.secret_changed(rotated), state)
    assert sent_valkey(agent)["password"] == "rotated-Pa55"


def test_client_tls_in_the_snap_is_followed_without_options(ctx, agent, tmp_path, monkeypatch):
    root = make_snap_root(
        tmp_path / "tls-machine",
        valkey_conf=(
            "port 0\ntls-port 6380\n"
            "tls-ca-cert-dir /var/snap/charmed-valkey/current/tls/ca_certs\n"
            "tls-cert-file /var/snap/charmed-valkey/current/tls/client.pem\n"
            "tls-key-file /var/snap/charmed-valkey/current/tls/client.key\n"
        ),
        sentinel_conf="port 0\ntls-port 26380\n",
    )
    monkeypatch.setattr(snap_layout, "SNAP_ROOT", root)
    ctx.run(ctx.on.config_changed(), snap_state({"charmed-operator": OPERATOR_PW}))
    valkey = sent_valkey(agent)
    tls = {
        "enabled": True,
        "insecure": False,
        "ca-dir": "/var/snap/charmed-valkey/current/tls/ca_certs",
        "cert-file": "/var/snap/charmed-valkey/current/tls/client.pem",
        "key-file": "/var/snap/charmed-valkey/current/tls/client.key",
    }
    assert valkey["port"] == 6380 and valkey["tls"] == tls
    # Sentinel listens only with TLS: its TLS port goes with the snap's TLS files.
    assert valkey["sentinel"]["port"] == 26380 and valkey["sentinel"]["tls"] == tls
    sentinel = {"ok": False, "code": "sentinel-error", "message": "protocol error"}
    sentinel["addr"] = f"{UNIT_ADDRESS}:26380"
    agent.responses["status"]["valkey-check"] = {"ok": True, "sentinel": sentinel}
    state = ctx.run(ctx.on.update_status(), snap_state({"charmed-operator": OPERATOR_PW}))
    assert state.unit_status == testing.BlockedStatus(
        f"Sentinel at {UNIT_ADDRESS}:26380 (TLS only: client TLS is on) failed its check: "
        "protocol error; restore-backup is refused; backups work"
    )


def test_a_secret_without_the_users_key_or_password_blocks(ctx, agent, snap_root):
    state = ctx.run(ctx.on.config_changed(), snap_state({"charmed-replication": "r"}))
    assert state.unit_status == testing.BlockedStatus(
        "valkey-password secret has no 'charmed-operator' or 'password' key"
    )
    assert "configure" not in agent.ops()


def test_verify_with_load_uses_the_snaps_server_binary(ctx, agent, snap_root):
    state = snap_state({"charmed-operator": OPERATOR_PW})
    ctx.run(ctx.on.action("verify-backup", params={"backup-id": BACKUP_ID, "load": True}), state)
    server = str(snap_root / "snap/charmed-valkey/current/usr/bin/valkey-server")
    assert agent.params_of("verify-backup")[-1] == {
        "backup-id": BACKUP_ID,
        "load": True,
        "server": server,
    }
    # Without load no server is named; an explicit one wins over the snap's.
    ctx.run(ctx.on.action("verify-backup", params={"backup-id": BACKUP_ID}), state)
    assert agent.params_of("verify-backup")[-1] == {"backup-id": BACKUP_ID, "load": False}
    params = {"backup-id": BACKUP_ID, "load": True, "server": "/opt/valkey/bin/valkey-server"}
    ctx.run(ctx.on.action("verify-backup", params=params), state)
    assert agent.params_of("verify-backup")[-1]["server"] == "/opt/valkey/bin/valkey-server"


def test_restore_stops_and_starts_the_snaps_server_unit(ctx, agent, systemd, snap_root):
    systemd.units = {"snap.charmed-valkey.server.service", "valkey-server.service"}
    state = snap_state({"charmed-operator": OPERATOR_PW})
    ctx.run(ctx.on.action("restore-backup", params={"backup-id": BACKUP_ID}), state)
    assert systemd.verbs() == [
        "stop snap.charmed-valkey.server.service",
        "start snap.charmed-valkey.server.service",
    ]
    assert ctx.action_results["service"] == "snap.charmed-valkey.server.service"


@pytest.mark.parametrize(
    ("code", "detail", "start"),
    [
        ("valkey-auth", "WRONGPASS", "Valkey rejected user charmed-operator at 10.20.30.4:6379"),
        ("valkey-unreachable", "connection refused", "cannot reach Valkey at 10.20.30.4:6379"),
        ("valkey-permission", "NOPERM sync", "Valkey user charmed-operator lacks rights"),
    ],
)
def test_a_failed_valkey_check_blocks_the_unit_before_any_backup(
    ctx, agent, snap_root, code, detail, start
):
    # Like the agent: configure stores the configuration and runs the check; status
    # repeats the last check, or runs it again when asked to (check-valkey).
    failed = {"ok": False, "code": code, "message": detail, "addr": f"{UNIT_ADDRESS}:6379"}
    passed = {"ok": True, "code": None, "message": None, "addr": f"{UNIT_ADDRESS}:6379"}
    server = {"check": failed, "last": None}
    status = dict(agent.responses["status"])

    def configure(_params):
        server["last"] = server["check"]
        return {"configured": True, "valkey-check": server["last"]}

    def agent_status(params):
        if params and params.get("check-valkey"):
            server["last"] = server["check"]
        return {**status, "valkey-check": server["last"]}

    agent.responses["configure"] = configure
    agent.responses["status"] = agent_status

    state = ctx.run(ctx.on.config_changed(), snap_state({"charmed-operator": OPERATOR_PW}))
    assert isinstance(state.unit_status, testing.BlockedStatus)
    assert state.unit_status.message.startswith(start)
    assert "create-backup" not in agent.ops()

    # Still failing: update-status re-runs the check (without re-sending the
    # configuration) and stays blocked.
    state = ctx.run(ctx.on.update_status(), state)
    rechecks = [p for p in agent.params_of("status") if p and p.get("check-valkey")]
    assert len(rechecks) == 1 and len(agent.params_of("configure")) == 1
    assert isinstance(state.unit_status, testing.BlockedStatus)

    # Fixed on the server's side, with no Juju event: the next update-status clears it.
    server["check"] = passed
    state = ctx.run(ctx.on.update_status(), state)
    assert state.unit_status == testing.ActiveStatus("")
    # Passed now: the update-status after that does not ask again.
    ctx.run(ctx.on.update_status(), state)
    rechecks = [p for p in agent.params_of("status") if p and p.get("check-valkey")]
    assert len(rechecks) == 2
