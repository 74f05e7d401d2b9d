#!/usr/bin/env python3
"""valkey-backup: a subordinate charm that backs Valkey up to S3 through a local agent.

The charm is deliberately thin. Juju state (config, the password secret, the
s3-integrator relation, the principal) becomes one ``configure`` request; each action
becomes one call on the agent's socket; the status is computed from facts in
``status.py``. Everything about S3 and RDB streams lives in the agent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ops
from object_storage import S3Requirer

import cos
import snap_layout
from agent_client import (
    CODE_PROTOCOL,
    CODE_TIMEOUT,
    CODE_UNAVAILABLE,
    AgentClient,
    AgentError,
)
from config_model import CharmConfig, InvalidConfigError, encryption_params, resolve_cli
from configure import build_configure_params
from presentation import (
    ProgressLog,
    Redactor,
    action_results,
    backups_table,
    human_size,
    schedule_summary,
)
from service import (
    PACKED_AGENT,
    AgentPaths,
    AgentService,
    ServiceError,
    Systemctl,
    find_valkey_service,
)
from status import (
    INTEGRATE_HINT,
    StatusFacts,
    compute_status,
    newest_backup,
    valkey_check_problem,
)
from valkey_target import ValkeyTarget, port_answers, resolve_target

logger = logging.getLogger(__name__)

S3_RELATION = "s3-credentials"
PRINCIPAL_RELATION = "juju-info"

# Codes that say the agent could not be talked to, as opposed to it refusing something.
TRANSPORT_CODES = frozenset({CODE_UNAVAILABLE, CODE_TIMEOUT, CODE_PROTOCOL})

# What to do next, appended to an action's failure message for the codes an operator
# can act on.
ACTION_HINTS = {
    "not-configured": f"relate S3 storage ({INTEGRATE_HINT}) and check the unit's status",
    "busy": "another backup or restore runs on this unit; wait for it to finish",
    CODE_UNAVAILABLE: "the agent is not running; see systemctl status valkey-backup-agent",
    CODE_TIMEOUT: "the agent is stuck; see journalctl -u valkey-backup-agent",
    "valkey-replica": "this unit's server is a replica: restore on the primary's unit, "
    "the replicas resync from it",
    "valkey-auth": "check valkey-username and the valkey-password secret",
    "valkey-unreachable": "check valkey-host, valkey-port and the valkey-tls options",
    "not-found": "run list-backups to see the backups that exist",
    "no-space": "free space in the server's data directory, then run the restore again",
    "unknown-op": "the installed agent does not know this action; upgrade the charm",
    "s3-access-denied": "check the s3-integrator's credentials secret",
    "s3-no-bucket": "check the s3-integrator's bucket",
    "s3-unreachable": "check the s3-integrator's endpoint and tls-ca-chain",
    "decrypt-failed": "add the key this backup was taken with to the encryption-key secret "
    "('identities', one per line, the current key first)",
}

# Juju caps an action's results at about 100 KB; list-backups stays well under it.
MAX_LISTING_CHARS = 60_000
# Entries of each prune-backups list shown in the action's results (counts are whole).
PRUNE_LIST_ENTRIES = 100


class UnusableConfigError(Exception):
    """Juju state the operator must fix before the agent can be configured (blocked)."""


class PrincipalUnknownError(Exception):
    """The juju-info relation has not told us the principal yet (waiting)."""


@dataclass(frozen=True)
class ActionRun:
    """What an action's work needs: its event, the redactor and the progress logger."""

    event: ops.ActionEvent
    redact: Redactor
    progress: ProgressLog


@dataclass(frozen=True)
class DesiredConfig:
    """The ``configure`` params the agent should have, and the secrets inside them."""

    params: dict[str, Any]
    secrets: tuple[str, ...]
    #: Where the Valkey host came from (``config``, ``loopback``, ``binding``), for logs.
    host_source: str = "config"


def params_digest(params: Mapping[str, Any]) -> str:
    """A digest of configure params, to tell whether they changed.

    Only the digest is kept in the charm's stored state, never the params: they hold
    the Valkey password and the S3 secret key.
    """
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ValkeyBackupCharm(ops.CharmBase):
    """Subordinate that runs the backup agent and maps actions onto its socket."""

    _stored = ops.StoredState()

    #: Seconds to wait for a freshly (re)started agent to answer ``status``.
    agent_start_timeout = 30.0

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self._stored.set_default(
            configure_error_code="",
            configure_error_message="",
            configure_pending=False,
            configured_digest="",
            # Written by create-backup before it ran in parallel with hooks; only read.
            last_backup={},
        )
        self._removing = False
        self.paths = AgentPaths.from_env()
        self.s3 = S3Requirer(self, S3_RELATION)

        observe = framework.observe
        observe(self.on.install, self._on_install)
        observe(self.on.upgrade_charm, self._on_upgrade_charm)
        observe(self.on.start, self._on_start)
        observe(self.on.remove, self._on_remove)
        observe(self.on.config_changed, self._on_state_changed)
        observe(self.on.secret_changed, self._on_state_changed)
        observe(self.on[PRINCIPAL_RELATION].relation_joined, self._on_state_changed)
        observe(self.on[PRINCIPAL_RELATION].relation_changed, self._on_state_changed)
        observe(self.s3.on.storage_connection_info_changed, self._on_state_changed)
        observe(self.s3.on.storage_connection_info_gone, self._on_state_changed)
        # The library only emits "changed" once credentials are complete, and with a v0
        # provider its first relation-changed is spent asking for a bucket. Reconciling
        # on every relation-changed as well costs nothing (unchanged params are not
        # re-sent) and never misses the moment the data becomes complete.
        observe(self.on[S3_RELATION].relation_changed, self._on_state_changed)
        observe(self.on.update_status, self._on_update_status)
        observe(self.on[cos.COS_RELATION].relation_joined, self._on_cos_changed)
        observe(self.on[cos.COS_RELATION].relation_changed, self._on_cos_changed)
        observe(self.on.upgrade_charm, self._on_cos_changed)
        observe(self.on.collect_unit_status, self._on_collect_unit_status)

        observe(self.on.create_backup_action, self._on_create_backup)
        observe(self.on.list_backups_action, self._on_list_backups)
        observe(self.on.restore_backup_action, self._on_restore_backup)
        observe(self.on.verify_backup_action, self._on_verify_backup)
        observe(self.on.prune_backups_action, self._on_prune_backups)

    # -- collaborators (replaced in tests) ----------------------------------------------

    def _client(self) -> AgentClient:
        return AgentClient(self.paths.socket)

    def _systemctl(self) -> Systemctl:
        return Systemctl()

    def _service(self) -> AgentService:
        return AgentService(self.paths, self._systemctl())

    def _packed_agent(self) -> Path:
        return self.charm_dir / PACKED_AGENT

    # -- lifecycle ----------------------------------------------------------------------

    def _on_install(self, _: ops.InstallEvent) -> None:
        if self._install_agent(upgrade=False):
            self._reconcile(force=True)

    def _on_upgrade_charm(self, _: ops.UpgradeCharmEvent) -> None:
        # The new charm carries a new agent: replace the binary and restart it, then
        # re-send the configuration in case the new agent stores it differently.
        if self._install_agent(upgrade=True):
            self._reconcile(force=True)

    def _on_start(self, _: ops.StartEvent) -> None:
        if self.paths.binary.exists():
            self._service().ensure_started()
        self._reconcile(force=True)

    def _install_agent(self, *, upgrade: bool) -> bool:
        packed = self._packed_agent()
        if not packed.exists():
            # Status says so (blocked); an upgrade to a correctly packed charm fixes it.
            logger.error("the charm has no agent binary at %s", PACKED_AGENT)
            return False
        service = self._service()
        if upgrade:
            service.upgrade(packed)
        else:
            service.install(packed)
        ready = service.wait_until_ready(self._agent_answers, timeout=self.agent_start_timeout)
        if not ready:
            logger.warning(
                "the agent did not answer within %ss of starting", self.agent_start_timeout
            )
        return ready

    def _agent_answers(self) -> bool:
        try:
            self._client().status(timeout=5.0)
        except AgentError:
            return False
        return True

    def _on_remove(self, _: ops.RemoveEvent) -> None:
        self._removing = True
        try:
            self._service().remove()
        except ServiceError as exc:
            # Removal must not get stuck on a unit that is going away anyway.
            logger.warning("could not stop the agent cleanly: %s", exc)

    # -- configuration ------------------------------------------------------------------

    def _on_state_changed(self, _: ops.EventBase) -> None:
        self._reconcile()
        self._publish_cos()

    def _on_cos_changed(self, _: ops.EventBase) -> None:
        self._publish_cos()

    def _publish_cos(self) -> None:
        """Hand the metrics endpoint, alert rules and dashboard to the collector."""
        try:
            listen = self._config().metrics_listen
        except UnusableConfigError:
            listen = ""  # the status says what is wrong; no endpoint is announced
        cos.publish(self, listen)

    def _on_update_status(self, _: ops.UpdateStatusEvent) -> None:
        # Re-send when something is off: the last attempt failed or never reached the
        # agent (a bucket may have been created since), or the agent lost its
        # configuration (e.g. its state directory was wiped).
        if self._stored.configure_error_code or self._stored.configure_pending:
            self._reconcile(force=True)
            return
        # The resolved server may have changed (e.g. it answers on loopback again):
        # unchanged params are not re-sent.
        self._reconcile()
        try:
            status = self._client().status()
        except AgentError:
            return  # the status shows the agent problem
        if not status.get("configured", False):
            self._reconcile(force=True)
            return
        check = status.get("valkey-check")
        if isinstance(check, Mapping) and valkey_check_problem(check):
            # A failed check is re-run: the server may be back, or its password or ACL
            # fixed, without any Juju event reaching this charm.
            try:
                self._client().status(check_valkey=True)
            except AgentError as exc:
                logger.warning("could not re-run the Valkey check: %s [%s]", exc.message, exc.code)

    def _reconcile(self, *, force: bool = False) -> None:
        """Send the agent the configuration Juju state asks for, and remember the outcome.

        Params identical to the last ones the agent accepted are not sent again unless
        ``force``: every ``configure`` costs the agent a round trip to the store.
        """
        try:
            desired = self._desired_config()
        except (UnusableConfigError, PrincipalUnknownError) as exc:
            logger.info("not configuring the agent yet: %s", exc)
            return
        digest = params_digest(desired.params)
        if not force and digest == self._stored.configured_digest:
            logger.debug("agent configuration unchanged")
            return
        redact = Redactor(desired.secrets)
        try:
            result = self._client().configure(desired.params)
        except AgentError as exc:
            if exc.code in TRANSPORT_CODES:
                self._stored.configure_pending = True
                logger.warning(
                    "could not reach the agent to configure it: %s", redact(exc.message)
                )
            else:
                self._stored.configure_error_code = exc.code
                self._stored.configure_error_message = redact(exc.message)
                self._stored.configure_pending = False
                logger.warning(
                    "the agent rejected the configuration: %s [%s]", redact(exc.message), exc.code
                )
            return
        self._stored.configure_error_code = ""
        self._stored.configure_error_message = ""
        self._stored.configure_pending = False
        self._stored.configured_digest = digest
        s3 = desired.params.get("s3")
        logger.info(
            "agent configured: cluster=%s bucket=%s%s",
            desired.params["cluster"],
            s3.get("bucket") if s3 else "(no S3 storage)",
            " (created)" if result.get("bucket-created") else "",
        )
        check = result.get("valkey-check")
        if isinstance(check, Mapping):
            valkey = desired.params["valkey"]
            outcome = (
                f"ok ({check.get('role') or 'unknown role'}, {check.get('server') or '?'})"
                if check.get("ok")
                else f"failed [{check.get('code')}]: {redact(str(check.get('message') or ''))}"
            )
            logger.info(
                "valkey check of %s:%s as %s (host from %s): %s",
                valkey["host"],
                valkey["port"],
                valkey.get("username") or "default",
                desired.host_source,
                outcome,
            )

    def _config(self) -> CharmConfig:
        try:
            return CharmConfig.from_mapping(self.config)
        except InvalidConfigError as exc:
            raise UnusableConfigError(str(exc)) from exc

    def _desired_config(self) -> DesiredConfig:
        """Build the ``configure`` params from Juju state.

        Raises:
            UnusableConfigError: config or the password secret is unusable (blocked).
            PrincipalUnknownError: the principal is not known yet (waiting).
        """
        config = self._config()
        layout = snap_layout.read_layout()
        target = self._target(config, layout)
        encryption = self._encryption(config.encryption_key_secret)
        try:
            cli: str | None = resolve_cli(
                config.valkey_cli_path, snap_cli=layout.cli if layout is not None else ""
            )
        except InvalidConfigError as exc:
            # Only the cli source needs a cli; the agent's own client does not (a cli
            # that is found is still passed: verify-backup looks for servers beside it).
            if config.valkey_source == "cli" or config.valkey_cli_path:
                raise UnusableConfigError(str(exc)) from exc
            cli = None
        principal_app, principal_unit = self._principal()
        cluster = config.cluster_name or f"{self.model.name}.{principal_app}"
        _, s3_info = self._s3_info()
        params = build_configure_params(
            cluster=cluster,
            unit=principal_unit,
            config=config,
            target=target,
            cli=cli,
            s3_info=s3_info,
            encryption=encryption,
        )
        secrets = list(target.secrets())
        if encryption:
            secrets += list(encryption["identities"])
        if s3_info:
            secrets += [str(s3_info.get("secret-key") or ""), str(s3_info.get("access-key") or "")]
        return DesiredConfig(
            params=params,
            secrets=tuple(s for s in secrets if s),
            host_source=target.host_source,
        )

    def _target(self, config: CharmConfig, layout: snap_layout.SnapLayout | None) -> ValkeyTarget:
        """This unit's server: options first, then the snap's layout, then defaults."""
        secret = self._valkey_secret(config.valkey_password_secret)
        try:
            return resolve_target(
                config,
                layout,
                secret=secret,
                binding_address=self._binding_address(),
                probe=port_answers,
            )
        except InvalidConfigError as exc:
            raise UnusableConfigError(str(exc)) from exc

    @staticmethod
    def _sentinel_tls_only() -> bool:
        """The snap's Sentinel has no plain port (client TLS on), for the status text."""
        layout = snap_layout.read_layout()
        return bool(layout is not None and layout.sentinel is not None and layout.sentinel.tls)

    def _binding_address(self) -> str | None:
        """This unit's address on the juju-info binding (the principal's machine address).

        Canonical's valkey charm binds its server to the unit's own address only; on a
        machine in one space that is this address too.
        """
        try:
            binding = self.model.get_binding(PRINCIPAL_RELATION)
            address = binding.network.bind_address if binding is not None else None
        except (ops.ModelError, ops.RelationNotFoundError):
            return None
        return str(address) if address is not None else None

    def _valkey_secret(self, secret_id: str) -> dict[str, str] | None:
        """The content of the ``valkey-password`` user secret (latest revision), or None.

        ``valkey_target.pick_password`` chooses the key: the one named after the user
        (the valkey charm's ``system-users`` secret works as it is), else ``password``.
        """
        if not secret_id:
            return None
        try:
            secret = self.model.get_secret(id=secret_id)
            # refresh=True: always use (and track) the newest revision, so a rotated
            # password reaches the agent on the secret-changed that follows.
            return dict(secret.get_content(refresh=True))
        except ops.SecretNotFoundError as exc:
            raise UnusableConfigError(
                "valkey-password secret not found or not granted: "
                "run juju grant-secret <secret> valkey-backup"
            ) from exc
        except ops.ModelError as exc:
            raise UnusableConfigError(
                "valkey-password secret cannot be read: "
                "run juju grant-secret <secret> valkey-backup"
            ) from exc

    def _encryption(self, secret_id: str) -> dict[str, Any] | None:
        """The agent's ``encryption`` settings from the ``encryption-key`` user secret."""
        if not secret_id:
            return None
        try:
            content = self.model.get_secret(id=secret_id).get_content(refresh=True)
        except ops.SecretNotFoundError as exc:
            raise UnusableConfigError(
                "encryption-key secret not found or not granted: "
                "run juju grant-secret <secret> valkey-backup"
            ) from exc
        except ops.ModelError as exc:
            raise UnusableConfigError(
                "encryption-key secret cannot be read: "
                "run juju grant-secret <secret> valkey-backup"
            ) from exc
        try:
            return encryption_params(content)
        except InvalidConfigError as exc:
            raise UnusableConfigError(str(exc)) from exc

    def _principal(self) -> tuple[str, str]:
        """``(application, unit)`` of the principal this subordinate is attached to."""
        relation = self.model.get_relation(PRINCIPAL_RELATION)
        app = relation.app if relation is not None else None
        if relation is None or app is None:
            raise PrincipalUnknownError("the juju-info relation has not joined yet")
        units = sorted(unit.name for unit in relation.units)
        # Before relation-joined the unit list is empty; Juju names the principal in
        # the hook environment of every subordinate hook.
        unit = units[0] if units else os.environ.get("JUJU_PRINCIPAL_UNIT", "")
        if not unit:
            raise PrincipalUnknownError("the principal unit is not known yet")
        return app.name, unit

    def _s3_info(self) -> tuple[bool, dict[str, Any] | None]:
        """``(related, info)``: info only when it carries credentials and a bucket."""
        relation = self.model.get_relation(S3_RELATION)
        if relation is None:
            return False, None
        try:
            info: dict[str, Any] = dict(self.s3.get_storage_connection_info(relation))
        except ops.ModelError:
            # The relation secret may not be readable yet (granted a moment later).
            logger.info("the s3 connection info is not readable yet")
            return True, None
        if not (info.get("access-key") and info.get("secret-key") and info.get("bucket")):
            return True, None
        return True, info

    # -- status -------------------------------------------------------------------------

    def _on_collect_unit_status(self, event: ops.CollectStatusEvent) -> None:
        event.add_status(compute_status(self._status_facts(), datetime.now(timezone.utc)))

    def _status_facts(self) -> StatusFacts:
        if self._removing:
            return StatusFacts(removing=True)
        config_problem: str | None = None
        principal_known = True
        valkey: Mapping[str, Any] = {}
        try:
            valkey = self._desired_config().params["valkey"]
        except UnusableConfigError as exc:
            config_problem = str(exc)
        except PrincipalUnknownError:
            principal_known = False
        s3_related, s3_info = self._s3_info()

        agent_status: dict[str, Any] | None = None
        agent_problem: str | None = None
        agent_packed = True
        try:
            agent_status = self._client().status()
        except AgentError as exc:
            # Only blame packaging when nothing answers and there is nothing to install.
            if not self._packed_agent().exists() and not self.paths.binary.exists():
                agent_packed = False
            agent_problem = exc.message

        code = str(self._stored.configure_error_code)
        configure_error = (code, str(self._stored.configure_error_message)) if code else None
        agent_last = (agent_status or {}).get("last-backup")
        check = (agent_status or {}).get("valkey-check")
        stored_last = dict(self._stored.last_backup)
        return StatusFacts(
            config_problem=config_problem,
            principal_known=principal_known,
            agent_packed=agent_packed,
            agent_problem=agent_problem,
            agent_status=agent_status,
            configure_error=configure_error,
            valkey_user=str(valkey.get("username") or ""),
            valkey_address=f"{valkey['host']}:{valkey['port']}" if valkey else "",
            valkey_check=check if isinstance(check, Mapping) else None,
            sentinel_tls_only=self._sentinel_tls_only(),
            s3_related=s3_related,
            s3_ready=s3_info is not None,
            last_backup=newest_backup(
                agent_last if isinstance(agent_last, Mapping) else None,
                stored_last or None,
            ),
        )

    # -- actions ------------------------------------------------------------------------

    def _redactor(self) -> Redactor:
        try:
            return Redactor(self._desired_config().secrets)
        except (UnusableConfigError, PrincipalUnknownError):
            _, s3_info = self._s3_info()
            values = [str((s3_info or {}).get(k) or "") for k in ("secret-key", "access-key")]
            return Redactor(values)

    def _fail(self, event: ops.ActionEvent, error: AgentError, redact: Redactor) -> None:
        """Fail the action with the agent's (sanitised) message, its code and a hint."""
        text = f"{error.message} [{error.code}]"
        hint = ACTION_HINTS.get(error.code)
        if hint:
            text = f"{text}; {hint}"
        text = redact(text)
        event.set_results({"error-code": error.code})
        event.fail(text)
        logger.warning("action %s failed: %s", event.handle.kind, text)

    def _require_storage(self, event: ops.ActionEvent, redact: Redactor) -> bool:
        """Refuse S3 actions up front when the relation is missing or not ready.

        The agent would say ``not-configured`` too, but only if it was told the relation
        went away; checking Juju state here makes the answer certain.
        """
        related, info = self._s3_info()
        if info is not None:
            return True
        message = (
            "no S3 storage is related"
            if not related
            else "the s3-integrator has not provided credentials and a bucket yet"
        )
        self._fail(event, AgentError("not-configured", message), redact)
        return False

    def _run_action(
        self,
        event: ops.ActionEvent,
        work: Callable[[ActionRun], Mapping[str, Any] | None],
    ) -> None:
        """The one way every storage action runs.

        It redacts with the unit's secrets, refuses up front when S3 is not ready,
        turns any `AgentError` the work raises into a failed action with the agent's
        code, message and a hint, and sets the results the work returns. Each handler
        only says what its action does.
        """
        redact = self._redactor()
        if not self._require_storage(event, redact):
            return
        run = ActionRun(event=event, redact=redact, progress=ProgressLog(event.log, redact))
        try:
            results = work(run)
        except AgentError as exc:
            self._fail(event, exc, redact)
            return
        if results is not None:
            event.set_results(dict(results))

    def _on_create_backup(self, event: ops.ActionEvent) -> None:
        self._run_action(event, self._create_backup)

    def _on_list_backups(self, event: ops.ActionEvent) -> None:
        self._run_action(event, self._list_backups)

    def _on_verify_backup(self, event: ops.ActionEvent) -> None:
        self._run_action(event, self._verify_backup)

    def _on_prune_backups(self, event: ops.ActionEvent) -> None:
        self._run_action(event, self._prune_backups)

    def _on_restore_backup(self, event: ops.ActionEvent) -> None:
        self._run_action(event, self._restore_backup)

    def _create_backup(self, run: ActionRun) -> Mapping[str, Any]:
        self.unit.status = ops.MaintenanceStatus("creating a backup")
        run.event.log("starting a backup")
        result = self._client().create_backup(on_progress=run.progress)
        # Nothing is written to the charm's stored state here: this action runs in
        # parallel with hooks (actions.yaml), and ops saves a stored-state object whole,
        # so a write here could put back values a concurrent hook has just changed. The
        # agent's own status reports the last backup.
        run.event.log(
            f"backup {result.get('backup-id')} finished: {human_size(result.get('size-bytes'))}"
            f" in {result.get('duration-seconds', '?')}s"
        )
        return action_results(result, run.redact)

    def _list_backups(self, run: ActionRun) -> Mapping[str, Any]:
        params = run.event.params
        output = str(params.get("output", "table"))
        limit = int(params.get("limit", 100))
        offset = int(params.get("offset", 0))
        # The agent describes one page only: its answer (and its cost) follow `limit`.
        data = self._client().list_backups(
            params.get("cluster") or None,
            limit=limit,
            offset=offset,
            status=params.get("status") or None,
        )
        backups = [b for b in data.get("backups") or [] if isinstance(b, Mapping)]
        total = data.get("total")
        total = total if isinstance(total, int) else offset + len(backups)
        shown = backups
        rendered = self._render_listing(shown, output)
        while len(rendered) > MAX_LISTING_CHARS and len(shown) > 1:
            shown = shown[: len(shown) // 2]
            rendered = self._render_listing(shown, output)
        if offset or len(shown) < total - offset:
            run.event.log(
                f"showing backups {offset + 1} to {offset + len(shown)} of {total}"
                f" (newest first); offset={offset + len(shown)} for the next page"
                if shown
                else f"no backups past offset {offset} (of {total})"
            )
        results = {
            "cluster": run.redact(str(data.get("cluster") or "")),
            "count": str(total),
            "shown": str(len(shown)),
            "backups": run.redact(rendered),
        }
        counts = data.get("counts")
        if isinstance(counts, Mapping) and counts:
            results["counts"] = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        schedule = schedule_summary(data.get("schedule"))
        if schedule:
            results["schedule"] = run.redact(schedule)
        return results

    @staticmethod
    def _render_listing(backups: list[Mapping[str, Any]], output: str) -> str:
        if output == "json":
            return json.dumps(backups, separators=(",", ":"), sort_keys=True)
        return backups_table(backups)

    def _verify_backup(self, run: ActionRun) -> None:
        event = run.event
        params: dict[str, Any] = {
            "backup-id": event.params["backup-id"],
            "load": bool(event.params.get("load", False)),
        }
        if event.params.get("source-cluster"):
            params["source-cluster"] = event.params["source-cluster"]
        if params["load"]:
            server = str(event.params.get("server") or "") or self._snap_server_binary()
            if server:
                params["server"] = server
        self.unit.status = ops.MaintenanceStatus(f"verifying {params['backup-id']}")
        result = self._client().verify_backup(params, on_progress=run.progress)
        event.set_results(action_results(result, run.redact))
        if result.get("ok") is False:
            # The protocol reports a failed check as an error event; a result saying
            # ok=false is treated the same way.
            raise AgentError("stream-invalid", "the backup failed verification")

    @staticmethod
    def _snap_server_binary() -> str:
        """The charmed-valkey snap's valkey-server, run directly, or "" without the snap.

        The snap puts no ``valkey-server`` in /snap/bin, so the agent would not find it;
        run directly (not through snap-confine) it also works under the agent's
        ``NoNewPrivileges``.
        """
        layout = snap_layout.read_layout()
        return layout.server_binary if layout is not None else ""

    def _prune_backups(self, run: ActionRun) -> Mapping[str, Any]:
        event = run.event
        params: dict[str, Any] = {"confirm": bool(event.params.get("confirm", False))}
        for key in ("keep-last", "keep-days"):
            if event.params.get(key) is not None:
                params[key] = int(event.params[key])
        result = self._client().prune_backups(params, on_progress=run.progress)
        deleted = list(result.get("deleted") or [])
        if result.get("dry-run", not params["confirm"]):
            event.log(
                f"dry run: {len(deleted)} backup(s) would be deleted; re-run with confirm=true"
            )
        else:
            event.log(f"deleted {len(deleted)} backup(s)")
        # A prune of a long history lists thousands of backups; Juju caps an action's
        # results, so each list is cut to what fits (the counts stay whole).
        shown = dict(result)
        for key in ("deleted", "kept", "skipped", "aborted-uploads"):
            entries = list(result.get(key) or [])
            cut = entries[:PRUNE_LIST_ENTRIES]
            while len(json.dumps(cut)) > MAX_LISTING_CHARS // 4 and len(cut) > 1:
                cut = cut[: len(cut) // 2]
            shown[key] = cut
            if len(cut) < len(entries):
                event.log(f"{key}: showing {len(cut)} of {len(entries)}")
        results = action_results(shown, run.redact)
        results["deleted-count"] = str(len(deleted))
        results["kept-count"] = str(len(result.get("kept") or []))
        results["skipped-count"] = str(len(result.get("skipped") or []))
        return results

    def _restore_backup(self, run: ActionRun) -> Mapping[str, Any]:
        """Restore through the agent while the charm stops and starts the server.

        prepare (agent: download + verify next to the dump, take the unit lock)
        → stop the Valkey unit → commit (agent: put the dump in place)
        → start the Valkey unit → finish (agent: wait for the load, count keys, unlock).
        Any failure after prepare sends ``abort`` and makes sure the server runs again.
        """
        event, redact = run.event, run.redact
        try:
            config = self._config()
        except UnusableConfigError as exc:
            raise AgentError("bad-config", str(exc)) from exc
        systemctl = self._systemctl()
        unit = find_valkey_service(systemctl, config.valkey_service)
        if unit is None:
            wanted = config.valkey_service or "any known Valkey/Redis unit"
            raise AgentError(
                "service-not-found",
                f"cannot find the server's systemd unit ({wanted}); set valkey-service",
            )

        backup_id = str(event.params["backup-id"])
        prepare: dict[str, Any] = {
            "backup-id": backup_id,
            "sentinel": str(event.params.get("sentinel") or "suppress"),
        }
        if event.params.get("source-cluster"):
            prepare["source-cluster"] = event.params["source-cluster"]
        client = self._client()
        started = time.monotonic()
        self.unit.status = ops.MaintenanceStatus(f"restoring {backup_id}")

        event.log(f"downloading and verifying {backup_id}")
        prepared = client.restore_step("prepare", prepare, on_progress=run.progress)
        restore_id = prepared.get("restore-id")
        if not restore_id:
            raise AgentError(CODE_PROTOCOL, "the agent returned no restore-id")
        ref = {"restore-id": restore_id}

        stage = "stopping"
        server_stopped = False
        try:
            event.log(f"stopping {unit}")
            systemctl.stop(unit)
            server_stopped = True
            stage = "placing the dump"
            event.log(f"placing the dump at {prepared.get('target', 'the server dump path')}")
            committed = client.restore_step("commit", ref)
            stage = "starting"
            event.log(f"starting {unit}")
            systemctl.start(unit)
            server_stopped = False
            stage = "checking the loaded data"
            event.log("waiting for the server to load the data")
            wait = {"timeout-seconds": int(event.params.get("timeout-seconds", 600))}
            finished = client.restore_step("finish", {**ref, **wait}, on_progress=run.progress)
        except (AgentError, ServiceError) as exc:
            error = exc if isinstance(exc, AgentError) else AgentError("service-error", str(exc))
            self._abort_restore(client, ref, systemctl, unit, server_stopped, event, redact)
            raise AgentError(error.code, f"restore failed while {stage}: {error.message}") from exc

        self._log_restored_cluster(event, finished)
        if finished.get("role") == "replica":
            # Sentinel promoted a replica while the server was down: the restored node
            # came back as its replica and resynced from it, discarding the restore.
            raise AgentError(
                "valkey-replica",
                "the restored server came back as a replica (a failover happened while it "
                "was stopped); the restore was discarded by its resync from the new primary",
            )
        results: dict[str, Any] = {}
        for step_result in (prepared, committed, finished):
            # "next" tells a caller driving the steps by hand what to do next; the
            # action has done every step, so it must not tell the operator to.
            step_result.pop("next", None)
            results.update(action_results(step_result, redact))
        results["backup-id"] = backup_id
        results["service"] = unit
        results["duration-seconds"] = f"{time.monotonic() - started:.1f}"
        event.log(f"restore of {backup_id} finished")
        return results

    @staticmethod
    def _log_restored_cluster(event: ops.ActionEvent, finished: Mapping[str, Any]) -> None:
        """Say in the action log what every node of the cluster holds after the restore."""
        role = finished.get("role")
        if role:
            writable = finished.get("writable")
            state = (
                "takes writes" if writable else f"refuses writes ({finished.get('write-error')})"
            )
            event.log(f"this server is the {role} and {state}")
        for replica in finished.get("replicas") or []:
            if not isinstance(replica, Mapping):
                continue
            synced = "in sync" if replica.get("in-sync") else "not in sync"
            keys = "keys match" if replica.get("keys-match") else "keys differ"
            event.log(f"replica {replica.get('addr')}: {replica.get('state')}, {synced}, {keys}")
        sentinel = finished.get("sentinel")
        if isinstance(sentinel, Mapping):
            back = (
                "restored"
                if sentinel.get("restored")
                else f"NOT restored: {sentinel.get('error')}"
            )
            event.log(f"sentinel settings of {sentinel.get('master-name')}: {back}")

    def _abort_restore(
        self,
        client: AgentClient,
        ref: dict[str, Any],
        systemctl: Systemctl,
        unit: str,
        server_stopped: bool,
        event: ops.ActionEvent,
        redact: Redactor,
    ) -> None:
        """Best effort: bring the server back up, then release the agent's restore.

        The server is started first: with Sentinel suppressed, the agent puts each
        Sentinel's setting back once it has heard the server answer, and a setting put back
        while the server is still down would make Sentinel fail it over at once.
        """
        if server_stopped:
            try:
                systemctl.start(unit)
                event.log(f"started {unit} again")
            except ServiceError as exc:
                logger.error("could not start %s after a failed restore: %s", unit, exc)
                event.log(f"could not start {unit} again: check it by hand")
        try:
            client.restore_step("abort", ref)
            event.log("restore aborted")
        except AgentError as exc:
            logger.warning("restore abort failed: %s [%s]", redact(exc.message), exc.code)


if __name__ == "__main__":  # pragma: nocover
    ops.main(ValkeyBackupCharm)
