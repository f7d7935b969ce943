"""What the shared services offer plugins, as Protocols.

``ctx.targets`` and ``ctx.ebpf`` are typed with these, so a plugin is
checked against the interface rather than an implementation, and a test
can hand a plugin any object that has these members (the testing kit's
``StaticTargets``, for instance). The implementations register themselves
as shared services through the ``crusoe_metrics_exporter.services`` entry
points, the way a third-party service would.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from crusoe_metrics_exporter.contract import Support
    from crusoe_metrics_exporter.ebpf.runtime import LoadedBpf
    from crusoe_metrics_exporter.ebpf.spec import BpfSpec
    from crusoe_metrics_exporter.targets.model import NfsMount, NfsServer, ObjstoreEndpoint


@runtime_checkable
class TargetsService(Protocol):
    """Where the NFS servers and object-store endpoints are (``[targets]`` settings).

    Discovery runs at the first call of an accessor (or ``start``) and then on
    a background timer; accessors return the last snapshot and never block on
    DNS after the first call. Call them from ``start``, not only from a scrape.
    """

    @property
    def nfs_ports(self) -> tuple[int, ...]:
        """The configured NFS server ports."""

    @property
    def objstore_ports(self) -> tuple[int, ...]:
        """The configured object-store ports."""

    @property
    def objstore_configured(self) -> bool:
        """Whether an object-store endpoint (host name or IPs) is configured at all."""

    @property
    def objstore_fqdn(self) -> str:
        """The configured object-store host name; empty when none or an IP literal."""

    @property
    def volume_pattern(self) -> re.Pattern[str] | None:
        """The pattern taking the volume id from an NFS device, or None when volume ids are off."""

    def start(self) -> None:
        """Discover once now (DNS included), then keep refreshing in the background. Idempotent."""

    def nfs_servers(self) -> tuple[NfsServer, ...]: ...

    def nfs_mounts(self) -> tuple[NfsMount, ...]: ...

    def objstore_endpoints(self) -> tuple[ObjstoreEndpoint, ...]: ...

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the discovery thread whenever the targets change."""

    def unsubscribe(self, callback: Callable[[], None]) -> None: ...


@runtime_checkable
class EbpfRuntime(Protocol):
    """Loads a plugin's eBPF object (compiled in a helper process) and tracks what it costs."""

    def support(self, spec: BpfSpec) -> Support:
        """Whether this host can run ``spec``: privileges, bcc, headers, tracefs, an attach point per program."""

    def load(self, plugin: str, spec: BpfSpec, *, attach: bool = True) -> LoadedBpf:
        """Compile, load and attach ``spec``; raises ``BpfUnavailable`` with one line."""

    def release(self, plugin: str, loaded: LoadedBpf) -> None:
        """Detach and close ``loaded`` (call it from ``stop``)."""
