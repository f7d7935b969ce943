"""Name resolution with the seed's ``crusoe_vm_dns_resolve_*`` accounting.

The seed counted every call to its resolver, IP literals included, so each
rotating address became a ``host`` label value. Here only host names are
ever resolved or counted: IP literals are recognised before any lookup, and
the ``host`` label is bounded to the names the operator configured or the
host's mounts contain.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence

from crusoe_metrics_exporter.contract import HistogramValue, MetricSpec, Sample
from crusoe_metrics_exporter.histogram import bucket_index
from crusoe_metrics_exporter.targets.addresses import normalize, sort_key

#: Given a host name, return its addresses (any text form); raise OSError on failure.
Resolver = Callable[[str], Sequence[str]]

DNS_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DNS_TYPES = ("nfs", "objectstore")
#: Names beyond this many share host="other": a mounts file with thousands
#: of distinct server names must not become thousands of series.
MAX_DNS_HOSTS = 64
OVERFLOW_HOST = "other"

_LABELS = ("type", "host")
TOTAL = MetricSpec("dns_resolve_total", "counter", "Total number of DNS resolution attempts", _LABELS)
SUCCESSES = MetricSpec("dns_resolve_successes_total", "counter", "Total number of successful DNS resolutions", _LABELS)
FAILURES = MetricSpec("dns_resolve_failures_total", "counter", "Total number of DNS resolution failures", _LABELS)
LATENCY = MetricSpec(
    "dns_resolve_latency_seconds",
    "histogram",
    "Latency of DNS resolution attempts in seconds",
    _LABELS,
    buckets=DNS_BUCKETS,
)


#: The metrics the targets service exports about its lookups.
DNS_METRICS: tuple[MetricSpec, ...] = (TOTAL, SUCCESSES, FAILURES, LATENCY)


def system_resolver(name: str) -> list[str]:
    """A and AAAA records through the system resolver (getaddrinfo, AF_UNSPEC)."""
    infos = socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _Series:
    __slots__ = ("counts", "failures", "latency_sum", "successes", "total")

    def __init__(self) -> None:
        self.total = 0
        self.successes = 0
        self.failures = 0
        self.counts = [0] * (len(DNS_BUCKETS) + 1)
        self.latency_sum = 0.0


class DnsStats:
    """Cumulative per (type, host) resolution counters; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _Series] = {}
        self._hosts: set[str] = set()

    def _label(self, host: str) -> str:
        if host in self._hosts:
            return host
        if len(self._hosts) >= MAX_DNS_HOSTS:
            return OVERFLOW_HOST
        self._hosts.add(host)
        return host

    def record(self, kind: str, host: str, seconds: float, ok: bool) -> None:
        with self._lock:
            key = (kind, self._label(host))
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
            series.total += 1
            if ok:
                series.successes += 1
            else:
                series.failures += 1
            series.counts[bucket_index(DNS_BUCKETS, seconds)] += 1
            series.latency_sum += seconds

    def snapshot(self) -> dict[tuple[str, str], tuple[int, int, int, HistogramValue]]:
        with self._lock:
            return {
                key: (s.total, s.successes, s.failures, HistogramValue(tuple(s.counts), s.latency_sum))
                for key, s in self._series.items()
            }

    def samples(self) -> list[Sample]:
        """The resolution counters and latency histogram of every (type, host), for DNS_METRICS."""
        snap = sorted(self.snapshot().items())
        out = [Sample(TOTAL.name, key, float(v[0])) for key, v in snap]
        out += [Sample(SUCCESSES.name, key, float(v[1])) for key, v in snap]
        out += [Sample(FAILURES.name, key, float(v[2])) for key, v in snap]
        out += [Sample(LATENCY.name, key, v[3]) for key, v in snap]
        return out


class CountingResolver:
    """Resolves host names, records each attempt, remembers the last good answer."""

    def __init__(self, resolver: Resolver, stats: DnsStats) -> None:
        self._resolver = resolver
        self._stats = stats
        self._last_good: dict[tuple[str, str], tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def resolve(self, kind: str, name: str) -> tuple[tuple[str, ...], str | None]:
        """Addresses of ``name`` (normalized, sorted) and an error text or None.

        On failure the last good answer for the name is returned with the
        error, so a DNS outage does not make targets vanish.
        """
        key = (kind, name)
        start = time.monotonic()
        error: str | None = None
        found: list[str] = []
        try:
            for text in self._resolver(name):
                norm = normalize(text)
                if norm is not None and norm[0] not in found:
                    found.append(norm[0])
            if not found:
                error = "no addresses"
        except (OSError, UnicodeError) as exc:
            # UnicodeError: getaddrinfo's IDNA encoding rejects some bad names.
            error = str(exc) or type(exc).__name__
        self._stats.record(kind, name, time.monotonic() - start, error is None)
        with self._lock:
            if error is None:
                answer = tuple(sorted(found, key=sort_key))
                self._last_good[key] = answer
                return answer, None
            return self._last_good.get(key, ()), error

    def forget_except(self, keep: set[tuple[str, str]]) -> None:
        """Drop remembered answers of names no longer configured or mounted."""
        with self._lock:
            for key in list(self._last_good):
                if key not in keep:
                    del self._last_good[key]
