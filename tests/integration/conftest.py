"""Fixtures for the integration suite: real servers on 127.0.0.1 and the real agent.

Scopes are chosen for a two-core machine:
- session: `components`, `moto`, `moto_auth`, `garage` (slow to start, and tests stay
  independent by using their own bucket: `moto_bucket`, `unique_bucket_name`);
- function: Valkey/Redis servers (`valkey_server` factory, ~50 ms each) and agents
  (`agent` factory), so no state leaks between tests.

Every process is killed at teardown, also when a test fails. When a test fails, the
part of each server's and agent's log written during that test is attached to the report
(section "harness logs").
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Make `harness` importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    SERVER_KINDS,
    Agent,
    ArgvSampler,
    Components,
    GarageServer,
    MotoServer,
    ValkeyServer,
    all_process_argv,
    load_components,
    unique_bucket_name,
)
from harness.process import ALL_PROCESSES
from harness.topology import Topology

_LOG_MARKS = pytest.StashKey[tuple[int, dict[int, int]]]()
_LOG_LIMIT = 12000


# --------------------------------------------------------------------------- failure logs


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    # Remember how many processes existed and how far each live one's log had got, so a
    # failure report shows only what was logged during this test.
    offsets = {id(p): p.log_size() for p in ALL_PROCESSES if p.alive()}
    item.stash[_LOG_MARKS] = (len(ALL_PROCESSES), offsets)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed or _LOG_MARKS not in item.stash:
        return
    n_before, offsets = item.stash[_LOG_MARKS]
    procs = list(ALL_PROCESSES)
    chosen = [(p, offsets[id(p)]) for p in procs[:n_before] if id(p) in offsets]
    chosen += [(p, 0) for p in procs[n_before:]]
    parts = []
    for proc, start in chosen:
        try:
            with open(proc.log_path, "rb") as fh:
                fh.seek(start)
                text = fh.read().decode(errors="replace")
        except OSError:
            continue
        if not text.strip():
            continue
        if len(text) > _LOG_LIMIT:
            text = "…" + text[-_LOG_LIMIT:]
        parts.append(f"===== {proc.describe()} =====\n{text}")
    if parts:
        report.sections.append(("harness logs", "\n".join(parts)))


# --------------------------------------------------------------------------- components


@pytest.fixture(scope="session")
def components() -> Components:
    """Paths of the installed servers (from `$VB_CACHE/components.env`)."""
    return load_components()


# --------------------------------------------------------------------------- S3 servers


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto S3 server for the whole session; accepts any credentials.

    Tests create their own buckets (`moto_bucket`, `moto.create_bucket()`,
    `moto.create_object_lock_bucket()`) so they stay independent.
    """
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto S3 server that enforces SigV4 credentials and IAM policies.

    `moto_auth.access_key/secret_key` are admin credentials; `moto_auth.create_key(
    deny=["s3:CreateBucket"])` makes a restricted key; `MotoServer.unknown_credentials()`
    gives a key it rejects with InvalidAccessKeyId.
    """
    server = MotoServer(tmp_path_factory.mktemp("moto-auth"), auth=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto S3 server on HTTPS with a certificate from a private CA.

    `moto_tls.endpoint` is https://127.0.0.1:PORT; `moto_tls.ca.ca_pem` is the CA to pass
    as `tls-ca-chain` (the agent must fail to connect without it).
    """
    server = MotoServer(tmp_path_factory.mktemp("moto-tls"), tls=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_bucket(moto: MotoServer) -> str:
    """A fresh, empty bucket on the session's `moto` server."""
    return moto.create_bucket()


@pytest.fixture(scope="session")
def garage(
    tmp_path_factory: pytest.TempPathFactory, components: Components
) -> Iterator[GarageServer]:
    """A single-node Garage for the session, with a key and a bucket (`garage.bucket`).

    More buckets: `garage.create_bucket()`. Fails (not skips) when Garage is not built.
    """
    components.require("garage")
    server = GarageServer(tmp_path_factory.mktemp("garage"), components=components)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- Valkey


class ValkeyFactory:
    """Start Valkey/Redis servers for one test; all are stopped at its teardown.

    `valkey_server(kind="valkey8", password=None, username=None, extra_args=())` starts a
    server; `valkey_server.from_rdb(kind, rdb_path, **kw)` starts one that loads
    `rdb_path` as its dump.rdb.
    """

    def __init__(self, base: Path, components: Components):
        self.base = base
        self.components = components
        self.servers: list[ValkeyServer] = []

    def __call__(self, kind: str = "valkey8", **kwargs: Any) -> ValkeyServer:
        workdir = self.base / f"{kind}-{len(self.servers)}"
        server = ValkeyServer(kind, workdir, components=self.components, **kwargs)
        self.servers.append(server)
        return server.start()

    def from_rdb(self, kind: str, rdb_path: Path, **kwargs: Any) -> ValkeyServer:
        return self(kind, rdb_path=rdb_path, **kwargs)

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def valkey_server(tmp_path: Path, components: Components) -> Iterator[ValkeyFactory]:
    """Factory fixture: `valkey_server("valkey9", password="pw")` → started ValkeyServer."""
    factory = ValkeyFactory(tmp_path / "valkey", components)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(params=SERVER_KINDS)
def server_kind(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over every server kind (valkey8, valkey9, redis7)."""
    return request.param


# --------------------------------------------------------------------------- topology


@pytest.fixture(scope="module")
def topology(
    tmp_path_factory: pytest.TempPathFactory, components: Components
) -> Iterator[Topology]:
    """A three-unit cluster shaped like Canonical's valkey charm (harness/topology.py),
    shared by one module's tests: ~4 s to start. Tests that leave it changed (a restore, a
    failover) use `fresh_topology` instead."""
    topo = Topology(tmp_path_factory.mktemp("topology"), components=components)
    try:
        yield topo.start()
    finally:
        topo.stop()


@pytest.fixture
def fresh_topology(tmp_path: Path, components: Components) -> Iterator[Topology]:
    """A three-unit topology of this test's own (see `topology`)."""
    topo = Topology(tmp_path / "topology", components=components)
    try:
        yield topo.start()
    finally:
        topo.stop()


# --------------------------------------------------------------------------- agent


class AgentFactory:
    """Start agents for one test; each gets its own dir (socket, state, log).

    `agent(start=True, env=None, extra_args=(), state_dir=None)` returns an Agent,
    started unless `start=False`. All are killed (with their process groups) at teardown.
    """

    def __init__(self, base: Path):
        self.base = base
        self.agents: list[Agent] = []

    def __call__(self, *, start: bool = True, **kwargs: Any) -> Agent:
        a = Agent(self.base / f"agent-{len(self.agents)}", **kwargs)
        self.agents.append(a)
        return a.start() if start else a

    def cleanup(self) -> None:
        for a in self.agents:
            a.cleanup()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentFactory]:
    """Factory fixture: `agent()` → a started Agent serving its own socket."""
    factory = AgentFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


# --------------------------------------------------------------------------- secrets


@pytest.fixture
def process_argvs() -> Callable[[], list[tuple[int, list[str]]]]:
    """`process_argvs()` → [(pid, argv)] for every process on the machine right now."""
    return all_process_argv


@pytest.fixture
def argv_sampler() -> type[ArgvSampler]:
    """The ArgvSampler class: samples /proc while a block runs.

    `with argv_sampler() as s: ...` then `assert not s.leaks([password])`; sampling
    sees short-lived children (valkey-cli) that one snapshot would miss.
    """
    return ArgvSampler


@pytest.fixture
def bucket_name() -> str:
    """A unique bucket name (not created)."""
    return unique_bucket_name()
