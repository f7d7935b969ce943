"""Pure pieces of the shared TCP tracing: addresses, bucket generator, BTF reader, accumulation."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crusoe_metrics_exporter.plugins._tcptrace.accumulate import Accumulator
from crusoe_metrics_exporter.plugins._tcptrace.addresses import address_key, address_text, normalize, port_bitmap
from crusoe_metrics_exporter.plugins._tcptrace.buckets import bounds_ns, bucket_function_c, bucket_of
from crusoe_metrics_exporter.plugins._tcptrace.collector import TcpTargetCollector
from crusoe_metrics_exporter.plugins._tcptrace.program import HEADER_DIR, build_source, program_specs
from crusoe_metrics_exporter.plugins._tcptrace.tracer import FilterResult
from crusoe_metrics_exporter.sdk import Sample


def test_ipv4_keys_are_ipv4_mapped_and_round_trip() -> None:
    key = address_key("10.1.2.3")
    assert key == bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 3])
    assert address_text(key) == "10.1.2.3"
    assert address_key("::ffff:10.1.2.3") == key
    assert normalize("2001:DB8::0:1") == "2001:db8::1"
    assert normalize("fe80::1%eth0") == "fe80::1"
    with pytest.raises(ValueError):
        address_key("nfs.example.com")
    with pytest.raises(ValueError):
        address_text(b"\x00" * 4)


def test_port_bitmap_words() -> None:
    words = port_bitmap([2049, 2050, 443, 80])
    assert words == {32: (1 << 1) | (1 << 2), 6: 1 << (443 & 63), 1: 1 << (80 & 63)}
    with pytest.raises(ValueError):
        port_bitmap([0])
    with pytest.raises(ValueError):
        port_bitmap([70000])


def _run_generated_c(bounds: tuple[float, ...], ns: int) -> int:
    """Evaluate the generated C (a nest of ifs) by translating it to Python."""
    src = bucket_function_c(bounds)
    body = src.split("{", 1)[1].rsplit("}", 1)[0]
    lines = []
    for line in body.splitlines():
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if stripped.startswith("if ("):
            cond = stripped[4:].split(")")[0].replace("ULL", "")
            lines.append(f"{indent}if {cond}:")
        elif stripped.startswith("return"):
            lines.append(f"{indent}{stripped.rstrip(';')}")
    code = "def f(ns):\n" + "\n".join(lines) + "\n"
    scope: dict[str, object] = {}
    exec(code, scope)  # the generated text is ours, built just above
    return scope["f"](ns)  # type: ignore[operator, no-any-return]


BOUNDS = (0.0005, 0.000637, 0.000812, 0.001035, 0.05)


@given(st.integers(min_value=0, max_value=10**11))
def test_generated_bucket_tree_matches_le_semantics(ns: int) -> None:
    assert _run_generated_c(BOUNDS, ns) == bucket_of(BOUNDS, ns)


def test_bucket_bounds_are_inclusive() -> None:
    edges = bounds_ns(BOUNDS)
    for i, edge in enumerate(edges):
        assert _run_generated_c(BOUNDS, edge) == i
        assert _run_generated_c(BOUNDS, edge + 1) == i + 1
    with pytest.raises(ValueError):
        bounds_ns((0.002, 0.001))


def test_send_fallback_is_two_programs_only_without_the_tracepoint() -> None:
    with_tp = {p.role: [f"{c.method} {c.target}" for c in p.candidates] for p in program_specs(send_tracepoint=True)}
    assert with_tp == {
        "send": ["tp_btf sock:sock_send_length", "tracepoint sock:sock_send_length"],
        "recv": ["tp_btf sock:sock_recv_length", "tracepoint sock:sock_recv_length", "kprobe kprobe:tcp_cleanup_rbuf"],
        "retransmit": ["tp_btf tcp:tcp_retransmit_skb", "tracepoint tcp:tcp_retransmit_skb",
                       "kprobe kprobe:tcp_retransmit_skb"],
        "close": ["tp_btf tcp:tcp_destroy_sock", "tracepoint tcp:tcp_destroy_sock",
                  "kprobe kprobe:tcp_v4_destroy_sock"],
    }
    without = {p.role: [c.target for c in p.candidates] for p in program_specs(send_tracepoint=False)}
    assert without["send"] == ["kprobe:tcp_sendmsg"] and without["send_return"] == ["kretprobe:tcp_sendmsg"]
    assert without["recv"][0] == "sock:sock_recv_length"
    only = [c.method for p in program_specs(True, kinds=("kprobe",)) for c in p.candidates]
    assert set(only) == {"kprobe"}
    perf = [c.method for p in program_specs(True, kinds=("tracepoint",)) for c in p.candidates]
    assert set(perf) == {"tracepoint"}


def test_shared_headers_are_pasted_into_the_source() -> None:
    source = build_source('struct tt_stats { u64 x; };\n#include "tcptrace.h"\nint a;\n', (0.001, 0.002))
    assert "static __always_inline u32 latency_bucket(u64 ns)" in source
    assert (HEADER_DIR / "tcptrace.h").read_text() in source
    assert '#include "tcptrace.h"' not in source
    assert source.index("struct tt_stats") < source.index("BPF_HASH(targets")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_accumulator_folds_increases_into_the_current_label() -> None:
    clock = Clock()
    acc = Accumulator(2, clock=clock)
    mapping = {"10.0.0.1": "a"}
    assert acc.fold({"10.0.0.1": (5, 1)}, mapping.__getitem__) == 0
    mapping["10.0.0.1"] = "a+b"
    acc.fold({"10.0.0.1": (8, 1)}, mapping.__getitem__)
    assert acc.totals({"a+b"}, 3600) == {"a": (5, 1), "a+b": (3, 0)}
    # A kernel entry that went backwards was recreated: count it from zero, report it.
    assert acc.fold({"10.0.0.1": (2, 0)}, mapping.__getitem__) == 1
    assert acc.totals({"a+b"}, 3600)["a+b"] == (5, 0)
    # Retired addresses start from zero when they come back.
    acc.forget(["10.0.0.1"])
    acc.fold({"10.0.0.1": (1, 0)}, mapping.__getitem__)
    assert acc.totals({"a+b"}, 3600)["a+b"] == (6, 0)
    # Keys neither current nor recently changed leave the output, values kept.
    clock.now += 7200
    assert acc.totals({"a+b"}, 3600) == {"a+b": (6, 0)}
    mapping["10.0.0.1"] = "a"
    acc.fold({"10.0.0.1": (2, 0)}, mapping.__getitem__)
    assert acc.totals(set(), 3600) == {"a": (6, 1)}
    with pytest.raises(ValueError):
        acc.fold({"10.0.0.1": (1,)}, mapping.__getitem__)


def test_accumulator_ensure_shows_idle_targets() -> None:
    acc = Accumulator(3)
    acc.ensure(["x"])
    assert acc.totals({"x"}, 0) == {"x": (0, 0, 0)}


class _FakeTracer:
    """The kernel side of a TcpTargetCollector: the filter takes every address, stats are what the test sets."""

    max_targets = 1 << 16

    def __init__(self) -> None:
        self.stats: dict[str, tuple[int, ...]] = {}

    def set_targets(self, addresses: Iterable[str], ports: Iterable[int]) -> FilterResult:
        return FilterResult(tuple(addresses), (), ())

    def read_stats(self) -> list[tuple[bytes, bytes]]:
        return [(a.encode(), bytes(v)) for a, v in self.stats.items()]

    def new_clamped(self) -> int:
        return 0


class _Volumes(TcpTargetCollector):
    """A TcpTargetCollector over 10,000 NFS servers, one volume each, with a trivial stats format."""

    bounds = (0.001,)
    width = 2
    error_metric = "x_collection_errors_total"
    body = ""

    def wanted(self) -> tuple[dict[str, Hashable], tuple[int, ...]]:
        return {f"10.0.{i // 256}.{i % 256}": f"vol-{i}" for i in range(10_000)}, (2049,)

    def defines(self, capacity: int) -> dict[str, int]:
        return {}

    def parse(self, key: bytes, value: bytes) -> tuple[str, tuple[int, ...]]:
        return key.decode(), tuple(value)

    def fallback_key(self, address: str) -> Hashable:
        return "unknown"

    def samples(self, totals: dict[Hashable, tuple[int, ...]]) -> Iterable[Sample]:
        for key, (requests, retransmits) in totals.items():
            yield Sample("x_requests_total", (str(key),), float(requests))
            yield Sample("x_retransmits_total", (str(key),), float(retransmits))


@pytest.mark.parametrize("idle_series", [False, True])
def test_idle_targets_have_no_series_unless_asked_for(idle_series: bool) -> None:
    """The trial: 10,000 NFS servers gave 260k nfs_latency series, 26 per volume without any traffic."""
    options = SimpleNamespace(series_retention=3600.0, latency_clamp=60.0, inflight_capacity=16384,
                              idle_series=idle_series)
    ctx = SimpleNamespace(options=options, log=logging.getLogger("test.tcptrace"), errors=None, plugin="x",
                          details={})
    collector = _Volumes(ctx)  # type: ignore[arg-type]
    tracer = _FakeTracer()
    collector._tracer = tracer  # type: ignore[assignment]
    collector._apply(*collector.wanted())
    samples = collector.collect()
    assert len(samples) == (20_000 if idle_series else 0)
    tracer.stats["10.0.0.7"] = (3, 1)
    samples = collector.collect()
    assert Sample("x_requests_total", ("vol-7",), 3.0) in samples
    assert len(samples) == (20_000 if idle_series else 2)
    # A target that had traffic keeps its series (a counter does not vanish) while it stays a target.
    tracer.stats["10.0.0.7"] = (3, 1)
    assert Sample("x_requests_total", ("vol-7",), 3.0) in collector.collect()
