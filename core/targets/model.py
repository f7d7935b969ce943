"""What discovery hands to plugins: immutable records, safe to share across threads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class NfsServer:
    """One NFS server address and everything known about it.

    ``address`` is normalized IP text (``ipaddress`` form, so one server has
    exactly one spelling and label values stay stable).
    """

    address: str
    family: int
    ports: tuple[int, ...]
    #: Volume ids of mounts that reach this server (empty when none/unknown).
    volumes: tuple[str, ...] = ()
    #: Host names the address was resolved from (empty for IP literals).
    names: tuple[str, ...] = ()


@dataclass(frozen=True, order=True)
class NfsMount:
    """One NFS mount of the host and the server addresses it uses."""

    device: str
    mount_point: str
    #: The server part of the device as written (host name or IP literal).
    server: str
    addresses: tuple[str, ...]
    volume_id: str | None
    fstype: str = "nfs"


@dataclass(frozen=True, order=True)
class ObjstoreEndpoint:
    """One object-store address."""

    address: str
    family: int
    ports: tuple[int, ...]
    #: The FQDN the address came from, or "" when configured as a bare IP.
    fqdn: str = ""
