"""Deploy the packed charm on a real Juju controller and move real data.

Needs what only a Juju machine has, so every test here is skipped (with the reason)
unless all of these are present:

- the ``juju`` CLI with a reachable controller (``juju show-controller`` works);
- a packed charm: ``$VALKEY_BACKUP_CHARM`` or ``valkey-backup_*.charm`` at the
  repository root (``charmcraft pack``);
- an S3 store the machines can reach: ``$VALKEY_BACKUP_S3_ENDPOINT``,
  ``$VALKEY_BACKUP_S3_ACCESS_KEY``, ``$VALKEY_BACKUP_S3_SECRET_KEY`` and optionally
  ``$VALKEY_BACKUP_S3_BUCKET`` (default ``valkey-backup-it``).

The principal is the ``ubuntu`` charm with Valkey from the Ubuntu archive (``redis-server``
where the archive has no ``valkey-server``), so that the test controls the server's
password and config; ``$VALKEY_BACKUP_PRINCIPAL`` names another machine charm to use
instead (it must run a Valkey/Redis server on 127.0.0.1:6379 with that password).

Run: ``tox -e jubilant`` (or ``pytest tests/jubilant``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("jubilant", reason="jubilant is not installed (tox -e jubilant installs it)")
import jubilant

ROOT = Path(__file__).resolve().parents[2]
APP = "valkey-backup"
PRINCIPAL = os.environ.get("VALKEY_BACKUP_PRINCIPAL", "ubuntu")
S3_APP = "s3-integrator"
PASSWORD = "it-valkey-password-0123"


def _packed_charm() -> Path | None:
    if os.environ.get("VALKEY_BACKUP_CHARM"):
        return Path(os.environ["VALKEY_BACKUP_CHARM"])
    found = sorted(ROOT.glob("valkey-backup_*.charm"))
    return found[-1] if found else None


def _skip_reason() -> str | None:
    if shutil.which("juju") is None:
        return "no juju CLI on this machine: the jubilant suite needs a Juju controller"
    try:
        subprocess.run(["juju", "show-controller"], check=True, capture_output=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return "juju cannot reach a controller (juju show-controller failed)"
    if _packed_charm() is None:
        return "no packed charm: run charmcraft pack or set VALKEY_BACKUP_CHARM"
    missing = [
        name
        for name in (
            "VALKEY_BACKUP_S3_ENDPOINT",
            "VALKEY_BACKUP_S3_ACCESS_KEY",
            "VALKEY_BACKUP_S3_SECRET_KEY",
        )
        if not os.environ.get(name)
    ]
    if missing:
        return f"no S3 store for the deployment: set {', '.join(missing)}"
    return None


SKIP_REASON = _skip_reason()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


@pytest.fixture(scope="module")
def juju() -> Iterator[jubilant.Juju]:
    with jubilant.temp_model() as model:
        model.wait_timeout = 20 * 60
        yield model


def valkey_cli(juju: jubilant.Juju, *args: str) -> str:
    """Run the principal's cli on its machine, authenticated."""
    cli = "$(command -v valkey-cli || command -v redis-cli)"
    command = " ".join([f"REDISCLI_AUTH={PASSWORD}", cli, *args])
    task = juju.exec(command, unit=f"{PRINCIPAL}/0")
    return task.stdout.strip()


def subordinate_status(status: jubilant.Status) -> tuple[str, str]:
    units = status.apps[PRINCIPAL].units
    sub = units[f"{PRINCIPAL}/0"].subordinates[f"{APP}/0"]
    return sub.workload_status.current, sub.workload_status.message


@pytest.mark.timeout(40 * 60)
def test_deploy_relate_and_go_active(juju: jubilant.Juju):
    charm = _packed_charm()
    assert charm is not None
    if PRINCIPAL == "ubuntu":
        juju.deploy("ubuntu", base="ubuntu@24.04")
        juju.wait(lambda s: jubilant.all_active(s, "ubuntu"))
        juju.exec(
            "sudo apt-get update -q && "
            "(sudo apt-get install -yq valkey-server || sudo apt-get install -yq redis-server)",
            unit="ubuntu/0",
        )
        juju.exec(
            f"for f in /etc/valkey/valkey.conf /etc/redis/redis.conf; do "
            f"[ -f $f ] && echo 'requirepass {PASSWORD}' | sudo tee -a $f; done; "
            "sudo systemctl restart valkey-server 2>/dev/null "
            "|| sudo systemctl restart redis-server",
            unit="ubuntu/0",
        )
    else:
        juju.deploy(PRINCIPAL)

    # The Valkey password as a user secret, granted to the charm and named in config.
    juju.deploy(charm, APP)
    secret = juju.add_secret("valkey-password", {"password": PASSWORD})
    juju.grant_secret("valkey-password", APP)
    juju.config(APP, {"valkey-password": str(secret)})
    juju.integrate(APP, PRINCIPAL)

    juju.deploy(S3_APP, channel="2/edge")
    juju.config(
        S3_APP,
        {
            "endpoint": os.environ["VALKEY_BACKUP_S3_ENDPOINT"],
            "bucket": os.environ.get("VALKEY_BACKUP_S3_BUCKET", "valkey-backup-it"),
            "path": "it",
            "s3-uri-style": "path",
        },
    )
    creds = juju.add_secret(
        "s3-credentials",
        {
            "access-key": os.environ["VALKEY_BACKUP_S3_ACCESS_KEY"],
            "secret-key": os.environ["VALKEY_BACKUP_S3_SECRET_KEY"],
        },
    )
    juju.grant_secret("s3-credentials", S3_APP)
    juju.config(S3_APP, {"credentials": str(creds)})
    juju.integrate(APP, S3_APP)

    juju.wait(lambda s: subordinate_status(s)[0] == "active", error=jubilant.any_error)


@pytest.mark.timeout(20 * 60)
def test_backup_list_restore_verify_move_data(juju: jubilant.Juju):
    unit = f"{APP}/0"
    valkey_cli(juju, "SET", "it:key", "before")
    created = juju.run(unit, "create-backup", wait=15 * 60).results
    backup_id = created["backup-id"]
    assert int(created["size-bytes"]) > 0

    listed = juju.run(unit, "list-backups", {"output": "json"}).results
    assert backup_id in [b["backup-id"] for b in json.loads(listed["backups"])]
    table = juju.run(unit, "list-backups").results["backups"]
    assert backup_id in table

    valkey_cli(juju, "SET", "it:key", "after")
    restored = juju.run(unit, "restore-backup", {"backup-id": backup_id}, wait=15 * 60).results
    assert restored["loaded"] == "true"
    assert valkey_cli(juju, "GET", "it:key") == "before"

    verified = juju.run(unit, "verify-backup", {"backup-id": backup_id}, wait=15 * 60).results
    assert verified["ok"] == "true"


@pytest.mark.timeout(20 * 60)
def test_removing_s3_blocks_and_backups_fail_clearly(juju: jubilant.Juju):
    juju.remove_relation(APP, S3_APP)
    juju.wait(lambda s: subordinate_status(s)[0] == "blocked")
    assert "no S3 storage" in subordinate_status(juju.status())[1]
    with pytest.raises(jubilant.TaskError) as info:
        juju.run(f"{APP}/0", "create-backup")
    assert "not-configured" in info.value.task.message
