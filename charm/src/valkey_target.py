"""Which Valkey server this unit backs up, and how to reach it.

The charm's options are application-wide, but Canonical's valkey charm binds each
server to its own unit's address only. So the address, port, TLS files, user and
Sentinel are worked out per unit here, from (in order of precedence):

1. the operator's explicit options (``valkey-host``, ``valkey-port``, …) — always win;
2. the charmed-valkey snap's layout on this machine (``snap_layout``), when present;
3. the defaults of a plain Valkey/Redis install (loopback, 6379, the ``default`` user).

The host is loopback if the server answers there (a short TCP connect, never more than
``PROBE_TIMEOUT_S``), else the unit's own binding address: always beside the snap (its
server binds there), elsewhere when the server answers there; when nothing answers,
loopback. ``resolve_target`` is pure:
the probe is passed in, so every rule is unit-tested without a network.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from config_model import CharmConfig, InvalidConfigError, TlsSettings
from snap_layout import OPERATOR_USER, SENTINEL_OPERATOR_USER, SnapLayout

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 6379
#: The probe runs in hooks: a refused connect on loopback returns at once, and a host
#: that drops packets must not hold the hook for longer than this.
PROBE_TIMEOUT_S = 0.5
#: The user-secret key read when there is no key named after the user.
PASSWORD_KEY = "password"  # noqa: S105 (a key name, not a password)

Probe = Callable[[str, int], bool]


def port_answers(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connect to ``host:port`` succeeds within ``timeout``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class SentinelTarget:
    """The Sentinel watching this unit's server (``valkey.sentinel`` of configure)."""

    host: str
    port: int
    username: str = ""
    password: str = ""
    tls: bool = False
    #: TLS towards Sentinel and its peers when it listens only with TLS: the snap's
    #: files, as for the server (Sentinel serves the same certificates).
    tls_settings: TlsSettings | None = None

    def to_params(self) -> dict[str, Any]:
        """The ``valkey.sentinel`` object of configure.

        When the snap's Sentinel listens only with TLS (client TLS on: its plain port is
        0; its peers announce their TLS port), the TLS port goes with ``tls``, so the
        agent reaches it and every peer it names over TLS.
        """
        params: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.username:
            params["username"] = self.username
        if self.password:
            params["password"] = self.password
        if self.tls and self.tls_settings is not None:
            params["tls"] = self.tls_settings.to_params()
        return params


@dataclass(frozen=True)
class ValkeyTarget:
    """Everything the agent needs to reach this unit's server, resolved for this unit."""

    host: str
    port: int
    username: str
    password: str | None
    tls: TlsSettings
    sentinel: SentinelTarget | None
    #: Where the host came from: ``config``, ``loopback`` or ``binding`` (for logs).
    host_source: str

    def secrets(self) -> tuple[str, ...]:
        """The credentials in this target, for redaction."""
        values = [self.password or ""]
        if self.sentinel is not None:
            values.append(self.sentinel.password)
        return tuple(v for v in values if v)


def pick_password(content: Mapping[str, str] | None, username: str) -> str | None:
    """The password for ``username`` from the user secret's content.

    The key named after the user comes first (``charmed-operator``: the valkey charm's
    ``system-users`` secret can be shared as it is), then ``password``; the ``default``
    user's key is ``default``. None when there is no secret.

    Raises:
        InvalidConfigError: the secret has neither key.
    """
    if content is None:
        return None
    user_key = username or "default"
    for key in (user_key, PASSWORD_KEY):
        value = content.get(key)
        if value:
            return str(value)
    raise InvalidConfigError(f"valkey-password secret has no {user_key!r} or {PASSWORD_KEY!r} key")


def resolve_target(
    config: CharmConfig,
    layout: SnapLayout | None,
    *,
    secret: Mapping[str, str] | None,
    binding_address: str | None,
    probe: Probe,
) -> ValkeyTarget:
    """Resolve host, port, TLS, user, password and Sentinel for this unit.

    Raises:
        InvalidConfigError: the password secret lacks the key the user needs.
    """
    username = config.valkey_username or (OPERATOR_USER if layout is not None else "")
    password = pick_password(secret, username)

    # The snap's port (and TLS when its plain port is closed) applies only when the
    # operator did not choose a port: an explicit port means an explicit server.
    auto_port = config.valkey_port == 0
    port = config.valkey_port or (layout.server.port if layout is not None else DEFAULT_PORT)
    tls = config.tls
    if layout is not None and (tls.enabled or (auto_port and layout.server.tls)):
        tls = _with_snap_tls_files(tls, layout)

    if config.valkey_host:
        host, source = config.valkey_host, "config"
    elif probe(LOOPBACK, port):
        host, source = LOOPBACK, "loopback"
    elif binding_address and (layout is not None or probe(binding_address, port)):
        # Beside the snap the server binds to the unit's address: that is where it
        # is, even while it is down (a restart must not flip the agent's host).
        host, source = binding_address, "binding"
    else:
        # Nothing answers (a server being restarted, say): loopback, where most
        # servers listen, so that the agent's host does not flip with the server.
        host, source = LOOPBACK, "loopback"

    return ValkeyTarget(
        host=host,
        port=port,
        username=username,
        password=password,
        tls=tls,
        sentinel=_sentinel(layout, host, secret, config.tls),
        host_source=source,
    )


def _with_snap_tls_files(tls: TlsSettings, layout: SnapLayout) -> TlsSettings:
    """TLS on, with the snap's CA directory and client pair unless the options name some.

    The client certificate is sent only together with its key, and only when neither
    was configured (the options must be set as a pair).
    """
    no_ca = not tls.ca_file and not tls.ca_dir
    no_pair = not tls.cert_file and not tls.key_file
    return replace(
        tls,
        enabled=True,
        ca_dir=layout.tls.ca_dir if no_ca else tls.ca_dir,
        cert_file=layout.tls.cert_file if no_pair else tls.cert_file,
        key_file=layout.tls.key_file if no_pair else tls.key_file,
    )


def _sentinel(
    layout: SnapLayout | None,
    host: str,
    secret: Mapping[str, str] | None,
    tls_config: TlsSettings,
) -> SentinelTarget | None:
    """This machine's Sentinel, when the snap runs one.

    Sentinel listens on every address of the unit, so the server's host reaches it.
    Credentials: the ``charmed-sentinel-operator`` key of the password secret (the
    valkey charm's ``system-users`` convention), else the credentials Sentinel itself
    uses towards its peers (from its sentinel.conf, readable by root only).
    """
    if layout is None or layout.sentinel is None:
        return None
    username = password = ""
    if secret and secret.get(SENTINEL_OPERATOR_USER):
        username, password = SENTINEL_OPERATOR_USER, str(secret[SENTINEL_OPERATOR_USER])
    elif layout.sentinel_credentials is not None:
        username = layout.sentinel_credentials.username
        password = layout.sentinel_credentials.password
    return SentinelTarget(
        host=host,
        port=layout.sentinel.port,
        username=username,
        password=password,
        tls=layout.sentinel.tls,
        tls_settings=_with_snap_tls_files(tls_config, layout) if layout.sentinel.tls else None,
    )
