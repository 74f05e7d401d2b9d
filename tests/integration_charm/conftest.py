"""Shared setup for running the charm's handlers against the real agent.

These tests drive ``ValkeyBackupCharm`` through ``ops.testing`` like the unit tests, but
with the real ``valkey-backup-agent`` binary listening on a real socket, a real Valkey
and a real S3 server (scripts/setup.sh installs them). The charm is pointed at the test
agent by its two seams:

- ``VALKEY_BACKUP_SOCKET``: the socket the charm's ``AgentClient`` connects to
  (``service.SOCKET_ENV``), set before any event runs;
- ``charm.Systemctl``: replaced with a ``Systemctl`` whose ``run`` stops and starts the
  test's Valkey server (``ServerSystemd``), so ``restore-backup`` runs without systemd;
- ``snap_layout.SNAP_ROOT``: the filesystem root the charm looks for the charmed-valkey
  snap under (an empty directory unless the test builds a snap layout, see
  ``charm_world.write_snap_root``).

Each ``CharmUnit`` sets the three seams to its own values before each of its events, so
one test can drive several units (one per server of a topology).

The real-server fixtures (``moto``, ``valkey_server``, ``agent``…) are the integration
suite's own: tests/integration/conftest.py is loaded under another module name and its
fixtures and failure-log hooks are re-exported here. Everything a test needs about one
unit is in a ``CharmUnit`` from the ``charm_unit`` factory fixture.
"""

from __future__ import annotations

import contextlib
import importlib.util
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# Before anything imports `charm`: from the repository root, the charm/ directory would
# be found as a namespace package of that name. charm_world does the same for tests.
_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parents[1] / "tests" / "integration"))
sys.path.insert(0, str(_HERE.parents[1] / "charm" / "src"))
sys.path.insert(0, str(_HERE))

from harness import agent_binary  # noqa: E402  # pyright: ignore[reportMissingImports]
from ops import testing  # noqa: E402

import charm as charm_module  # noqa: E402
import charm_world  # noqa: E402
import snap_layout  # noqa: E402
from charm_world import (  # noqa: E402
    ACTIONS,
    CONFIG,
    INTEGRATION,
    META,
    MODEL,
    PRINCIPAL_APP,
    VALKEY_UNIT,
    CharmUnit,
    ServerSystemd,
    s3_relation,
)

assert Path(charm_module.__file__ or "").parent == charm_world.ROOT / "charm" / "src"


def _load_integration_conftest() -> ModuleType:
    """tests/integration/conftest.py as a module of its own name (not ``conftest``)."""
    name = "vb_integration_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, INTEGRATION / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_shared = _load_integration_conftest()

# The integration suite's fixtures and hooks, re-exported so pytest finds them here.
components = _shared.components
moto = _shared.moto
moto_auth = _shared.moto_auth
moto_bucket = _shared.moto_bucket
valkey_server = _shared.valkey_server
agent = _shared.agent
topology = _shared.topology
fresh_topology = _shared.fresh_topology
pytest_runtest_setup = _shared.pytest_runtest_setup
pytest_runtest_makereport = _shared.pytest_runtest_makereport


def pytest_configure(config: pytest.Config) -> None:
    # object-storage-charmlib 1.0.0 calls a deprecated ops API; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:JujuVersion.from_environ:DeprecationWarning")


UnitFactory = Callable[..., CharmUnit]


@pytest.fixture
def charm_unit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, valkey_server: Any, agent: Any, moto: Any
) -> Iterator[UnitFactory]:
    """Factory: ``charm_unit(kind="valkey8", …)`` → a ``CharmUnit``, not yet configured.

    Options: ``password`` (the server's; None for none), ``secret_password`` (what the
    user secret holds; defaults to ``password``), ``schema`` ("v1"/"v0" s3 relation),
    ``bucket`` (default: a fresh one; a name moto does not have makes the agent create
    it), ``server`` (use this running server instead of starting one), ``s3_server``
    (default: the session's open ``moto``) with ``credentials`` (default: random keys,
    which the open moto accepts), ``config`` (extra charm options).

    Beside a snap: ``snap_root`` (a root built by ``charm_world.write_snap_root``) makes
    the unit find the charmed-valkey snap there, and ``defaults=True`` leaves
    valkey-host, valkey-port and valkey-cli-path unset, gives the unit a juju-info
    binding on the server's address and keys the secret by ``secret_key`` (the valkey
    charm's ``system-users`` shape: ``{"charmed-operator": …}``). ``unit_id`` names the
    principal unit (``valkey/<unit_id>``); ``bucket`` shared by several units makes them
    one cluster.
    """
    # The charm directory as charmcraft packs it: the agent under test at bin/.
    charm_root = tmp_path / "charm-root"
    (charm_root / "bin").mkdir(parents=True)
    (charm_root / "bin" / "valkey-backup-agent").symlink_to(agent_binary())
    no_snap = tmp_path / "machine-without-snap"
    no_snap.mkdir()
    stack = contextlib.ExitStack()

    def make(
        kind: str = "valkey8",
        *,
        password: str | None = "",
        secret_password: str | None = "",
        schema: str = "v1",
        bucket: str | None = None,
        server: Any = None,
        s3_server: Any = None,
        credentials: Any = None,
        config: dict[str, Any] | None = None,
        snap_root: Path | None = None,
        defaults: bool = False,
        secret_key: str = "password",  # noqa: S107 (the key name inside the secret)
        extra_secret: dict[str, str] | None = None,
        unit_id: int = 0,
    ) -> CharmUnit:
        if password == "":
            password = f"vk-pw-{secrets.token_hex(8)}"
        if secret_password == "":
            secret_password = password
        if server is None:
            server = valkey_server(kind, password=password)
        the_agent = agent()
        # Beside the snap, restore finds the snap's server unit first.
        service = snap_layout.SERVER_SERVICE if snap_root is not None else VALKEY_UNIT
        systemd = ServerSystemd(server, unit=service)
        ctx = stack.enter_context(
            testing.Context(
                charm_module.ValkeyBackupCharm,
                meta=META,
                actions=ACTIONS,
                config=CONFIG,
                charm_root=charm_root,
                unit_id=unit_id,
            )
        )

        s3_server = s3_server or moto
        if credentials is None:
            access_key = "AKIA" + secrets.token_hex(8).upper()
            secret_key_s3 = f"vb-s3-secret-{secrets.token_hex(12)}"
        else:
            access_key, secret_key_s3 = credentials.access_key, credentials.secret_key
        bucket_name: str = bucket or s3_server.create_bucket()
        relation, s3_secrets = s3_relation(
            schema, s3_server, bucket_name, access_key, secret_key_s3
        )

        charm_config: dict[str, Any] = (
            {}
            if defaults
            else {
                "valkey-host": server.host,
                "valkey-port": server.port,
                "valkey-cli-path": str(server.cli),
            }
        )
        charm_config.update(config or {})
        pw_secret = None
        if secret_password is not None:
            pw_secret = testing.Secret({secret_key: secret_password, **(extra_secret or {})})
            charm_config["valkey-password"] = pw_secret.id
        networks = set()
        if defaults:
            address = testing.Address(server.host)
            networks.add(
                testing.Network("juju-info", bind_addresses=[testing.BindAddress([address])])
            )
        state = testing.State(
            relations=[
                testing.SubordinateRelation(
                    "juju-info", remote_app_name=PRINCIPAL_APP, remote_unit_id=unit_id
                ),
                relation,
            ],
            secrets=[*s3_secrets, *([pw_secret] if pw_secret else [])],
            config=charm_config,
            model=testing.Model(name=MODEL),
            networks=networks,
        )
        return CharmUnit(
            ctx=ctx,
            server=server,
            agent=the_agent,
            s3=s3_server,
            bucket=bucket_name,
            systemd=systemd,
            valkey_password=password,
            access_key=access_key,
            secret_key=secret_key_s3,
            state=state,
            s3_relation=relation,
            password_secret=pw_secret,
            monkeypatch=monkeypatch,
            snap_root=snap_root or no_snap,
            principal_unit=f"{PRINCIPAL_APP}/{unit_id}",
        )

    with stack:
        yield make
