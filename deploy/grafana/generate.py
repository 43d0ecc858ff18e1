"""Grafana dashboards as code: writes deploy/grafana/dashboards/*.json.

    uv run python deploy/grafana/generate.py           # (re)write the JSON files
    uv run python deploy/grafana/generate.py --check   # exit 1 when a checked-in file differs

Change the panels here, run the generator and commit both: Grafana provisions the JSON read-only
(deploy/grafana/provisioning/dashboards/crm.yml), so edits made in its UI are not kept.

Every PromQL expression of every panel is exported by `panel_queries()` (as Grafana sees it,
with macros such as `$__rate_interval`) and `prometheus_queries()` (macros replaced by concrete
values), so that tests can evaluate each one against a real Prometheus.

Plain Python with the standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"

# deploy/grafana/provisioning/datasources/prometheus.yml provisions this uid.
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "prometheus"}

RATE = "$__rate_interval"
# What Grafana substitutes for the macros used below, so that an expression can be evaluated
# by Prometheus directly (tests). $__rate_interval is at least 4 scrape intervals (5 s here).
GRAFANA_MACROS: dict[str, str] = {"$__rate_interval": "1m"}

GRID_WIDTH = 24
PANEL_HEIGHT = 8


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel and how its series are named in the legend."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # or "stat"
    width: int = GRID_WIDTH // 2
    height: int = PANEL_HEIGHT


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def _rate_by(labels: str, counter: str) -> str:
    return f"sum by ({labels}) (rate({counter}[{RATE}]))"


def _quantile_by(quantile: float, labels: str, histogram: str) -> str:
    return (
        f"histogram_quantile({quantile}, sum by ({labels}, le) (rate({histogram}_bucket[{RATE}])))"
    )


OVERVIEW_ROWS: tuple[Row, ...] = (
    Row(
        "Processes",
        (
            Panel(
                title="Scrape targets up",
                description="1 when Prometheus could scrape the process's metrics, 0 when not.",
                unit="none",
                queries=(Query("sum by (job) (up)", "{{job}}"),),
                kind="stat",
                width=GRID_WIDTH,
                height=4,
            ),
            Panel(
                title="Start-up objects frozen",
                description=(
                    "Objects each process moved out of the garbage collector's reach once set up "
                    "(crm_gc_frozen_objects). 0 means every full collection walks them all, a "
                    "pause of the batch or of the requests in flight."
                ),
                unit="short",
                queries=(Query("min by (job) (crm_gc_frozen_objects)", "{{job}}"),),
                kind="stat",
                width=GRID_WIDTH,
                height=4,
            ),
        ),
    ),
    Row(
        "Projections",
        (
            Panel(
                title="Events applied / s",
                description="Events folded into each projection (crm_events_applied_total).",
                unit="ops",
                queries=(
                    Query(_rate_by("projection", "crm_events_applied_total"), "{{projection}}"),
                ),
            ),
            Panel(
                title="Dead-lettered / s",
                description=(
                    "Records sent to the dead-letter topic, by projection and event type "
                    "('unknown' when undecodable). Anything above zero needs a look."
                ),
                unit="ops",
                queries=(
                    Query(
                        _rate_by("projection, type", "crm_events_dead_lettered_total"),
                        "{{projection}} {{type}}",
                    ),
                ),
            ),
            Panel(
                title="Duplicates / s",
                description="Re-delivered or twice-published events recognised and skipped.",
                unit="ops",
                queries=(
                    Query(_rate_by("projection", "crm_events_duplicate_total"), "{{projection}}"),
                ),
            ),
            Panel(
                title="Freshness p50 / p99",
                description=(
                    "Commit time minus event time of the applied events: how far behind reality "
                    "each projection is (crm_projection_freshness_seconds)."
                ),
                unit="s",
                queries=(
                    Query(
                        _quantile_by(0.5, "projection", "crm_projection_freshness_seconds"),
                        "{{projection}} p50",
                    ),
                    Query(
                        _quantile_by(0.99, "projection", "crm_projection_freshness_seconds"),
                        "{{projection}} p99",
                    ),
                ),
            ),
            Panel(
                title="Consumer lag",
                description="Records on the projection's partitions not yet applied (all topics).",
                unit="short",
                queries=(Query("sum by (projection) (crm_consumer_lag)", "{{projection}}"),),
            ),
            Panel(
                title="Batch duration p99",
                description="Time to decode, fold and commit one batch.",
                unit="s",
                queries=(
                    Query(
                        _quantile_by(0.99, "projection", "crm_batch_duration_seconds"),
                        "{{projection}}",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Engine: derived events, clock, halts",
        (
            Panel(
                title="Halted consumers",
                description=(
                    "1 while a worker has stopped consuming because folding fails for reasons "
                    "that are not the events' fault (crm_projection_halted); its /healthz and log "
                    "say why. It resumes by itself once the cause is fixed."
                ),
                unit="none",
                queries=(Query("max by (projection) (crm_projection_halted)", "{{projection}}"),),
            ),
            Panel(
                title="Outbox backlog",
                description=(
                    "Derived events written with their view change but not yet acknowledged by "
                    "Kafka (crm_outbox_backlog), and the age of the oldest one. Every relay of a "
                    "database (its worker's, a sender's, a jobs process's) reports the same "
                    "outbox: the largest figure is the backlog."
                ),
                unit="short",
                queries=(
                    Query("max by (projection) (crm_outbox_backlog)", "{{projection}} waiting"),
                    Query(
                        "max by (projection) (crm_outbox_oldest_age_seconds)",
                        "{{projection}} oldest (s)",
                    ),
                ),
            ),
            Panel(
                title="Derived events published / s",
                description="Events the projections derived and relayed to Kafka, by type.",
                unit="ops",
                queries=(
                    Query(
                        _rate_by("projection, type", "crm_outbox_published_total"),
                        "{{projection}} {{type}}",
                    ),
                ),
            ),
            Panel(
                title="Clock lag",
                description=(
                    "Now minus the newest tick each projection read (time rules run on ticks), "
                    "and minus the newest tick the clock published."
                ),
                unit="s",
                queries=(
                    Query(
                        "time() - max by (projection) (crm_clock_timestamp_seconds)",
                        "{{projection}}",
                    ),
                    Query("time() - max(crm_clock_last_tick_timestamp_seconds)", "clock"),
                ),
            ),
        ),
    ),
    Row(
        "HTTP",
        (
            Panel(
                title="HTTP requests / s by service and status",
                description="Requests served by each API (crm_http_requests_total).",
                unit="reqps",
                queries=(
                    Query(
                        _rate_by("service, status", "crm_http_requests_total"),
                        "{{service}} {{status}}",
                    ),
                ),
            ),
            Panel(
                title="HTTP latency p99 by service",
                description="99th percentile of the request duration, all routes together.",
                unit="s",
                queries=(
                    Query(
                        _quantile_by(0.99, "service", "crm_http_request_duration_seconds"),
                        "{{service}}",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Profile: lifetime value",
        (
            Panel(
                title="Lifetime-value model version",
                description=(
                    "Version of the BG/NBD and Gamma-Gamma model the profile serves "
                    "(crm_profile_lifetime_model_version; 0 before the first fit)."
                ),
                unit="none",
                queries=(Query("max(crm_profile_lifetime_model_version)", "version"),),
                kind="stat",
                width=GRID_WIDTH // 4,
            ),
            Panel(
                title="Lifetime-value model age",
                description=(
                    "Now minus the fit date of the model in use; the worker fits again every "
                    "10 minutes when purchases or time moved, and on request."
                ),
                unit="s",
                queries=(
                    Query(
                        "time() - max(crm_profile_lifetime_model_fitted_timestamp_seconds > 0)",
                        "age",
                    ),
                ),
                kind="stat",
                width=GRID_WIDTH // 4,
            ),
            Panel(
                title="Customers scored by lifetime value",
                description=(
                    "Customers the model in use predicts, per currency "
                    "(crm_profile_lifetime_customers_scored), and the fit time p99."
                ),
                unit="short",
                queries=(
                    Query(
                        "max by (currency) (crm_profile_lifetime_customers_scored)",
                        "{{currency}}",
                    ),
                    Query(
                        _quantile_by(0.99, "job", "crm_profile_lifetime_fit_seconds"),
                        "fit p99 (s)",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Profile: RFM",
        (
            Panel(
                title="Customers per RFM segment",
                description=(
                    "Customers in each named RFM segment, per currency, as of the worker's last "
                    "refresh of the scores (crm_profile_rfm_customers)."
                ),
                unit="short",
                queries=(
                    Query(
                        "max by (currency, segment) (crm_profile_rfm_customers)",
                        "{{currency}} {{segment}}",
                    ),
                ),
            ),
            Panel(
                title="RFM and cube refresh time p99",
                description=(
                    "Time to recompute every RFM score (crm_profile_rfm_refresh_seconds), then "
                    "every cell of the revenue cube (crm_profile_cube_refresh_seconds): how stale "
                    "the segment sizes and the cube can be, beside the refresh interval."
                ),
                unit="s",
                queries=(
                    Query(
                        _quantile_by(0.99, "job", "crm_profile_rfm_refresh_seconds"),
                        "RFM refresh p99",
                    ),
                    Query(
                        _quantile_by(0.99, "job", "crm_profile_cube_refresh_seconds"),
                        "cube refresh p99",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Interaction: timeline",
        (
            Panel(
                title="Timeline entries written / s",
                description=(
                    "Touchpoints written to customer timelines, by kind "
                    "(crm_interaction_timeline_entries_total)."
                ),
                unit="ops",
                queries=(
                    Query(_rate_by("kind", "crm_interaction_timeline_entries_total"), "{{kind}}"),
                ),
            ),
            Panel(
                title="Touchpoint outcomes / s",
                description=(
                    "Entries by kind and structured outcome (contacts, messages, consents), and "
                    "v1 contacts whose free-text outcome is in no list (read as other)."
                ),
                unit="ops",
                queries=(
                    Query(
                        _rate_by("kind, outcome", "crm_interaction_touchpoint_outcomes_total"),
                        "{{kind}} {{outcome}}",
                    ),
                    Query(
                        f"sum(rate(crm_interaction_unlisted_outcomes_total[{RATE}]))",
                        "unlisted v1 outcomes",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Interaction: cases",
        (
            Panel(
                title="Open cases per department",
                description=(
                    "Cases being handled (open or assigned) per department and priority, read "
                    "from the table every 10 s by the interaction worker "
                    "(crm_interaction_open_cases)."
                ),
                unit="short",
                queries=(
                    Query(
                        "max by (department, priority) (crm_interaction_open_cases)",
                        "{{department}} {{priority}}",
                    ),
                ),
            ),
            Panel(
                title="SLA breaches",
                description=(
                    "SLA targets missed per second, by target and priority, as the clock's ticks "
                    "or late steps pass the deadlines (crm_interaction_case_sla_breaches_total)."
                ),
                unit="ops",
                queries=(
                    Query(
                        _rate_by("target, priority", "crm_interaction_case_sla_breaches_total"),
                        "{{target}} {{priority}}",
                    ),
                    Query(
                        _rate_by("step", "crm_interaction_case_steps_rejected_total"),
                        "rejected {{step}}",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Interaction: voice of the customer and journey",
        (
            Panel(
                title="NPS per touchpoint (30 days)",
                description=(
                    "Net Promoter Score (% promoters 9-10 minus % detractors 0-6) per touchpoint "
                    "over the 30 days before the newest rating (crm_interaction_nps)."
                ),
                unit="short",
                queries=(Query("max by (touchpoint) (crm_interaction_nps)", "{{touchpoint}}"),),
            ),
            Panel(
                title="Detractor scores",
                description=(
                    "Detractor scores per measure, each announced on crm.experience "
                    "(crm_interaction_detractor_scores_total)."
                ),
                unit="ops",
                queries=(
                    Query(
                        _rate_by("measure", "crm_interaction_detractor_scores_total"),
                        "{{measure}}",
                    ),
                ),
            ),
            Panel(
                title="Since the last feedback, per channel",
                description=(
                    "Now minus the event time of each channel's newest feedback; the "
                    "CrmFeedbackChannelSilent alert fires past a day "
                    "(crm_interaction_feedback_last_timestamp_seconds)."
                ),
                unit="s",
                queries=(
                    Query(
                        "time() - max by (channel) "
                        "(crm_interaction_feedback_last_timestamp_seconds)",
                        "{{channel}}",
                    ),
                ),
            ),
            Panel(
                title="Customers per journey stage",
                description="Customers in each journey stage (crm_interaction_journey_customers).",
                unit="short",
                queries=(Query("max by (stage) (crm_interaction_journey_customers)", "{{stage}}"),),
            ),
        ),
    ),
    Row(
        "Broadcast: sending",
        (
            Panel(
                title="Messages / s by channel and outcome",
                description=(
                    "What became of messages: sent, bounced, failed, cancelled at send time, and "
                    "the providers' reports (crm_broadcast_messages_total)."
                ),
                unit="ops",
                queries=(
                    Query(
                        _rate_by("channel, outcome", "crm_broadcast_messages_total"),
                        "{{channel}} {{outcome}}",
                    ),
                ),
            ),
            Panel(
                title="Send latency p95, retries and failed SMTP connections",
                description=(
                    "95th percentile of one adapter call (crm_broadcast_send_seconds), "
                    "temporary failures planned again with backoff (crm_broadcast_send_retries), "
                    "and failed SMTP connections (crm_broadcast_smtp_connection_failures: the "
                    "relay is down or refuses TLS or AUTH)."
                ),
                unit="s",
                queries=(
                    Query(
                        _quantile_by(0.95, "channel", "crm_broadcast_send_seconds"),
                        "p95 {{channel}}",
                    ),
                    Query(
                        _rate_by("channel", "crm_broadcast_send_retries_total"),
                        "retries/s {{channel}}",
                    ),
                    Query(
                        f"sum(rate(crm_broadcast_smtp_connection_failures_total[{RATE}]))",
                        "failed SMTP connections/s",
                    ),
                ),
            ),
            Panel(
                title="Tracked opens and clicks / s by result",
                description=(
                    "E-mail opens (pixel) and clicks (redirect) the gateway passed to the "
                    "broadcast service: recorded, repeated (known already), unknown (no such "
                    "message) or failed (not recorded; the customer was served anyway) "
                    "(crm_gateway_tracking_reports). Opens are a lower bound: mail clients "
                    "that block images never fetch the pixel."
                ),
                unit="ops",
                queries=(
                    Query(
                        _rate_by("outcome, result", "crm_gateway_tracking_reports_total"),
                        "{{outcome}} {{result}}",
                    ),
                ),
            ),
            Panel(
                title="Send queue",
                description="Planned messages due now that no sender has claimed yet.",
                unit="short",
                queries=(Query("max(crm_broadcast_send_queue)", "due"),),
            ),
        ),
    ),
    Row(
        "Broadcast: contact decisions",
        (
            Panel(
                title="Why customers were not contacted",
                description=(
                    "Refused contact decisions / s by purpose and reason code: campaign recipients "
                    "not planned and decisions asked through the API "
                    "(crm_broadcast_decisions_total, outcome refused; each code of a decision "
                    "counts once)."
                ),
                unit="ops",
                queries=(
                    Query(
                        _rate_by(
                            "purpose, reason", 'crm_broadcast_decisions_total{outcome="refused"}'
                        ),
                        "{{purpose}} {{reason}}",
                    ),
                ),
            ),
        ),
    ),
)


# ----------------------------------------------------------------------------- JSON model


def _target(query: Query, ref_id: str) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": query.expr,
        "legendFormat": query.legend,
        "range": True,
        "refId": ref_id,
    }


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"color": {"mode": "palette-classic"}, "unit": panel.unit}
    options: dict[str, Any]
    if panel.kind == "timeseries":
        defaults["min"] = 0
        defaults["custom"] = {
            "drawStyle": "line",
            "fillOpacity": 10,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
        }
        options = {
            "legend": {
                "calcs": ["mean", "max"],
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        defaults["mappings"] = [
            {"options": {"0": {"text": "down"}, "1": {"text": "up"}}, "type": "value"}
        ]
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
        }
        options = {
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "value_and_name",
        }
    else:
        raise ValueError(f"unknown panel kind {panel.kind!r}")
    ref_ids = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return {
        "datasource": DATASOURCE,
        "description": panel.description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "id": panel_id,
        "options": options,
        "targets": [_target(q, ref_ids[i]) for i, q in enumerate(panel.queries)],
        "title": panel.title,
        "type": panel.kind,
    }


def _layout(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Rows one under another; panels fill each row left to right, wrapping at 24 columns."""
    panels: list[dict[str, Any]] = []
    panel_id = 0
    y = 0
    for row in rows:
        panel_id += 1
        panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "id": panel_id,
                "panels": [],
                "title": row.title,
                "type": "row",
            }
        )
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panel_id += 1
            panels.append(_panel_json(panel, panel_id, x, y))
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return panels


def _dashboard(uid: str, title: str, rows: Sequence[Row]) -> dict[str, Any]:
    return {
        "annotations": {"list": []},
        "description": f"Generated by deploy/grafana/generate.py; do not edit ({uid}.json).",
        "editable": False,
        "graphTooltip": 1,
        "links": [],
        "panels": _layout(rows),
        "refresh": "10s",
        "schemaVersion": 39,
        "tags": ["crm"],
        "templating": {"list": []},
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
    }


def overview_dashboard() -> dict[str, Any]:
    return _dashboard("crm-overview", "CRM platform overview", OVERVIEW_ROWS)


# File name in DASHBOARDS_DIR -> builder. Add further dashboards here.
DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "crm-overview.json": overview_dashboard,
}


# ----------------------------------------------------------------------------- queries


def panel_queries() -> list[str]:
    """Every panel's PromQL expression, exactly as the dashboards hold it (Grafana macros)."""
    queries: list[str] = []
    for build in DASHBOARDS.values():
        for panel in build()["panels"]:
            queries.extend(target["expr"] for target in panel.get("targets", []))
    return queries


def resolve_grafana_macros(expr: str) -> str:
    """Replace Grafana's macros by what Grafana would substitute, for plain Prometheus."""
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    return expr


def prometheus_queries() -> list[str]:
    """`panel_queries()` as Prometheus can evaluate them directly."""
    return [resolve_grafana_macros(expr) for expr in panel_queries()]


# ----------------------------------------------------------------------------- command


def render(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when a checked-in dashboard differs from the generated one",
    )
    parser.add_argument("--output-dir", type=Path, default=DASHBOARDS_DIR)
    args = parser.parse_args(argv)
    out_dir: Path = args.output_dir

    stale: list[str] = []
    for name, build in DASHBOARDS.items():
        path = out_dir / name
        text = render(build())
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path))
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(
            "out of date (run: uv run python deploy/grafana/generate.py): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
