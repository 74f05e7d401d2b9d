"""`active` means a backup would work: configure's check of the real server, as statuses.

Each test drives the charm's handlers against the real agent and a real server set up
wrong in one way; the unit must be `blocked`, naming what is wrong, before any backup
is tried, and a fix on the server's side must clear it on the next update-status.
"""

from __future__ import annotations

import secrets

from harness import free_port  # pyright: ignore[reportMissingImports]
from ops import testing

from charm_world import CharmUnit


def acl_server(valkey_server, *, rights: str) -> tuple:
    """A server with `user default off` and a user `backup` holding only ``rights``."""
    password = f"op-{secrets.token_hex(8)}"
    server = valkey_server("valkey9", username="charmed-operator", password=password)
    backup_pw = f"bk-{secrets.token_hex(8)}"
    server.client().execute_command(
        "ACL", "SETUSER", "backup", "on", f">{backup_pw}", *rights.split()
    )
    return server, backup_pw


def assert_blocked(state: testing.State, start: str) -> None:
    assert isinstance(state.unit_status, testing.BlockedStatus), state.unit_status
    assert state.unit_status.message.startswith(start), state.unit_status.message


def test_a_wrong_user_blocks_naming_the_user(charm_unit, valkey_server):
    server, backup_pw = acl_server(valkey_server, rights="~* +@all")
    unit: CharmUnit = charm_unit(
        server=server, password=backup_pw, config={"valkey-username": "nobody"}
    )
    state = unit.configure()
    assert_blocked(state, f"Valkey rejected user nobody at 127.0.0.1:{server.port}")
    assert unit.agent_status()["valkey-check"]["code"] == "valkey-auth"
    unit.assert_no_secrets(unit.agent.log_text())


def test_an_unreachable_server_blocks_then_clears_when_it_answers(charm_unit, valkey_server):
    server = valkey_server("valkey8", password="pw-unreach")
    server.stop()
    unit: CharmUnit = charm_unit(server=server, password="pw-unreach")
    state = unit.configure()
    assert_blocked(state, f"cannot reach Valkey at 127.0.0.1:{server.port}: ")
    assert "check valkey-host, valkey-port, valkey-tls" in state.unit_status.message

    server.start_again()  # no Juju event: update-status re-runs the check
    state = unit.run(unit.ctx.on.update_status())
    assert state.unit_status == testing.ActiveStatus("")


def test_a_user_without_replication_rights_blocks(charm_unit, valkey_server):
    server, backup_pw = acl_server(valkey_server, rights="~* +@read +info +config|get")
    unit: CharmUnit = charm_unit(
        server=server, password=backup_pw, config={"valkey-username": "backup"}
    )
    state = unit.configure()
    assert_blocked(state, "Valkey user backup lacks rights a backup needs: NOPERM ")
    assert "use charmed-operator or grant +sync" in state.unit_status.message

    # Granted on the server: the next update-status finds the unit ready.
    server.client().execute_command(
        "ACL", "SETUSER", "backup", "+sync", "+replconf", "+psync", "+ping"
    )
    state = unit.run(unit.ctx.on.update_status())
    assert state.unit_status == testing.ActiveStatus("")
    assert unit.action("create-backup")["status"] == "finished"
    unit.assert_no_secrets(unit.agent.log_text())


def test_nothing_listening_on_the_configured_port_blocks(charm_unit, valkey_server):
    server = valkey_server("valkey8", password="pw-port")
    unit: CharmUnit = charm_unit(
        server=server, password="pw-port", config={"valkey-port": free_port()}
    )
    state = unit.configure()
    assert_blocked(state, "cannot reach Valkey at 127.0.0.1:")
