"""A small JSON digest of the service's metrics for people (``GET /metrics/summary``, the console's Health panel).

``/metrics`` is for Prometheus, which turns histogram buckets into quantiles
at query time. The console has no Prometheus, so :func:`bucket_quantile` makes
the same estimate here (linear within a bucket, as ``histogram_quantile``
does). It reads the metric objects of :class:`app.api.metrics.Metrics`, never a
parsed text exposition, and every figure counts from the start of the process.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from prometheus_client.registry import Collector

from app.api.metrics import Metrics
from app.api.schemas import MetricsSummaryOut, RoutedCountOut, RouteTrafficOut

#: (upper bound, cumulative count) of each bucket, ascending, ending with +Inf.
Buckets = Sequence[tuple[float, float]]


def bucket_quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile (0..1) of a histogram from its cumulative buckets; None when it counted nothing.

    A value in the +Inf bucket is reported as the largest finite bound, as
    Prometheus does: the estimate can only say "at least that".

    >>> bucket_quantile(0.5, [(0.1, 2), (1.0, 4), (math.inf, 4)])
    0.1
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank and count > below:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower  # not reached: the +Inf bucket holds every observation


def _samples(metric: Collector, suffix: str) -> Iterable[tuple[dict[str, str], float]]:
    """(labels, value) of each series' ``<name><suffix>`` sample (``_total``, ``_bucket``, or ``""`` for a gauge)."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == family.name + suffix:
                yield sample.labels, sample.value


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def summarize(metrics: Metrics) -> MetricsSummaryOut:
    """Requests and latency per route, queries per expert and routing mode, queue depth and refusals."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    errors: dict[tuple[str, str], int] = defaultdict(int)
    for labels, value in _samples(metrics.requests, "_total"):
        key = (labels["route"], labels["method"])
        counts[key] += int(value)
        if labels["status"].startswith("5"):
            errors[key] += int(value)
    buckets: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for labels, value in _samples(metrics.latency, "_bucket"):
        buckets[(labels["route"], labels["method"])].append((float(labels["le"]), value))
    routes = []
    for key in sorted(counts, key=lambda key: (-counts[key], key)):
        ladder = sorted(buckets.get(key, []))
        routes.append(
            RouteTrafficOut(
                route=key[0],
                method=key[1],
                requests=counts[key],
                server_errors=errors[key],
                p50_ms=_milliseconds(bucket_quantile(0.5, ladder)),
                p95_ms=_milliseconds(bucket_quantile(0.95, ladder)),
            )
        )
    routed = [
        RoutedCountOut(expert=labels["expert"], mode=labels["mode"], queries=int(value))
        for labels, value in _samples(metrics.routed, "_total")
    ]
    routed.sort(key=lambda row: (-row.queries, row.expert, row.mode))
    return MetricsSummaryOut(
        requests=sum(counts.values()),
        server_errors=sum(errors.values()),
        routes=routes,
        routed=routed,
        queue_depth={labels["kind"]: int(value) for labels, value in _samples(metrics.queue_depth, "")},
        rejected={labels["kind"]: int(value) for labels, value in _samples(metrics.rejected, "_total")},
    )
