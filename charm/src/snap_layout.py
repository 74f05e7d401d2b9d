"""The charmed-valkey snap's layout: what Canonical's valkey machine charm runs.

Canonical's ``valkey`` charm (track 9) installs the ``charmed-valkey`` snap and writes its
configuration into the snap's data directory. When that layout is present on the
machine, this module reads the few facts the backup charm needs from it, so that the
operator sets nothing per unit:

- the server's ports (``port``, ``tls-port``: with client TLS on, ``port`` is 0) and the
  TLS files it uses (a CA *directory* and the client certificate and key beside it);
- the Sentinel's ports (``port``, ``tls-port``) and, as a fallback, the credentials it
  uses towards the other sentinels (``sentinel sentinel-user`` / ``sentinel-pass``);
- the snap's own, unconfined ``valkey-cli`` and ``valkey-server`` binaries (see
  ``SnapLayout.cli``).

The files are parsed by pure functions (``parse_conf``); ``read_layout`` is the only
part that touches the disk. Files are opened with ``O_NOFOLLOW`` and must be regular:
they are written by the valkey charm and rewritten by Sentinel as ``snap_daemon``, so
a symlink planted there must not make this root process read another file.

``SNAP_ROOT`` is ``/`` on a machine; tests point it at a directory of their own.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: The filesystem root the snap's paths are under. Tests replace it.
SNAP_ROOT = Path("/")

SNAP_NAME = "charmed-valkey"
#: ``$SNAP``: the read-only squashfs of the current revision (binaries).
SNAP_DIR = Path("snap") / SNAP_NAME / "current"
#: ``$SNAP_DATA``: configuration and TLS files the valkey charm writes.
SNAP_DATA = Path("var/snap") / SNAP_NAME / "current"
#: ``$SNAP_COMMON``: the server's data directory lives below it.
SNAP_COMMON = Path("var/snap") / SNAP_NAME / "common"

# The valkey charm has written its configuration to both of these over time (9/edge
# uses etc/valkey; the snap's install hook and older charms etc/charmed-valkey).
CONF_DIRS = (Path("etc/valkey"), Path("etc/charmed-valkey"))
SERVER_CONF = "valkey.conf"
SENTINEL_CONF = "sentinel.conf"

# TLS files under $SNAP_DATA/tls, as the valkey charm names them; the server's own
# configuration (tls-ca-cert-dir, tls-cert-file, tls-key-file) wins when it names others.
TLS_DIR = Path("tls")
TLS_CA_DIR = TLS_DIR / "ca_certs"
TLS_CERT = TLS_DIR / "client.pem"
TLS_KEY = TLS_DIR / "client.key"

#: systemd units of the snap's daemons.
SERVER_SERVICE = f"snap.{SNAP_NAME}.server.service"
SENTINEL_SERVICE = f"snap.{SNAP_NAME}.sentinel.service"

#: The internal user with the rights a backup and a restore need (``~* +@all``).
OPERATOR_USER = "charmed-operator"
#: The internal Sentinel user the valkey charm itself administers Sentinel with.
SENTINEL_OPERATOR_USER = "charmed-sentinel-operator"

# The valkey charm's fixed ports (used when its configuration cannot be read).
DEFAULT_PORT = 6379
DEFAULT_TLS_PORT = 6380
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_SENTINEL_TLS_PORT = 26380

# Configuration files are a few KiB; anything much larger is not one.
MAX_CONF_BYTES = 1 << 20


@dataclass(frozen=True)
class Endpoint:
    """A port of the server or of Sentinel, and whether it speaks TLS."""

    port: int
    tls: bool


@dataclass(frozen=True)
class TlsFiles:
    """The client TLS material the valkey charm maintains for its own clients."""

    ca_dir: str
    cert_file: str
    key_file: str


@dataclass(frozen=True)
class SentinelCredentials:
    """How to authenticate to this machine's Sentinel."""

    username: str
    password: str


@dataclass(frozen=True)
class SnapLayout:
    """What the charmed-valkey snap on this machine says about its server and Sentinel."""

    #: The server's client endpoint: the plain port, or the TLS port when plain is off.
    server: Endpoint
    #: Sentinel's client endpoint (same rule), or None when no Sentinel is configured.
    sentinel: Endpoint | None
    tls: TlsFiles
    #: Sentinel's own inter-sentinel credentials, from sentinel.conf (a fallback).
    sentinel_credentials: SentinelCredentials | None
    #: The snap's valkey-cli run directly, or "" when the revision has none.
    cli: str
    #: The snap's valkey-server (verify-backup load=true), or "".
    server_binary: str
    #: The server's data directory as configured (``dir``), or "".
    data_dir: str


def parse_conf(text: str) -> dict[str, list[str]]:
    """Directives of a valkey.conf / sentinel.conf: ``{"port": ["6379"], …}``.

    The last occurrence of a directive wins, as in Valkey. ``sentinel <name> …`` lines
    are keyed ``sentinel <name>`` (e.g. ``sentinel sentinel-pass``) so that they do not
    overwrite each other. Quotes around an argument are removed.
    """
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = [_unquote(word) for word in line.split()]
        key = words[0].lower()
        args = words[1:]
        if key == "sentinel" and args:
            key = f"sentinel {args[0].lower()}"
            args = args[1:]
        out[key] = args
    return out


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'":
        return word[1:-1]
    return word


def endpoint_from(
    conf: Mapping[str, list[str]], default_port: int, default_tls_port: int
) -> Endpoint | None:
    """The client endpoint a configuration describes: plain if open, else TLS.

    With client TLS on, the valkey charm sets ``port 0`` and clients must use
    ``tls-port``. A directive the file does not have takes Valkey's own default (6379,
    and no TLS port); without any file (``conf`` empty) the valkey charm's ports are
    assumed. None when neither port is open.
    """
    port = _int_arg(conf, "port", default_port)
    tls_port = _int_arg(conf, "tls-port", 0 if conf else default_tls_port)
    if port:
        return Endpoint(port=port, tls=False)
    if tls_port:
        return Endpoint(port=tls_port, tls=True)
    return None


def _int_arg(conf: Mapping[str, list[str]], key: str, default: int) -> int:
    args = conf.get(key)
    if not args:
        return default
    try:
        value = int(args[0])
    except ValueError:
        return default
    return value if 0 <= value <= 65535 else default


def _arg(conf: Mapping[str, list[str]], key: str) -> str:
    args = conf.get(key) or []
    return args[0] if args else ""


def snap_present(root: Path | None = None) -> bool:
    """True when the charmed-valkey snap is installed (its data directory exists)."""
    base = SNAP_ROOT if root is None else root
    return (base / SNAP_DATA).is_dir() or (base / SNAP_DIR).is_dir()


def read_layout(root: Path | None = None) -> SnapLayout | None:
    """The layout of the charmed-valkey snap under ``root``, or None if it is absent."""
    base = SNAP_ROOT if root is None else root
    if not snap_present(base):
        return None
    data = base / SNAP_DATA
    server_conf = parse_conf(_read_first(data / d / SERVER_CONF for d in CONF_DIRS))
    sentinel_text = _read_first(data / d / SENTINEL_CONF for d in CONF_DIRS)
    sentinel_conf = parse_conf(sentinel_text)

    server = endpoint_from(server_conf, DEFAULT_PORT, DEFAULT_TLS_PORT) or Endpoint(
        DEFAULT_TLS_PORT, tls=True
    )
    sentinel = (
        endpoint_from(sentinel_conf, DEFAULT_SENTINEL_PORT, DEFAULT_SENTINEL_TLS_PORT)
        if sentinel_text
        else None
    )
    tls = TlsFiles(
        ca_dir=_arg(server_conf, "tls-ca-cert-dir") or str(data / TLS_CA_DIR),
        cert_file=_arg(server_conf, "tls-cert-file") or str(data / TLS_CERT),
        key_file=_arg(server_conf, "tls-key-file") or str(data / TLS_KEY),
    )
    user = _arg(sentinel_conf, "sentinel sentinel-user")
    password = _arg(sentinel_conf, "sentinel sentinel-pass")
    credentials = SentinelCredentials(user, password) if user and password else None
    binaries = base / SNAP_DIR / "usr" / "bin"
    return SnapLayout(
        server=server,
        sentinel=sentinel,
        tls=tls,
        sentinel_credentials=credentials,
        cli=_executable(binaries / "valkey-cli"),
        server_binary=_executable(binaries / "valkey-server"),
        data_dir=_arg(server_conf, "dir"),
    )


def _executable(path: Path) -> str:
    return str(path) if path.is_file() and os.access(path, os.X_OK) else ""


def _read_first(paths: Iterable[Path]) -> str:
    """The text of the first of ``paths`` that is a regular file, else ""."""
    for path in paths:
        text = read_regular_file(path)
        if text is not None:
            return text
    return ""


def read_regular_file(path: Path) -> str | None:
    """``path``'s text, or None if it is missing, a symlink or not a regular file.

    Opened with ``O_NOFOLLOW`` (a symlink in the last component fails) and checked by
    descriptor, so what is read is the file that was checked.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CONF_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(MAX_CONF_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
