from __future__ import annotations

import math

import pytest

from app.api.metrics_summary import bucket_quantile

# 10 observations: 4 at most 0.1 s, 8 at most 0.5 s, 9 at most 1 s, 1 above every finite bound.
LADDER = [(0.1, 4.0), (0.5, 8.0), (1.0, 9.0), (math.inf, 10.0)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.2, 0.05),  # rank 2 of the 4 in [0, 0.1]: halfway
        (0.4, 0.1),
        (0.5, 0.2),  # rank 5: the first of 4 in (0.1, 0.5]
        (0.8, 0.5),
        (0.85, 0.75),
        (0.95, 1.0),  # in the +Inf bucket: the largest finite bound, as Prometheus answers
    ],
)
def test_bucket_quantile_interpolates_like_prometheus(q: float, expected: float) -> None:
    assert bucket_quantile(q, LADDER) == pytest.approx(expected)


def test_bucket_quantile_of_an_empty_histogram_is_none() -> None:
    assert bucket_quantile(0.5, []) is None
    assert bucket_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert bucket_quantile(0.5, [(0.1, 0.0), (0.5, 2.0), (math.inf, 2.0)]) == pytest.approx(0.3)  # skips empty buckets
