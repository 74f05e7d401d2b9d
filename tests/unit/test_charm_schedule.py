"""Scheduled backups, retention, metrics and COS through ops.testing.

The options become the configure request's `schedule`, `retention` and `metrics`
sections, the cos-agent relation carries the scrape job, alert rules and dashboard, and a
backup older than the schedule allows shows in the unit status.
"""

from __future__ import annotations

import json
import lzma
import re
from base64 import b64decode
from pathlib import Path

import pytest
import yaml
from ops import testing

from fakes import default_responses, full_state, principal, s3_v1

ROOT = Path(__file__).resolve().parents[2]
CHARM_SRC = ROOT / "charm" / "src"


def configures(agent) -> list[dict]:
    return [p for p in agent.params_of("configure") if p is not None]


def test_schedule_retention_and_metrics_options_reach_the_agent(ctx, agent):
    config = {
        "backup-schedule": " 0  3 * * * ",
        "backup-from": "primary",
        "retention-keep-last": 7,
        "retention-keep-days": 30,
        "metrics-listen": "10.0.0.5:9187",
    }
    ctx.run(ctx.on.config_changed(), full_state(config=config))
    sent = configures(agent)[-1]
    assert sent["schedule"] == {"cron": "0 3 * * *", "from": "primary"}
    assert sent["retention"] == {"keep-last": 7, "keep-days": 30}
    assert sent["metrics"] == {"listen": "10.0.0.5:9187"}


def test_defaults_send_no_schedule_no_retention_and_local_metrics(ctx, agent):
    ctx.run(ctx.on.config_changed(), full_state())
    sent = configures(agent)[-1]
    assert "schedule" not in sent and "retention" not in sent
    assert sent["metrics"] == {"listen": "127.0.0.1:9187"}


def test_empty_metrics_listen_switches_the_endpoint_off(ctx, agent):
    ctx.run(ctx.on.config_changed(), full_state(config={"metrics-listen": ""}))
    assert "metrics" not in configures(agent)[-1]


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"backup-schedule": "every day"}, "backup-schedule must be a cron expression"),
        ({"backup-schedule": "* * * *"}, "backup-schedule must be a cron expression"),
        ({"backup-from": "leader"}, "backup-from must be one of replica, primary, any"),
        ({"retention-keep-last": -1}, "retention-keep-last must be 0"),
        ({"metrics-listen": "localhost:9187"}, "metrics-listen 'localhost:9187'"),
        ({"metrics-listen": "127.0.0.1:99999"}, "metrics-listen"),
    ],
)
def test_bad_schedule_options_block_with_the_reason(ctx, agent, config, fragment):
    state = ctx.run(ctx.on.config_changed(), full_state(config=config))
    assert "configure" not in agent.ops()
    assert isinstance(state.unit_status, testing.BlockedStatus)
    assert fragment in state.unit_status.message


def test_a_verify_schedule_rides_in_the_schedule_section(ctx, agent):
    config = {"backup-schedule": "0 3 * * *", "backup-verify-schedule": "0 4 * * 0"}
    ctx.run(ctx.on.config_changed(), full_state(config=config))
    assert configures(agent)[-1]["schedule"] == {
        "cron": "0 3 * * *",
        "from": "replica",
        "verify-cron": "0 4 * * 0",
    }


def test_a_verify_schedule_without_a_backup_schedule_blocks(ctx, agent):
    state = ctx.run(
        ctx.on.config_changed(), full_state(config={"backup-verify-schedule": "0 4 * * 0"})
    )
    assert state.unit_status == testing.BlockedStatus(
        "backup-verify-schedule needs backup-schedule to be set"
    )


def test_six_fields_with_seconds_are_accepted(ctx, agent):
    ctx.run(ctx.on.config_changed(), full_state(config={"backup-schedule": "*/30 * * * * *"}))
    assert configures(agent)[-1]["schedule"]["cron"] == "*/30 * * * * *"


def _cos_relation() -> testing.Relation:
    return testing.Relation("cos-agent", remote_app_name="grafana-agent")


def test_cos_agent_gets_the_scrape_job_alert_rules_and_dashboard(ctx, agent):
    cos = _cos_relation()
    state = full_state(config={"metrics-listen": "0.0.0.0:9300"})
    state = testing.State(
        relations=[*state.relations, cos],
        secrets=state.secrets,
        config=state.config,
        model=state.model,
    )
    out = ctx.run(ctx.on.relation_joined(cos), state)
    data = json.loads(out.get_relation(cos.id).local_unit_data["config"])
    assert data["metrics_scrape_jobs"] == [
        {
            "job_name": "valkey-backup_0_agent",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": ["localhost:9300"]}],
        }
    ]
    rules = [r for g in data["metrics_alert_rules"]["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert names == {"ValkeyBackupTooOld", "ValkeyBackupFailing", "ValkeyBackupMissedSlot"}
    # cosl labels every rule with this deployment's topology.
    assert all(r["labels"]["juju_model"] == "test-model" for r in rules), rules
    assert all(r["labels"]["juju_application"] == "valkey-backup" for r in rules), rules
    (dashboard,) = data["dashboards"]
    board = json.loads(lzma.decompress(b64decode(dashboard)))
    assert board["title"] == "Valkey Backup"
    assert data["log_slots"] == [] and data["log_alert_rules"] == {}


def test_cos_agent_announces_no_scrape_job_when_metrics_are_off(ctx, agent):
    cos = _cos_relation()
    relation, s3_secret = s3_v1()
    state = testing.State(
        relations=[principal(), relation, cos],
        secrets=[s3_secret],
        config={"metrics-listen": ""},
    )
    out = ctx.run(ctx.on.relation_changed(cos), state)
    data = json.loads(out.get_relation(cos.id).local_unit_data["config"])
    assert data["metrics_scrape_jobs"] == []


def _status_with_schedule(schedule: dict) -> dict:
    status = default_responses()["status"]
    return {**status, "schedule": schedule}


def test_a_backup_older_than_the_schedule_allows_blocks_the_unit(ctx, agent):
    agent.responses["status"] = _status_with_schedule(
        {
            "cron": "0 3 * * *",
            "too-old": True,
            "last-success-at": "2020-01-01T03:00:00Z",
            "allowed-age-seconds": 90000,
        }
    )
    state = ctx.run(ctx.on.update_status(), full_state())
    assert isinstance(state.unit_status, testing.BlockedStatus)
    message = state.unit_status.message
    assert message.startswith("last successful backup ")
    assert "(the schedule allows 25h)" in message


def test_no_success_yet_under_a_late_schedule_says_so(ctx, agent):
    agent.responses["status"] = _status_with_schedule(
        {"cron": "0 3 * * *", "too-old": True, "last-success-at": None}
    )
    state = ctx.run(ctx.on.update_status(), full_state())
    assert state.unit_status == testing.BlockedStatus(
        "no successful scheduled backup yet: see list-backups and the agent's journal"
    )


def test_a_schedule_on_time_leaves_the_unit_active(ctx, agent):
    agent.responses["status"] = _status_with_schedule(
        {"cron": "0 3 * * *", "too-old": False, "last-success-at": "2026-11-30T03:00:00Z"}
    )
    state = ctx.run(ctx.on.update_status(), full_state())
    assert isinstance(state.unit_status, testing.ActiveStatus)


def test_list_backups_shows_the_schedule_and_the_last_slot(ctx, agent):
    listing = default_responses()["list-backups"]
    agent.responses["list-backups"] = {
        **listing,
        "schedule": {
            "cron": "0 3 * * *",
            "from": "replica",
            "next-slot": "2026-12-01T03:00:00Z",
            "too-old": False,
            "last-scheduled": {
                "slot": "2026-11-30T03:00:00Z",
                "result": "taken-by-other",
                "taken-by": "valkey/1",
            },
            "recent-missed-slots": ["2026-11-29T03:00:00Z"],
        },
    }
    ctx.run(ctx.on.action("list-backups"), full_state())
    assert ctx.action_results["schedule"] == (
        "0 3 * * * (UTC) from replica; next 2026-12-01T03:00:00Z; "
        "last slot 2026-11-30T03:00:00Z: taken-by-other by valkey/1; "
        "1 recently missed slot(s)"
    )


def test_list_backups_without_a_schedule_has_no_schedule_result(ctx, agent):
    ctx.run(ctx.on.action("list-backups"), full_state())
    assert "schedule" not in ctx.action_results


def _documented_series() -> set[str]:
    """The series docs/protocol.md's metrics table lists (counters under their `_total`)."""
    doc = (ROOT / "docs" / "protocol.md").read_text()
    table = doc[doc.index("## Metrics") :]
    return {
        re.sub(r"\{.*", "", m) for m in re.findall(r"^\| `(valkey_backup_[^`]+)`", table, re.M)
    }


def test_alert_rules_and_dashboard_use_only_documented_series():
    documented = _documented_series()
    assert "valkey_backup_last_success_timestamp_seconds" in documented
    rules = yaml.safe_load(
        (CHARM_SRC / "prometheus_alert_rules" / "valkey_backup.rules").read_text()
    )
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    board = json.loads((CHARM_SRC / "grafana_dashboards" / "valkey-backup.json").read_text())
    exprs += [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"valkey_backup_\w+", e)}
    assert used and used <= documented, used - documented
