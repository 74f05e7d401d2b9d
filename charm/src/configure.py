"""Builds the agent's ``configure`` request from Juju state (docs/protocol.md).

Pure functions: given the validated config, the secret's password and the s3-integrator's
connection info, they return the request's params. The charm sends them as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from config_model import CharmConfig
from valkey_target import ValkeyTarget

# The s3-integrator fields the agent takes, under the integrator's own names. Others it
# publishes (attributes, s3-api-version, …) are not sent: the agent refuses unknown keys
# and only speaks SigV4 anyway.
S3_STRING_FIELDS = (
    "endpoint",
    "bucket",
    "path",
    "region",
    "access-key",
    "secret-key",
    "s3-uri-style",
    "storage-class",
)


def s3_params(info: Mapping[str, Any]) -> dict[str, Any]:
    """The ``s3`` object of the request, from the relation's connection info.

    The charm library JSON-decodes every relation value it can, so a bucket called
    ``2024`` arrives as an int and ``tls-ca-chain`` as a list; both are put back into the
    shapes the agent expects here. CA items are passed on as they come (PEM or base64 of
    PEM: the agent accepts both).
    """
    params: dict[str, Any] = {}
    for key in S3_STRING_FIELDS:
        value = info.get(key)
        if value is None:
            continue
        text = str(value).strip()
        if text:
            params[key] = text
    chain = tls_ca_chain(info.get("tls-ca-chain"))
    if chain:
        params["tls-ca-chain"] = chain
    days = keep_days(info)
    if days is not None:
        # The integrator's retention hint: the agent's default keep-days for
        # prune-backups (the action's own keep-last/keep-days override it).
        params["delete-older-than-days"] = days
    return params


def tls_ca_chain(value: Any) -> list[str]:
    """Normalise the integrator's ``tls-ca-chain`` to a list of non-empty strings.

    Providers send a JSON list (already decoded by the library), a JSON list still as a
    string, or one string holding a whole PEM bundle or its base64.
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                decoded = json.loads(text)
            except ValueError:
                decoded = None
            if isinstance(decoded, list):
                return tls_ca_chain(decoded)
        return [text] if text else []
    if isinstance(value, list):
        return [str(item).strip() for item in value if str(item).strip()]
    return []


def keep_days(info: Mapping[str, Any]) -> int | None:
    """The integrator's ``delete-older-than-days`` as a positive int, or None.

    Anything else (empty, zero, not a number) is dropped here rather than sent: the
    agent rejects a configuration whose value is not a whole number of days.
    """
    value = info.get("delete-older-than-days")
    if value is None or isinstance(value, bool):
        return None
    try:
        days = int(str(value).strip())
    except ValueError:
        return None
    return days if days > 0 else None


def build_configure_params(
    *,
    cluster: str,
    unit: str,
    config: CharmConfig,
    target: ValkeyTarget,
    cli: str | None,
    s3_info: Mapping[str, Any] | None,
    encryption: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole ``configure`` request params.

    ``target`` is this unit's resolved server (``valkey_target.resolve_target``): host,
    port, user, password, TLS and the Sentinel watching it.

    ``s3_info`` None means "no storage" (relation absent or gone): the request then says
    ``"s3": null`` and the agent refuses backups with ``not-configured``. ``encryption``
    (from the ``encryption-key`` secret, see ``config_model.encryption_params``) is sent
    only when set; without it backups are stored in clear.
    """
    valkey: dict[str, Any] = {
        "host": target.host,
        "port": target.port,
        "source": config.valkey_source,
        "tls": target.tls.to_params(),
    }
    if cli:
        valkey["cli"] = cli
    if target.username:
        valkey["username"] = target.username
    if target.password:
        valkey["password"] = target.password
    if target.sentinel is not None:
        valkey["sentinel"] = target.sentinel.to_params()

    params: dict[str, Any] = {
        "cluster": cluster,
        "unit": unit,
        "s3": s3_params(s3_info) if s3_info is not None else None,
        "valkey": valkey,
        "backup": config.backup_params(),
    }
    if config.backup_schedule:
        params["schedule"] = {"cron": config.backup_schedule, "from": config.backup_from}
        if config.backup_verify_schedule:
            params["schedule"]["verify-cron"] = config.backup_verify_schedule
    retention: dict[str, int] = {}
    if config.retention_keep_last:
        retention["keep-last"] = config.retention_keep_last
    if config.retention_keep_days:
        retention["keep-days"] = config.retention_keep_days
    if retention:
        params["retention"] = retention
    if config.metrics_listen:
        params["metrics"] = {"listen": config.metrics_listen}
    if encryption:
        params["encryption"] = dict(encryption)
    return params
