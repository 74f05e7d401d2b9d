"""The charm's configuration as a typed, validated model.

Juju only checks option types; everything else (ranges, paths, names that end up in S3
keys) is checked here so that a bad value becomes a `blocked` status with the reason,
and never reaches the agent.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Cluster names become a path segment of every object key: keep them to characters that
# need no escaping in S3 keys or shells.
CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# systemd unit names (what restore stops and starts). A leading '-' would read as an
# option to systemctl.
UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._:-]{0,255}$")
# Host names or IP literals. Anything with a scheme, spaces or userinfo is a mistake, and
# a leading '-' would read as an option to the cli.
HOST_RE = re.compile(r"^[A-Za-z0-9\[][A-Za-z0-9._:\[\]-]{0,252}$")

# The clis tried, in order, when valkey-cli-path is empty. The last one is the
# charmed-valkey snap's command (in /snap/bin, which is on the hook PATH).
CLI_CANDIDATES = ("valkey-cli", "redis-cli", "charmed-valkey.cli")

# `valkey-source`: the agent's own replication client (`native`; `auto` is the agent's
# recommendation, today `native`) or `valkey-cli --rdb -` (`cli`).
SOURCES = ("auto", "native", "cli")

MIB = 1024 * 1024

BACKUP_FROM = ("replica", "primary", "any")
# What the agent's backup.compression takes.
COMPRESSIONS = ("none", "lz4", "zstd")


class InvalidConfigError(Exception):
    """A configuration value is unusable; the message says which and why."""


@dataclass(frozen=True)
class TlsSettings:
    """How the agent (its own client, or the cli) connects to Valkey over TLS."""

    enabled: bool = False
    ca_file: str = ""
    ca_dir: str = ""
    cert_file: str = ""
    key_file: str = ""
    sni: str = ""
    insecure: bool = False

    def to_params(self) -> dict[str, Any]:
        """The ``valkey.tls`` object of the configure request."""
        if not self.enabled:
            return {"enabled": False}
        params: dict[str, Any] = {"enabled": True, "insecure": self.insecure}
        for key, value in (
            ("ca-file", self.ca_file),
            ("ca-dir", self.ca_dir),
            ("cert-file", self.cert_file),
            ("key-file", self.key_file),
            ("sni", self.sni),
        ):
            if value:
                params[key] = value
        return params


@dataclass(frozen=True)
class CharmConfig:
    """Validated charm configuration (see config.yaml for each option)."""

    #: "" finds the server on this unit (loopback, else the unit's address).
    valkey_host: str
    #: 0 is automatic: the charmed-valkey snap's port when present, else 6379.
    valkey_port: int
    valkey_username: str
    valkey_password_secret: str
    valkey_cli_path: str
    valkey_source: str
    tls: TlsSettings
    valkey_service: str
    cluster_name: str
    upload_concurrency: int
    part_size_mib: int
    #: Cron expression (UTC) of scheduled backups; "" is off.
    backup_schedule: str = ""
    #: Cron expression (UTC) of scheduled verifications with a load; "" is off.
    backup_verify_schedule: str = ""
    backup_from: str = "replica"
    #: 0 leaves the rule unset.
    retention_keep_last: int = 0
    retention_keep_days: int = 0
    #: ``<ip>:<port>`` of the agent's /metrics; "" is off.
    metrics_listen: str = ""
    compression: str = "none"
    zstd_level: int = 3
    encryption_key_secret: str = ""

    @classmethod
    def from_mapping(
        cls,
        config: Mapping[str, Any],
        *,
        path_exists: Callable[[str], bool] = os.path.isfile,
        dir_exists: Callable[[str], bool] = os.path.isdir,
    ) -> CharmConfig:
        """Parse and check ``config`` (the charm's config mapping).

        Raises:
            InvalidConfigError: naming the first bad option and what is wrong with it.
        """
        # Empty host and port 0 mean "find it on this unit" (valkey_target).
        host = _str(config, "valkey-host")
        if host and not HOST_RE.match(host):
            raise InvalidConfigError(f"valkey-host {host!r} is not a host name or address")

        port = _int(config, "valkey-port", 0)
        if not 0 <= port <= 65535:
            raise InvalidConfigError(
                f"valkey-port {port} is not between 1 and 65535 (or 0: automatic)"
            )

        cli_path = _str(config, "valkey-cli-path")
        if cli_path and not os.path.isabs(cli_path):
            raise InvalidConfigError("valkey-cli-path must be an absolute path")

        source = _source(config)
        tls = TlsSettings(
            enabled=bool(config.get("valkey-tls", False)),
            ca_file=_str(config, "valkey-tls-ca-file"),
            ca_dir=_str(config, "valkey-tls-ca-dir"),
            cert_file=_str(config, "valkey-tls-cert-file"),
            key_file=_str(config, "valkey-tls-key-file"),
            sni=_str(config, "valkey-tls-sni"),
            insecure=bool(config.get("valkey-tls-insecure", False)),
        )
        _check_tls(tls, path_exists, dir_exists)

        service = _str(config, "valkey-service")
        if service and not UNIT_NAME_RE.match(service):
            raise InvalidConfigError(f"valkey-service {service!r} is not a systemd unit name")

        cluster = _str(config, "cluster-name")
        if cluster and not CLUSTER_NAME_RE.match(cluster):
            raise InvalidConfigError(
                "cluster-name must start with a letter or digit and hold only letters, "
                "digits, '.', '_' and '-' (at most 128)"
            )

        concurrency = _int(config, "upload-concurrency", 2)
        if not 1 <= concurrency <= 16:
            raise InvalidConfigError(f"upload-concurrency {concurrency} is not between 1 and 16")

        part_size = _int(config, "part-size-mib", 5)
        if not 5 <= part_size <= 5120:
            raise InvalidConfigError(f"part-size-mib {part_size} is not between 5 and 5120")

        schedule = " ".join(_str(config, "backup-schedule").split())
        _check_schedule(schedule, "backup-schedule")
        verify_schedule = " ".join(_str(config, "backup-verify-schedule").split())
        _check_schedule(verify_schedule, "backup-verify-schedule")
        if verify_schedule and not schedule:
            raise InvalidConfigError("backup-verify-schedule needs backup-schedule to be set")
        backup_from = _str(config, "backup-from") or "replica"
        if backup_from not in BACKUP_FROM:
            raise InvalidConfigError(f"backup-from must be one of {', '.join(BACKUP_FROM)}")
        keep_last = _int(config, "retention-keep-last", 0)
        keep_days = _int(config, "retention-keep-days", 0)
        for option, value in (
            ("retention-keep-last", keep_last),
            ("retention-keep-days", keep_days),
        ):
            if value < 0:
                raise InvalidConfigError(f"{option} must be 0 (unset) or more")
        metrics_listen = _str(config, "metrics-listen")
        _check_listen(metrics_listen)
        compression, zstd_level = _compression(config)

        return cls(
            backup_schedule=schedule,
            backup_verify_schedule=verify_schedule,
            backup_from=backup_from,
            retention_keep_last=keep_last,
            retention_keep_days=keep_days,
            metrics_listen=metrics_listen,
            valkey_host=host,
            valkey_port=port,
            valkey_username=_str(config, "valkey-username"),
            valkey_password_secret=_str(config, "valkey-password"),
            valkey_cli_path=cli_path,
            valkey_source=source,
            tls=tls,
            valkey_service=service,
            cluster_name=cluster,
            upload_concurrency=concurrency,
            part_size_mib=part_size,
            compression=compression,
            zstd_level=zstd_level,
            encryption_key_secret=_str(config, "encryption-key"),
        )

    def backup_params(self) -> dict[str, Any]:
        """The ``backup`` object of the configure request."""
        params: dict[str, Any] = {
            "part-size-bytes": self.part_size_bytes,
            "upload-concurrency": self.upload_concurrency,
            "compression": self.compression,
        }
        if self.compression == "zstd":
            params["compression-level"] = self.zstd_level
        return params

    @property
    def part_size_bytes(self) -> int:
        """``part-size-mib`` in bytes, as the agent takes it."""
        return self.part_size_mib * MIB


# age keys as age-keygen writes them (Bech32: the secret key upper case, the public
# key lower case). The agent checks them fully; this only catches a wrong kind of value.
AGE_IDENTITY_RE = re.compile(r"^AGE-SECRET-KEY-1[0-9A-Z]{58}$")
AGE_RECIPIENT_RE = re.compile(r"^age1[0-9a-z]{58}$")


def encryption_params(content: Mapping[str, str]) -> dict[str, Any]:
    """The ``encryption`` object of the configure request, from the secret's content.

    ``identities``: one key per line (comment lines from an age key file are skipped),
    the current one first. ``recipients`` (optional): public keys, whitespace-separated.
    Messages never quote a key.

    Raises:
        InvalidConfigError: a key is missing or not of the expected kind.
    """
    identities = [
        line.strip()
        for line in str(content.get("identities") or "").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if not identities:
        raise InvalidConfigError(
            "encryption-key secret has no 'identities' key (AGE-SECRET-KEY-1… lines)"
        )
    for n, identity in enumerate(identities, start=1):
        if not AGE_IDENTITY_RE.match(identity):
            raise InvalidConfigError(
                f"encryption-key secret: line {n} of 'identities' is not an age secret key "
                "(AGE-SECRET-KEY-1…)"
            )
    recipients = str(content.get("recipients") or "").split()
    for n, recipient in enumerate(recipients, start=1):
        if not AGE_RECIPIENT_RE.match(recipient):
            raise InvalidConfigError(
                f"encryption-key secret: item {n} of 'recipients' is not an age public key (age1…)"
            )
    params: dict[str, Any] = {"identities": identities}
    if recipients:
        params["recipients"] = recipients
    return params


def resolve_cli(
    configured: str,
    *,
    snap_cli: str = "",
    which: Callable[[str], str | None] = shutil.which,
    is_executable: Callable[[str], bool] = lambda p: os.path.isfile(p) and os.access(p, os.X_OK),
) -> str:
    """The cli the agent should run.

    The configured path wins; then the charmed-valkey snap's own ``valkey-cli`` binary
    (``snap_cli``, run directly: launching ``charmed-valkey.cli`` through snap-confine
    fails under the agent unit's ``NoNewPrivileges``, and the binary sits on the
    read-only, root-owned squashfs); then the first candidate on PATH.

    Raises:
        InvalidConfigError: the configured path is not an executable file, or no
            candidate is installed.
    """
    if configured:
        if not is_executable(configured):
            raise InvalidConfigError(f"valkey-cli-path {configured} is not an executable file")
        return configured
    if snap_cli:
        return snap_cli
    for name in CLI_CANDIDATES:
        found = which(name)
        if found:
            return found
    raise InvalidConfigError(
        "no valkey-cli or redis-cli found on this machine; install one or set valkey-cli-path"
    )


def _source(config: Mapping[str, Any]) -> str:
    """``valkey-source``: one of SOURCES, ``auto`` when empty."""
    source = _str(config, "valkey-source") or "auto"
    if source not in SOURCES:
        raise InvalidConfigError(f"valkey-source {source!r} is not one of {', '.join(SOURCES)}")
    return source


def _check_tls(
    tls: TlsSettings, path_exists: Callable[[str], bool], dir_exists: Callable[[str], bool]
) -> None:
    if not tls.enabled:
        return
    if bool(tls.cert_file) != bool(tls.key_file):
        raise InvalidConfigError(
            "valkey-tls-cert-file and valkey-tls-key-file must be set together"
        )
    for option, path in (
        ("valkey-tls-ca-file", tls.ca_file),
        ("valkey-tls-cert-file", tls.cert_file),
        ("valkey-tls-key-file", tls.key_file),
    ):
        if not path:
            continue
        if not os.path.isabs(path):
            raise InvalidConfigError(f"{option} must be an absolute path")
        if not path_exists(path):
            raise InvalidConfigError(f"{option} {path} does not exist")
    if tls.ca_dir:
        if not os.path.isabs(tls.ca_dir):
            raise InvalidConfigError("valkey-tls-ca-dir must be an absolute path")
        if not dir_exists(tls.ca_dir):
            raise InvalidConfigError(f"valkey-tls-ca-dir {tls.ca_dir} is not a directory")


def _check_schedule(schedule: str, option: str) -> None:
    """The shape only; the agent parses the expression itself and refuses bad ones."""
    if not schedule:
        return
    fields = schedule.split()
    if not (len(fields) in (5, 6) or (len(fields) == 1 and fields[0].startswith("@"))):
        raise InvalidConfigError(
            f"{option} must be a cron expression of 5 fields (minute hour day month "
            "weekday, UTC) or 6 with seconds first, e.g. '0 3 * * *'"
        )


def _check_listen(listen: str) -> None:
    if not listen:
        return
    host, sep, port = listen.rpartition(":")
    problem = not sep or not port.isdigit() or not 1 <= int(port) <= 65535
    if not problem:
        try:
            ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            problem = True
    if problem:
        raise InvalidConfigError(
            f"metrics-listen {listen!r} must be <ip>:<port>, e.g. 127.0.0.1:9187"
        )


def _compression(config: Mapping[str, Any]) -> tuple[str, int]:
    """``compression`` and ``zstd-level``, checked."""
    compression = _str(config, "compression") or "none"
    if compression not in COMPRESSIONS:
        raise InvalidConfigError(
            f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}"
        )
    zstd_level = _int(config, "zstd-level", 3)
    if not 1 <= zstd_level <= 19:
        raise InvalidConfigError(f"zstd-level {zstd_level} is not between 1 and 19")
    return compression, zstd_level


def _str(config: Mapping[str, Any], key: str) -> str:
    value = config.get(key)
    return "" if value is None else str(value).strip()


def _int(config: Mapping[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfigError(f"{key} must be an integer")
    return value
