"""Shared setup for running the charm's handlers against the real agent.

These tests drive ``ValkeyBackupCharm`` through ``ops.testing`` like the unit tests, but
with the real ``valkey-backup-agent`` binary listening on a real socket, a real Valkey
and a real S3 server (scripts/setup.sh installs them). The charm is pointed at the test
agent by its two seams:

- ``VALKEY_BACKUP_SOCKET``: the socket the charm's ``AgentClient`` connects to
  (``service.SOCKET_ENV``), set before any event runs;
- ``charm.Systemctl``: replaced with a ``Systemctl`` whose ``run`` stops and starts the
  test's Valkey server (``ServerSystemd``), so ``restore-backup`` runs without systemd.

The real-server fixtures (``moto``, ``valkey_server``, ``agent``…) are the integration
suite's own: tests/integration/conftest.py is loaded under another module name and its
fixtures and failure-log hooks are re-exported here. Everything a test needs about one
unit is in a ``CharmUnit`` from the ``charm_unit`` factory fixture.
"""

from __future__ import annotations

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
from charm_world import (  # noqa: E402
    ACTIONS,
    CONFIG,
    INTEGRATION,
    META,
    MODEL,
    PRINCIPAL_APP,
    CharmUnit,
    ServerSystemd,
    s3_relation,
)
from service import SOCKET_ENV, Systemctl  # noqa: E402

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
    which the open moto accepts), ``config`` (extra charm options). One unit per test:
    the socket seam is process-wide.
    """
    # The charm directory as charmcraft packs it: the agent under test at bin/.
    charm_root = tmp_path / "charm-root"
    (charm_root / "bin").mkdir(parents=True)
    (charm_root / "bin" / "valkey-backup-agent").symlink_to(agent_binary())
    with testing.Context(
        charm_module.ValkeyBackupCharm,
        meta=META,
        actions=ACTIONS,
        config=CONFIG,
        charm_root=charm_root,
    ) as ctx:
        made: list[CharmUnit] = []

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
        ) -> CharmUnit:
            assert not made, "one CharmUnit per test"
            if password == "":
                password = f"vk-pw-{secrets.token_hex(8)}"
            if secret_password == "":
                secret_password = password
            if server is None:
                server = valkey_server(kind, password=password)
            the_agent = agent()
            monkeypatch.setenv(SOCKET_ENV, str(the_agent.socket_path))
            systemd = ServerSystemd(server)
            monkeypatch.setattr(charm_module, "Systemctl", lambda: Systemctl(run=systemd))

            s3_server = s3_server or moto
            if credentials is None:
                access_key = "AKIA" + secrets.token_hex(8).upper()
                secret_key = f"vb-s3-secret-{secrets.token_hex(12)}"
            else:
                access_key, secret_key = credentials.access_key, credentials.secret_key
            bucket_name: str = bucket or s3_server.create_bucket()
            relation, s3_secrets = s3_relation(
                schema, s3_server, bucket_name, access_key, secret_key
            )

            charm_config: dict[str, Any] = {
                "valkey-host": server.host,
                "valkey-port": server.port,
                "valkey-cli-path": str(server.cli),
                **(config or {}),
            }
            pw_secret = None
            if secret_password is not None:
                pw_secret = testing.Secret({"password": secret_password})
                charm_config["valkey-password"] = pw_secret.id
            state = testing.State(
                relations=[
                    testing.SubordinateRelation(
                        "juju-info", remote_app_name=PRINCIPAL_APP, remote_unit_id=0
                    ),
                    relation,
                ],
                secrets=[*s3_secrets, *([pw_secret] if pw_secret else [])],
                config=charm_config,
                model=testing.Model(name=MODEL),
            )
            unit = CharmUnit(
                ctx=ctx,
                server=server,
                agent=the_agent,
                s3=s3_server,
                bucket=bucket_name,
                systemd=systemd,
                valkey_password=password,
                access_key=access_key,
                secret_key=secret_key,
                state=state,
                s3_relation=relation,
                password_secret=pw_secret,
            )
            made.append(unit)
            return unit

        yield make
