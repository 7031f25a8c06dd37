"""metrics.observe_many: the batched Histogram update equals one observe() a value."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gatewayd.ops import metrics

_BUCKETS = (0.001, 0.01, 0.1, 1, 10)


def _pair() -> tuple[Histogram, Histogram, CollectorRegistry, CollectorRegistry]:
    ra, rb = CollectorRegistry(), CollectorRegistry()
    a = Histogram("t_seconds", "test", ["carrier"], buckets=_BUCKETS, registry=ra)
    b = Histogram("t_seconds", "test", ["carrier"], buckets=_BUCKETS, registry=rb)
    return a, b, ra, rb


def _samples(reg: CollectorRegistry) -> list[str]:
    # Without the _created timestamps, which differ between the two registries.
    return [line for line in generate_latest(reg).decode().splitlines()
            if "_created" not in line]


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_observe_many_equals_observe_each(values: list[float]) -> None:
    a, b, ra, rb = _pair()
    a.labels("sim")
    for v in values:
        a.labels("sim").observe(v)
    metrics.observe_many(b.labels("sim"), values)
    assert _samples(ra) == _samples(rb)


def test_observe_many_bucket_edges_and_inf() -> None:
    a, b, ra, rb = _pair()
    values = [0.0, 0.001, 0.0010001, 1.0, 10.0, 10.5, 1e9]
    for v in values:
        a.labels("x").observe(v)
    metrics.observe_many(b.labels("x"), values)
    assert _samples(ra) == _samples(rb)
    assert 'le="+Inf",carrier="x"} 7.0' in "\n".join(_samples(rb)).replace(
        'carrier="x",le="+Inf"', 'le="+Inf",carrier="x"')


def test_observe_many_of_nothing_changes_nothing() -> None:
    a, b, ra, rb = _pair()
    a.labels("x")
    metrics.observe_many(b.labels("x"), [])
    assert _samples(ra) == _samples(rb)


def test_observe_many_on_gatewayd_histograms() -> None:
    child = metrics.RECEIPT_LATENCY.labels("observe-many-test")
    before = child._sum.get()
    metrics.observe_many(child, [0.2, 0.3])
    assert abs(child._sum.get() - before - 0.5) < 1e-9


def test_observe_many_falls_back_to_observe_without_the_internals() -> None:
    class Plain:  # what a prometheus_client with other internals would look like
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, v: float) -> None:
            self.seen.append(v)

    p = Plain()
    metrics.observe_many(p, [0.5, 2.0])
    assert p.seen == [0.5, 2.0]
