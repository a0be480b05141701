"""``/metrics`` in the Prometheus text format, from a registry owned by the app (not the global one).

Run metrics are read from the catalog at every scrape (one aggregate query, see
:mod:`fleetscore.catalog.stats`), because runs are written by other processes (CLI, scheduler);
ingest metrics come from ``app.state.ingest.stats()`` when the app runs ingest.

    fleetscore_runs_total{status}                        runs recorded, per status
    fleetscore_run_duration_seconds                      histogram of finished runs' durations
    fleetscore_models_scored_total                       models scored, summed over runs
    fleetscore_rows_scored_total                         predictions written, summed over runs
    fleetscore_anomalies_total                           anomalies found, summed over runs
    fleetscore_failed_models_total                       models that could not be scored
    fleetscore_last_successful_run_timestamp_seconds     when the last succeeded run finished
    fleetscore_incidents_open                            incidents open or acknowledged
    fleetscore_notifications_sent_total                  alert notifications delivered
    fleetscore_notifications_failed_total                failed delivery attempts (each retry counts)
    fleetscore_notifications_dead_lettered               notifications in the dead-letter list
    fleetscore_notifications_pending                     notifications waiting for delivery
    fleetscore_ingest_accepted_total / _rejected_total   readings accepted / rejected by ingest
    fleetscore_ingest_late_total                         readings quarantined as late for their own device
                                                         (compaction's checkpoint totals: survives restarts)
    fleetscore_ingest_healthy                            1, or 0 while the ingest log cannot store batches
    fleetscore_ingest_log_failures_total                 open/write/fsync failures of the ingest log
    fleetscore_ingest_<name>                             every other number ingest reports (``*_total``
                                                         as counters, the rest as gauges)
    fleetscore_ingest_lag{source,partition,topic}        messages a stream consumer is behind (Kafka: per
                                                         partition; NATS: per consumer, partition "-")

Totals come from the catalog, so they go down if old runs are deleted by retention; Prometheus
treats that as a counter reset.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from fleetscore.web.auth import require_token
from fleetscore.web.routing import ApiRoute

#: Ingest stats exported as counters (also every ``*_total``); other numeric ingest stats become gauges.
INGEST_COUNTERS = ("accepted", "rejected")


class FleetCollector:
    """Yields the fleet's metric families on every collect (i.e. every scrape)."""

    def __init__(self, fleet: Any, ingest: Callable[[], dict[str, Any] | None]) -> None:
        self.fleet = fleet
        self.ingest = ingest

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        stats = self.fleet.run_stats()
        runs = CounterMetricFamily("fleetscore_runs", "Scoring runs recorded in the catalog, by status.", labels=["status"])
        for status, totals in sorted(stats.by_status.items()):
            runs.add_metric([status], totals.runs)
        yield runs
        cumulative = [(floatToGoString(b), c) for b, c in zip(stats.duration_buckets, stats.duration_counts)]
        yield HistogramMetricFamily(
            "fleetscore_run_duration_seconds", "Wall time of finished scoring runs.",
            buckets=cumulative + [("+Inf", stats.duration_count)], sum_value=stats.duration_sum,
        )
        for name, value, text in (
            ("models_scored", stats.totals.models, "Models scored, summed over runs."),
            ("rows_scored", stats.totals.rows, "Predictions written, summed over runs."),
            ("anomalies", stats.totals.anomalies, "Anomalies found, summed over runs."),
            ("failed_models", stats.totals.failed_models, "Models that could not be scored, summed over runs."),
        ):
            yield CounterMetricFamily(f"fleetscore_{name}", text, value=value)
        if stats.last_success_at:
            yield GaugeMetricFamily("fleetscore_last_successful_run_timestamp_seconds",
                                    "Unix time the last succeeded run finished.",
                                    value=stats.last_success_at / 1e6)
        yield GaugeMetricFamily("fleetscore_incidents_open", "Incidents open or acknowledged.",
                                value=self.fleet.active_incidents())
        yield from _notification_families(self.fleet.alert_counts())
        yield from _ingest_families(self.ingest())
        lag = GaugeMetricFamily("fleetscore_ingest_lag", "Messages a stream consumer is behind its broker.",
                                labels=["source", "partition", "topic"])
        for source in self.fleet.stream_sources():
            for (topic, partition), behind in sorted(source.lag.items()):
                lag.add_metric([source.source, partition, topic], behind)
        yield lag


def _notification_families(counts: dict[str, int]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield CounterMetricFamily("fleetscore_notifications_sent", "Alert notifications delivered.", value=counts["sent"])
    yield CounterMetricFamily("fleetscore_notifications_failed", "Failed alert delivery attempts (each retry counts).",
                              value=counts["failed"])
    yield GaugeMetricFamily("fleetscore_notifications_dead_lettered", "Notifications in the dead-letter list.",
                            value=counts["dead"])
    yield GaugeMetricFamily("fleetscore_notifications_pending", "Notifications waiting for delivery.",
                            value=counts["pending"])


def _ingest_families(stats: dict[str, Any] | None) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if not stats:
        return
    for key, value in sorted(stats.items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = re.sub(r"[^a-zA-Z0-9_]", "_", str(key)).strip("_").lower()
        base = name.removesuffix("_total")
        if not base:
            continue
        if base in INGEST_COUNTERS or name.endswith("_total"):
            yield CounterMetricFamily(f"fleetscore_ingest_{base}", f"Ingest counter {key!s}.", value=value)
        else:
            yield GaugeMetricFamily(f"fleetscore_ingest_{name}", f"Ingest statistic {key!s}.", value=value)


def make_registry(app: Any) -> Any:
    """A CollectorRegistry of the app's own: the fleet's metrics plus this process's."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    from fleetscore.web.views import ingest_stats

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(app.state.fleet, lambda: ingest_stats(app)))
    ProcessCollector(registry=registry)
    return registry


def build_router() -> APIRouter:
    """``GET /metrics``; the app must hold its registry in ``app.state.metrics_registry``."""
    router = APIRouter(tags=["ops"], route_class=ApiRoute, dependencies=[Depends(require_token)])

    @router.get("/metrics", response_class=Response,
                responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    def metrics(request: Request) -> Response:
        """Run, scoring and ingest metrics in the Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    return router
