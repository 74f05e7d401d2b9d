"""The schedule options through the charm into the real agent.

The agent accepts them, backs up on its own, prunes after each backup, and serves the
metrics the cos-agent relation announces.
"""

from __future__ import annotations

import http.client
import json

from harness import free_port, wait_until  # pyright: ignore[reportMissingImports]
from ops import testing

from charm_world import CharmUnit


def _scrape(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read().decode()
    finally:
        conn.close()


def test_schedule_options_make_the_real_agent_back_up_prune_and_serve_metrics(charm_unit):
    port = free_port()
    unit: CharmUnit = charm_unit(
        config={
            "backup-schedule": "*/2 * * * * *",
            "backup-from": "any",
            "retention-keep-last": 1,
            "metrics-listen": f"127.0.0.1:{port}",
        }
    )
    cos = testing.Relation("cos-agent", remote_app_name="grafana-agent")
    unit.with_state(relations=[*unit.state.relations, cos])
    state = unit.configure()
    # A slot every two seconds: the first scheduled backup may already be running when
    # the charm computes its status right after configuring.
    status = state.unit_status
    running = isinstance(status, testing.MaintenanceStatus) and status.message.endswith(" running")
    assert status == testing.ActiveStatus("") or running, status

    schedule = unit.agent_status()["schedule"]
    assert schedule["cron"] == "*/2 * * * * *" and schedule["from"] == "any"

    # Two scheduled backups; after the second, retention has left only the newest.
    def backed_up_twice():
        last = unit.agent_status()["schedule"]["last-scheduled"]
        return last and last["result"] == "backed-up" and last["slot"] != first["slot"] and last

    first = wait_until(
        lambda: (
            (s := unit.agent_status()["schedule"]["last-scheduled"])
            and s["result"] == "backed-up"
            and s
        ),
        timeout=15,
        what="a scheduled backup",
    )
    second = wait_until(backed_up_twice, timeout=15, what="a second scheduled backup")
    assert second["retention"]["applied"] is True
    manifests = [k for k in unit.objects() if k.endswith("/manifest.json")]
    assert len(manifests) == 1 and second["backup-id"] in manifests[0], manifests

    # The metrics endpoint the charm announced over cos-agent answers with the numbers.
    unit.run(unit.ctx.on.relation_changed(unit.state.get_relation(cos.id)))
    announced = json.loads(unit.state.get_relation(cos.id).local_unit_data["config"])
    (job,) = announced["metrics_scrape_jobs"]
    assert job["static_configs"] == [{"targets": [f"127.0.0.1:{port}"]}]
    text = _scrape(port)
    assert 'valkey_backup_last_success_timestamp_seconds{cluster="' in text
    assert "valkey_backup_schedule_period_seconds" in text

    # list-backups shows the schedule line.
    results = unit.action("list-backups")
    assert results["schedule"].startswith("*/2 * * * * * (UTC) from any; next ")
    unit.assert_no_secrets(unit.agent.log_text(), text)
