"""Reads mountstats once per scrape and turns the parse into samples."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from crusoe_metrics_exporter.plugins.nfs_stats import NfsStatsOptions
from crusoe_metrics_exporter.plugins.nfs_stats import metrics as m
from crusoe_metrics_exporter.plugins.nfs_stats.parser import (
    EVENTS,
    LANE_BACKLOG,
    LANE_BAD_XIDS,
    LANE_CONNECT,
    LANE_IDLE,
    LANE_MAX_SLOTS,
    LANE_RECVS,
    LANE_SENDS,
    OP_BYTES_RECV,
    OP_BYTES_SENT,
    OP_COUNT,
    OP_EXE_MS,
    OP_RTT_MS,
    OP_TIMEOUTS,
    STATS,
    XPRT,
    ParseOptions,
    ParseResult,
    operation_keys,
    parse,
)
from crusoe_metrics_exporter.sdk import PluginContext, Sample, read_limited

ERROR_METRIC = {STATS: m.STATS_ERRORS, XPRT: m.XPRT_ERRORS, EVENTS: m.EVENTS_ERRORS}

_OP_FIELDS = (
    (m.RPC_COUNT, OP_COUNT),
    (m.RPC_TIMEOUTS, OP_TIMEOUTS),
    (m.RPC_RTT_MS, OP_RTT_MS),
    (m.RPC_EXE_MS, OP_EXE_MS),
    (m.BYTES_SENT, OP_BYTES_SENT),
    (m.BYTES_RECV, OP_BYTES_RECV),
)
_LANE_FIELDS = (
    (m.XPRT_SENDS, LANE_SENDS),
    (m.XPRT_RECVS, LANE_RECVS),
    (m.XPRT_CONNECTS, LANE_CONNECT),
    (m.XPRT_BAD_XIDS, LANE_BAD_XIDS),
    (m.XPRT_MAX_SLOTS, LANE_MAX_SLOTS),
    (m.XPRT_IDLE, LANE_IDLE),
    (m.XPRT_BACKLOG, LANE_BACKLOG),
)
_LANE_LABELS = tuple(str(i) for i in range(64))
# Sample is a NamedTuple; building it through tuple.__new__ skips the
# generated __new__ and halves the cost of the tens of thousands of samples a
# host with many nconnect mounts produces.
_new = tuple.__new__


def mountstats_path(ctx: PluginContext[NfsStatsOptions]) -> Path:
    configured = ctx.options.mountstats_path
    return Path(configured) if configured else ctx.host_proc / "1" / "mountstats"


class ReadFailed(Exception):
    """The file could not be read at all."""


def read_mountstats(path: Path, limit: int) -> tuple[str, bool]:
    """The text of ``path`` cut to whole mount blocks within ``limit`` bytes; (text, truncated)."""
    try:
        content = read_limited(path, limit, record_start=b"\ndevice ")
    except OSError as exc:
        raise ReadFailed(f"{path}: {exc.strerror or type(exc).__name__}") from None
    return content.data.decode("utf-8", "replace"), content.truncated


def to_samples(result: ParseResult) -> list[Sample]:
    """Flatten a parse into samples; fields a transport lacks are left out."""
    out: list[Sample] = []
    add = out.append
    for volume, stats in result.volumes.items():
        vol = (volume,)
        for op, values in stats.ops.items():
            labels = (volume, op)
            for name, i in _OP_FIELDS:
                add(_new(Sample, (name, labels, values[i])))
        if stats.backlog is not None:
            add(_new(Sample, (m.RPC_BACKLOG, vol, stats.backlog)))
        for idx, lane in stats.lanes.items():
            labels = (volume, _LANE_LABELS[idx] if idx < 64 else str(idx))
            for name, i in _LANE_FIELDS:
                value = lane[i]
                if value is not None:
                    add(_new(Sample, (name, labels, value)))
        if stats.events is not None:
            for name, value in zip(m.EVENT_METRICS, stats.events, strict=True):
                add(_new(Sample, (name, vol, value)))
        if stats.bytes is not None:
            for name, value in zip(m.BYTES_METRICS, stats.bytes, strict=True):
                add(_new(Sample, (name, vol, value)))
        if stats.age is not None:
            add(_new(Sample, (m.MOUNT_AGE, vol, stats.age)))
    return out


class NfsStatsCollector:
    def __init__(self, ctx: PluginContext[NfsStatsOptions]) -> None:
        self._ctx = ctx
        self._path = mountstats_path(ctx)
        self._limit = ctx.options.max_file_size
        self._options = ParseOptions(
            pattern=ctx.targets.volume_pattern,
            operations=operation_keys(list(ctx.options.operations)),
            label_unmatched_by_export=ctx.options.unmatched_mounts == "export",
        )
        self._last_problem = ""

    @property
    def path(self) -> Path:
        return self._path

    def start(self) -> None:
        # Nothing to set up: the file is read fresh on every scrape.
        pass

    def stop(self) -> None:
        pass

    def collect(self) -> Iterable[Sample]:
        try:
            text, truncated = read_mountstats(self._path, self._limit)
        except ReadFailed as exc:
            # Each of the seed's three collectors reported an unreadable file
            # on its own counter; dashboards may watch any of them.
            for metric in ERROR_METRIC.values():
                self._ctx.errors.inc(metric)
            self._note(f"cannot read mountstats: {exc}")
            return []
        result = parse(text, self._options)
        if truncated:
            result.error(STATS, f"{self._path} is larger than max_file_size={self._limit}; the rest was ignored")
        for kind, count in result.errors.items():
            if count:
                self._ctx.errors.inc(ERROR_METRIC[kind], count)
        self._note("; ".join(result.problems))
        return to_samples(result)

    def _note(self, problem: str) -> None:
        # Log when the kind of trouble changes, not on every scrape: a file
        # that stays malformed would otherwise flood the log.
        if problem and problem != self._last_problem:
            self._ctx.log.warning("nfs_stats: %s", problem)
        elif not problem and self._last_problem:
            self._ctx.log.info("nfs_stats: mountstats parses cleanly again")
        self._last_problem = problem
