"""Beside the charmed-valkey snap, through the charm's handlers with their defaults.

The server is set up like Canonical's valkey charm sets up its own: bound to the unit's
address only (127.0.0.2, not loopback), ``user default off`` and a ``charmed-operator``
superuser whose password is in the ``system-users``-style secret. The charm gets no
host, port, user or cli: it finds them in the snap layout the test writes and on the
unit's juju-info binding.
"""

from __future__ import annotations

import json
import secrets

from harness import dataset_fingerprint, load_dataset  # pyright: ignore[reportMissingImports]
from ops import testing

from charm_world import CharmUnit, write_snap_root

UNIT_ADDRESS = "127.0.0.2"


def snap_unit(charm_unit, valkey_server, tmp_path, kind: str = "valkey9") -> CharmUnit:
    password = f"op-{secrets.token_hex(8)}"
    server = valkey_server(kind, host=UNIT_ADDRESS, username="charmed-operator", password=password)
    root = write_snap_root(tmp_path / "machine", server)
    return charm_unit(
        server=server,
        password=password,
        snap_root=root,
        defaults=True,
        secret_key="charmed-operator",
    )


def stored_valkey(unit: CharmUnit) -> dict:
    return json.loads((unit.agent.state_dir / "config.json").read_text())["valkey"]


def test_defaults_find_the_server_on_the_units_address_and_back_it_up(
    charm_unit, valkey_server, tmp_path
):
    unit = snap_unit(charm_unit, valkey_server, tmp_path)
    load_dataset(unit.server, size_mb=0.3, dbs=(0, 2), seed=11)
    expected = dataset_fingerprint(unit.server)

    state = unit.configure()

    assert state.unit_status == testing.ActiveStatus("")
    valkey = stored_valkey(unit)
    assert (valkey["host"], valkey["port"]) == (UNIT_ADDRESS, unit.server.port)
    assert valkey["username"] == "charmed-operator"
    snap_bin = unit.snap_root / "snap/charmed-valkey/current/usr/bin"
    assert valkey["cli"] == str(snap_bin / "valkey-cli")
    logged = [line.message for line in unit.ctx.juju_log]
    assert any(
        m.startswith(f"valkey check of {UNIT_ADDRESS}:{unit.server.port} as charmed-operator ")
        and "(host from binding): ok (primary, valkey 9." in m
        for m in logged
    ), logged

    backup_id = unit.action("create-backup")["backup-id"]
    listed = json.loads(unit.action("list-backups", output="json")["backups"])
    assert [b["backup-id"] for b in listed] == [backup_id]

    # load=true with the snap's valkey-server (the snap has none in /snap/bin).
    results = unit.action("verify-backup", **{"backup-id": backup_id, "load": True})
    assert results["ok"] == "true" and results["load"]["loaded"] == "true"
    assert results["load"]["keys"] == {
        f"db{db}": str(n) for db, (n, _) in expected.keyspace.items()
    }
    unit.assert_no_secrets(unit.agent.log_text())
