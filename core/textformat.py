"""The exposition written straight from validated samples: Prometheus text 0.0.4 and OpenMetrics 1.0.

Building prometheus_client families (one dict per sample) and running its
generator was three quarters of a scrape with tens of thousands of
mountstats series. This writes the same bytes directly, in either format,
from the one model every metric goes through (a MetricSpec and its
samples); property tests check both against prometheus_client's generators
for the same data.

The two formats differ only in the family lines: OpenMetrics names a
counter family without ``_total``, calls an untyped family ``unknown``,
also escapes double quotes in help texts, and ends with ``# EOF``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from crusoe_metrics_exporter.contract import HistogramValue, MetricSpec, Sample
from crusoe_metrics_exporter.naming import PREFIX


def go_float(v: float) -> str:
    """``v`` as Prometheus expositions spell it: Go's shortest 'g' format (what prometheus_client writes).

    Go switches to an exponent from seven integer digits on (``1.234567e+06``)
    where Python's repr() does from seventeen; ``+Inf``, ``-Inf``, ``NaN``.
    """
    v = float(v)
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if v != v:  # noqa: PLR0124 - NaN is the value unequal to itself
        return "NaN"
    s = repr(v)
    dot = s.find(".")
    if v > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


#: Below 2**53 every int is exactly a float, and repr() of that float is its decimal digits plus ".0".
_EXACT_INT = 2**53
#: Go's exponent suffix for an int of n decimal digits (n from 7 up to 16, the ints below 2**53 past a million).
_EXPONENT = tuple(f"e+{n - 1:02d}" for n in range(17))


def _value(v: float) -> str:
    # repr() is what go_float returns for every finite value below 1e6.
    if type(v) is float and -math.inf < v < 1e6:
        return repr(v)
    if type(v) is int:
        if -1_000_000 < v < 1_000_000:
            return repr(float(v))
        if 0 < v < _EXACT_INT:
            return _large_int(v)
    return go_float(v)


def _large_int(v: int) -> str:
    """go_float of an int from a million up to 2**53 (bytes, ticks), straight from its digits."""
    digits = str(v)
    significant = digits.rstrip("0")
    if len(significant) == 1:
        return significant + _EXPONENT[len(digits)]
    return f"{significant[0]}.{significant[1:]}{_EXPONENT[len(digits)]}"


def _escape_label(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_help_openmetrics(text: str) -> str:
    return _escape_help(text).replace('"', '\\"')


def _label_order(names: Sequence[str]) -> list[int]:
    """Positions of the label values in the sorted-by-name order the format uses."""
    return sorted(range(len(names)), key=lambda i: names[i])


#: label names -> label values -> the rendered ``{...} ``.
LabelCache = dict[tuple[str, ...], dict[tuple[str, ...], str]]


class LabelTexts:
    """The rendered ``{...} `` of each label set, carried from one rendering to the next.

    A host's series hardly change between scrapes, and writing a label set
    (sorting, escaping, quoting) costs more than writing the sample line
    that uses it: each rendering looks its label sets up in what the last
    one wrote and writes only the new ones. Only the label sets the last
    rendering used are kept, so memory follows the live series, and a
    vanished volume's labels go with the next scrape. Renderings may run at
    once (text and OpenMetrics on two threads): each reads the last
    finished generation and fills a new one of its own.
    """

    def __init__(self) -> None:
        self.last: LabelCache = {}


def _label_text(values: tuple[str, ...], keys: list[str], order: list[int]) -> str:
    if any("\\" in v or "\n" in v or '"' in v for v in values):
        values = tuple(_escape_label(v) for v in values)
    return "{" + ",".join([keys[j] + values[i] + '"' for j, i in enumerate(order)]) + "} "


def text_header(spec: MetricSpec) -> str:
    """The HELP and TYPE lines of a family in the text format."""
    full = PREFIX + spec.name
    # Only a legacy_name counter lacks _total; a counter family would force
    # the suffix on its samples, so it is exposed untyped under its name.
    kind = "untyped" if spec.type == "counter" and not spec.name.endswith("_total") else spec.type
    return f"# HELP {full} {_escape_help(spec.help)}\n# TYPE {full} {kind}\n"


def openmetrics_family(spec: MetricSpec) -> str:
    """The family name OpenMetrics gives a declaration (a counter's without ``_total``)."""
    full = PREFIX + spec.name
    if spec.type == "counter" and full.endswith("_total"):
        return full.removesuffix("_total")
    return full


def openmetrics_header(spec: MetricSpec, clash: bool) -> str:
    """The HELP and TYPE lines in OpenMetrics.

    ``clash``: the family name a counter would get is taken by another
    family (the Go exporter's ``x_seconds_total`` counter next to the
    ``x_seconds`` histogram); two families of one name are an invalid
    exposition, so the counter is exposed ``unknown`` under its full name,
    its series unchanged.
    """
    full = PREFIX + spec.name
    if spec.type == "counter" and full.endswith("_total") and not clash:
        family, kind = full.removesuffix("_total"), "counter"
    elif spec.type == "counter":
        family, kind = full, "unknown"
    else:
        family, kind = full, spec.type
    return f"# HELP {family} {_escape_help_openmetrics(spec.help)}\n# TYPE {family} {kind}\n"


def render_group(spec: MetricSpec, samples: Sequence[Sample], out: list[str], cache: LabelCache, *,
                 header: str | None = None, earlier: LabelCache | None = None) -> None:
    """Append the lines of one family to ``out`` (``header``: its family lines, text format by default).

    ``cache`` maps label names and values to the rendered ``{...} ``: the
    per-lane mountstats metrics share their label sets, so most are reused;
    one missing there is taken from ``earlier`` (the last rendering's, see
    :class:`LabelTexts`) before it is written anew.
    """
    full = PREFIX + spec.name
    out.append(text_header(spec) if header is None else header)
    names = spec.labels
    order = _label_order(names)
    if spec.type == "histogram":
        _render_histogram(full, spec, samples, order, out)
        return
    add = out.append
    if not names:
        for s in samples:
            add(f"{full} {_value(s.value)}\n")  # type: ignore[arg-type]
        return
    keys = [f'{names[i]}="' for i in order]
    # One lookup table per set of label names, so the key is the values tuple itself.
    rendered_labels = cache.get(names)
    if rendered_labels is None:
        rendered_labels = cache[names] = {}
    known = rendered_labels.get
    before = (earlier.get(names) if earlier else None) or {}
    for _, labels, value in samples:
        rendered = known(labels)
        if rendered is None:
            rendered = before.get(labels)
            if rendered is None:
                rendered = _label_text(labels, keys, order)
            rendered_labels[labels] = rendered
        # The common cases of _value, without the call: counters below a million are
        # their digits plus ".0" (what repr() of the equal float spells).
        value_type: type = type(value)  # plugins pass ints for counters (Sample.value says float)
        if value_type is int:
            if -1_000_000 < value < 1_000_000:  # type: ignore[operator]
                add(f"{full}{rendered}{value}.0\n")
            elif 0 < value < _EXACT_INT:  # type: ignore[operator]
                add(f"{full}{rendered}{_large_int(value)}\n")  # type: ignore[arg-type]
            else:
                add(f"{full}{rendered}{_value(value)}\n")  # type: ignore[arg-type]
        elif value_type is float and -math.inf < value < 1e6:  # type: ignore[operator]
            add(f"{full}{rendered}{value!r}\n")
        else:
            add(f"{full}{rendered}{_value(value)}\n")  # type: ignore[arg-type]


def _render_histogram(full: str, spec: MetricSpec, samples: Sequence[Sample], order: list[int],
                      out: list[str]) -> None:
    names = spec.labels
    bounds = [go_float(b) for b in spec.buckets] + ["+Inf"]
    # "le" takes its sorted place among the plugin's labels.
    le_at = sum(1 for n in names if n < "le")
    add = out.append
    for s in samples:
        value = s.value
        assert isinstance(value, HistogramValue)
        parts = [f'{names[i]}="{_escape_label(s.labels[i])}"' for i in order]
        before = ",".join(parts[:le_at])
        after = ",".join(parts[le_at:])
        head = f"{full}_bucket{{{before}{',' if before else ''}le=\""
        tail = f"\"{',' if after else ''}{after}}} "
        running = 0
        for bound, count in zip(bounds, value.counts, strict=True):
            running += count
            add(f"{head}{bound}{tail}{_value(float(running))}\n")
        plain = "{" + ",".join(parts) + "}" if parts else ""
        add(f"{full}_count{plain} {_value(float(running))}\n")
        add(f"{full}_sum{plain} {_value(float(value.sum))}\n")


def render_groups(groups: Iterable[tuple[MetricSpec, Sequence[Sample]]], texts: LabelTexts | None = None) -> str:
    """The text format (0.0.4) of ``groups`` (``texts``: label sets carried over between renderings)."""
    out: list[str] = []
    cache: LabelCache = {}
    earlier = texts.last if texts is not None else None
    for spec, samples in groups:
        render_group(spec, samples, out, cache, earlier=earlier)
    if texts is not None:
        texts.last = cache
    return "".join(out)


def render_groups_openmetrics(groups: Sequence[tuple[MetricSpec, Sequence[Sample]]],
                              texts: LabelTexts | None = None) -> str:
    """OpenMetrics 1.0 of ``groups``: the same samples, OpenMetrics family lines, ``# EOF``."""
    families = Counter(openmetrics_family(spec) for spec, _ in groups)
    out: list[str] = []
    cache: LabelCache = {}
    earlier = texts.last if texts is not None else None
    for spec, samples in groups:
        header = openmetrics_header(spec, families[openmetrics_family(spec)] > 1)
        render_group(spec, samples, out, cache, header=header, earlier=earlier)
    if texts is not None:
        texts.last = cache
    out.append("# EOF\n")
    return "".join(out)
