"""The provider side of the ``cos_agent`` interface: what COS needs to watch backups.

Over the ``cos-agent`` relation the machine's collector (grafana-agent or
opentelemetry-collector, a subordinate on the same machine) learns, from this unit's
databag under the key ``config`` (one JSON object, the interface's own schema):

- ``metrics_scrape_jobs``: the agent's ``/metrics`` endpoint (``metrics-listen``);
- ``metrics_alert_rules``: ``prometheus_alert_rules/*.rules``, with the Juju topology
  injected by ``cosl`` (the maintained COS library on PyPI);
- ``dashboards``: ``grafana_dashboards/*.json``, LZMA-compressed and base64-encoded the
  way ``cosl`` does it;
- ``log_alert_rules`` and ``log_slots``: none.

No PyPI package provides the interface's provider class itself (it is a charm library),
so this module writes the databag with ``cosl``'s building blocks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import ops
from cosl import JujuTopology, LZMABase64
from cosl.rules import AlertRules

logger = logging.getLogger(__name__)

COS_RELATION = "cos-agent"
#: The interface's databag key.
DATABAG_KEY = "config"
HERE = Path(__file__).resolve().parent
RULES_DIR = HERE / "prometheus_alert_rules"
DASHBOARDS_DIR = HERE / "grafana_dashboards"


def scrape_target(listen: str) -> str:
    """Where the collector on this machine reaches ``listen``.

    A wildcard address is scraped on loopback.
    """
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::"):  # noqa: S104 (a listen address being read)
        host = "localhost"
    return f"{host}:{port}"


def provider_data(charm: ops.CharmBase, metrics_listen: str) -> dict[str, Any]:
    """The ``config`` object of this unit's databag."""
    rules = AlertRules(query_type="promql", topology=JujuTopology.from_charm(charm))
    rules.add_path(RULES_DIR, recursive=False)
    jobs = []
    if metrics_listen:
        jobs.append(
            {
                "job_name": f"{charm.app.name}_0_agent",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [scrape_target(metrics_listen)]}],
            }
        )
    dashboards = [
        LZMABase64.compress(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    ]
    return {
        "metrics_alert_rules": rules.as_dict(),
        "log_alert_rules": {},
        "dashboards": dashboards,
        "metrics_scrape_jobs": jobs,
        "log_slots": [],
    }


def publish(charm: ops.CharmBase, metrics_listen: str) -> None:
    """Writes the databag of every cos-agent relation (there is at most one)."""
    for relation in charm.model.relations[COS_RELATION]:
        data = json.dumps(provider_data(charm, metrics_listen), sort_keys=True)
        databag = relation.data[charm.unit]
        if databag.get(DATABAG_KEY) != data:
            databag[DATABAG_KEY] = data
            logger.info("cos-agent data updated (metrics at %s)", metrics_listen or "nowhere")
