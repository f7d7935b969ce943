"""Volume ids of NFS mounts: the ``volume_id`` label shared by the NFS plugins.

The seed derived the id from the mount's device: everything after
``/volumes/`` (``nfs.example:/volumes/<uuid>`` -> ``<uuid>``). We keep that as
the default but make it a regex with a named group ``volume_id``, so sites
with other export layouts can say where their id lives, and
``nfs_enable_volume_id = false`` switches the label off as in the seed.

Both the mountstats plugin and the eBPF latency plugin call these functions,
so one device always yields one id no matter which plugin looks at it.
"""

from __future__ import annotations

import re

VOLUME_ID_GROUP = "volume_id"
#: The seed's rule: everything after ``/volumes/`` in the device.
DEFAULT_VOLUME_PATTERN = r"/volumes/(?P<volume_id>.+)$"


def compile_volume_pattern(text: str) -> re.Pattern[str]:
    """Compile a volume-id regex, insisting on the named group (ValueError otherwise)."""
    pattern = re.compile(text)
    if VOLUME_ID_GROUP not in pattern.groupindex:
        raise ValueError(f"expected a regular expression with a named group (?P<{VOLUME_ID_GROUP}>...)")
    return pattern


def volume_pattern(enabled: bool, text: str) -> re.Pattern[str] | None:
    """The compiled volume-id pattern, or None when volume ids are disabled."""
    if not enabled:
        return None
    return _cached_compile(text or DEFAULT_VOLUME_PATTERN)


_COMPILED: dict[str, re.Pattern[str]] = {}


def _cached_compile(text: str) -> re.Pattern[str]:
    # Plugins may call volume_pattern() on every mount refresh; compiling once
    # per distinct text keeps that free without an unbounded cache (settings
    # hold one pattern).
    pattern = _COMPILED.get(text)
    if pattern is None:
        pattern = compile_volume_pattern(text)
        if len(_COMPILED) < 16:
            _COMPILED[text] = pattern
    return pattern


def volume_id(device: str, pattern: re.Pattern[str] | None) -> str | None:
    """The volume id of an NFS ``device`` (``server:/export``), or None.

    None means "no id": the pattern is disabled, does not match, or the group
    matched an empty string (an empty label value is the same as no label in
    Prometheus, so it must not be emitted as an id).
    """
    if pattern is None:
        return None
    match = pattern.search(device)
    if match is None:
        return None
    value = match.group(VOLUME_ID_GROUP)
    return value or None
