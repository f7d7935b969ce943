"""TargetDirectory over real mounts files, with an injected resolver where DNS is needed."""

from __future__ import annotations

import dataclasses
import re
import shutil
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from helpers.waiting import wait_until

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.exposition import Scrape, render
from crusoe_metrics_exporter.runner import SampleGate
from crusoe_metrics_exporter.settings import Overrides
from crusoe_metrics_exporter.targets.directory import TargetDirectory
from crusoe_metrics_exporter.targets.dns import DNS_METRICS, MAX_DNS_HOSTS, Resolver, system_resolver
from crusoe_metrics_exporter.targets.service import TargetOptions
from crusoe_metrics_exporter.testing import options_for

DATA = Path(__file__).parent / "data"


class FakeDns:
    """A resolver hook: a table of names, failures on demand, a call log."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = dict(table)
        self.calls: list[str] = []
        self.failing: set[str] = set()

    def __call__(self, name: str) -> Sequence[str]:
        self.calls.append(name)
        if name in self.failing or name not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[name])


@dataclass(frozen=True)
class Setup:
    """A /proc tree and the [targets] options resolved from environment variables, as the exporter would."""

    proc: Path
    options: TargetOptions


def make_settings(tmp_path: Path, mounts: str | None = None, values: dict[str, str] | None = None,
                  **env: str) -> Setup:
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True, exist_ok=True)
    if mounts is not None:
        (proc / "1" / "mounts").write_text(mounts)
    return Setup(proc, options_for(TargetOptions, values, env))


def fast_timers(setup: Setup, **intervals: float) -> Setup:
    """Refresh timers shorter than the 1s the settings accept, so a test sees several refreshes quickly."""
    return Setup(setup.proc, dataclasses.replace(setup.options, **intervals))  # type: ignore[arg-type]


def mounts_path(setup: Setup) -> Path:
    return setup.proc / "1" / "mounts"


def new_directory(setup: Setup, resolver: Resolver | None = None) -> TargetDirectory:
    return TargetDirectory(setup.options, setup.proc, resolver=resolver)


def dns_exposition(directory: TargetDirectory) -> bytes:
    """The DNS metrics as the exporter serves them: validated against their declarations, rendered."""
    return render(Scrape(SampleGate("targets", DNS_METRICS).groups(directory.collect())))


def dns_value(directory: TargetDirectory, metric: str, kind: str, host: str) -> float | None:
    text = dns_exposition(directory).decode()
    m = re.search(rf'^crusoe_vm_{metric}{{host="{re.escape(host)}",type="{kind}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def test_host_mounts_fixture(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    settings = make_settings(tmp_path, (DATA / "host_mounts.txt").read_text(), NFS_TARGET_PORTS="2049,20049")
    dns = FakeDns({"nfs.example.test": ["172.27.255.32", "172.27.255.33", "fd00::32"]})
    d = new_directory(settings, resolver=dns)
    directories.append(d)

    servers = {s.address: s for s in d.nfs_servers()}
    assert list(servers) == [
        "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.9.9.9",
        "172.27.255.32", "172.27.255.33", "fd00::10", "fd00::32",
    ]
    shared = servers["172.27.255.32"]
    assert shared.family == 4 and shared.ports == (2049, 20049)
    assert shared.names == ("nfs.example.test",)
    # Both volumes reach the shared server: no "last mount wins".
    assert shared.volumes == ("11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000")
    assert servers["10.0.0.3"].volumes == ("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",)
    assert servers["10.0.0.3"].names == ()
    assert servers["fd00::10"].family == 6 and servers["fd00::10"].volumes == ()
    # The name was looked up once per refresh although two mounts use it.
    assert dns.calls == ["nfs.example.test"]

    mounts = {m.mount_point: m for m in d.nfs_mounts()}
    assert mounts["/mnt/data one"].server == "nfs.example.test"
    assert mounts["/mnt/data one"].addresses == ("172.27.255.32", "172.27.255.33", "fd00::32")
    assert mounts["/mnt/range"].addresses == ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
    assert mounts["/home/shared"].server == "fd00::10" and mounts["/home/shared"].volume_id is None
    assert mounts["/scratch"].addresses == ("10.9.9.9",)  # the invalid remoteports part is ignored

    assert dns_value(d, "dns_resolve_total", "nfs", "nfs.example.test") == 1.0
    text = dns_exposition(d).decode()
    assert 'host="10.' not in text and 'host="fd00' not in text and 'host="172.' not in text


def test_volume_ids_can_be_disabled(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    settings = make_settings(tmp_path, (DATA / "host_mounts.txt").read_text(), NFS_ENABLE_VOLUME_ID="false")
    d = new_directory(settings, resolver=FakeDns({"nfs.example.test": ["172.27.255.32"]}))
    directories.append(d)
    assert all(s.volumes == () for s in d.nfs_servers())
    assert all(m.volume_id is None for m in d.nfs_mounts())


def _mountcmd_to_proc(text: str) -> str:
    """mount(8) lines ("dev on /mp type fs (opts)") in /proc/mounts form."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\S+) on (\S+) type (\S+) \((.*)\)$", line)
        if m:
            out.append(f"{m.group(1)} {m.group(2)} {m.group(3)} {m.group(4)} 0 0")
    return "\n".join(out) + "\n"


def test_seed_mixed_mounts_every_volume_kept(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    text = _mountcmd_to_proc((DATA / "seed_mountcmd_mixed.txt").read_text())
    settings = make_settings(tmp_path, text)
    dns = FakeDns({"nfs.crusoecloudcompute.com": ["172.27.255.32"], "nfs.provider2.com": ["10.0.1.100"]})
    d = new_directory(settings, resolver=dns)
    directories.append(d)
    servers = {s.address: s for s in d.nfs_servers()}
    assert set(servers) == {"172.27.255.32", "10.0.1.100"}
    assert servers["172.27.255.32"].volumes == (
        "47d32f7f-1687-42c8-b6fd-67b3a2263c8e",
        "89e45b2a-2798-43d7-a9ce-123456789abc",
        "aa11bb22-33cc-44dd-55ee-6677889900ff",
    )
    assert sorted(dns.calls) == ["nfs.crusoecloudcompute.com", "nfs.provider2.com"]


def test_seed_ip_based_and_multi_addr(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    text = _mountcmd_to_proc((DATA / "seed_mountcmd_ip_based.txt").read_text())
    text += _mountcmd_to_proc((DATA / "seed_mountcmd_multi_ip.txt").read_text())
    dns = FakeDns({"nfs.crusoecloudcompute.com": ["172.27.255.32"]})
    d = new_directory(make_settings(tmp_path, text), resolver=dns)
    directories.append(d)
    addresses = [s.address for s in d.nfs_servers()]
    assert addresses == ["10.0.1.100", "172.27.255.32", "172.27.255.33", "172.27.255.34", "192.168.1.50"]
    assert dns.calls == ["nfs.crusoecloudcompute.com"]


def test_configured_servers_names_and_literals(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    settings = make_settings(tmp_path, "", NFS_SERVER_IPS="10.1.1.1, filer.test ,FD00::0:5")
    dns = FakeDns({"filer.test": ["10.1.1.2", "10.1.1.1"]})
    d = new_directory(settings, resolver=dns)
    directories.append(d)
    servers = {s.address: s for s in d.nfs_servers()}
    assert list(servers) == ["10.1.1.1", "10.1.1.2", "fd00::5"]
    assert servers["10.1.1.1"].names == ("filer.test",)
    assert servers["fd00::5"].family == 6
    assert dns.calls == ["filer.test"]  # literals never reach the resolver
    assert d.nfs_mounts() == ()


def test_real_system_resolver_resolves_localhost(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    assert "127.0.0.1" in system_resolver("localhost")
    d = new_directory(make_settings(tmp_path, "", NFS_SERVER_IPS="localhost"))
    directories.append(d)
    assert "127.0.0.1" in [s.address for s in d.nfs_servers()]
    assert dns_value(d, "dns_resolve_successes_total", "nfs", "localhost") == 1.0


def test_resolution_failure_keeps_last_good_and_counts(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    settings = make_settings(tmp_path, "", NFS_SERVER_IPS="filer.test", OBJSTORE_ENDPOINT_FQDN="object.test")
    dns = FakeDns({"filer.test": ["10.1.1.2"], "object.test": ["10.2.0.1", "fd00::2:1"]})
    d = new_directory(settings, resolver=dns)
    directories.append(d)
    assert [s.address for s in d.nfs_servers()] == ["10.1.1.2"]
    assert [e.address for e in d.objstore_endpoints()] == ["10.2.0.1", "fd00::2:1"]

    dns.failing = {"filer.test", "object.test"}
    assert d.refresh_now() is False
    assert [s.address for s in d.nfs_servers()] == ["10.1.1.2"]
    assert [e.address for e in d.objstore_endpoints()] == ["10.2.0.1", "fd00::2:1"]
    assert dns_value(d, "dns_resolve_total", "nfs", "filer.test") == 2.0
    assert dns_value(d, "dns_resolve_failures_total", "nfs", "filer.test") == 1.0
    assert dns_value(d, "dns_resolve_failures_total", "objectstore", "object.test") == 1.0
    assert dns_value(d, "dns_resolve_latency_seconds_count", "objectstore", "object.test") == 2.0

    dns.failing = set()
    dns.table["object.test"] = ["10.2.0.9"]
    assert d.refresh_now() is True
    assert [e.address for e in d.objstore_endpoints()] == ["10.2.0.9"]


def test_name_never_resolved_gives_no_targets(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    settings = make_settings(tmp_path, "", NFS_SERVER_IPS="missing.test", OBJSTORE_ENDPOINT_FQDN="nowhere.test")
    d = new_directory(settings, resolver=FakeDns({}))
    directories.append(d)
    assert d.nfs_servers() == ()
    assert d.objstore_endpoints() == ()
    assert d.objstore_configured and d.objstore_fqdn == "nowhere.test"
    assert new_directory(make_settings(tmp_path, "", OBJSTORE_ENDPOINT_FQDN=" Object.TEST. ")).objstore_fqdn == (
        "object.test"
    )


def test_objstore_fqdn_a_and_aaaa_with_ports(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    settings = make_settings(tmp_path, "", OBJSTORE_ENDPOINT_FQDN="Object.Test.", OBJSTORE_ENDPOINT_PORT="443",
                             OBJSTORE_ENDPOINT_IPS="10.9.9.9")
    d = new_directory(settings, resolver=FakeDns({"object.test": ["fd00::1", "10.2.0.1"]}))
    directories.append(d)
    eps = d.objstore_endpoints()
    assert [(e.address, e.family, e.ports, e.fqdn) for e in eps] == [
        ("10.2.0.1", 4, (443,), "object.test"),
        ("fd00::1", 6, (443,), "object.test"),
    ]


def test_objstore_ips_without_fqdn(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    # An address that is not an IP stops start-up (tests/test_settings.py); the rest are endpoints.
    settings = make_settings(tmp_path, "", OBJSTORE_ENDPOINT_IPS="10.2.0.1, ::1")
    dns = FakeDns({})
    d = new_directory(settings, resolver=dns)
    directories.append(d)
    assert [(e.address, e.ports, e.fqdn) for e in d.objstore_endpoints()] == [
        ("10.2.0.1", (443, 80), ""),
        ("::1", (443, 80), ""),
    ]
    assert d.objstore_configured and d.objstore_fqdn == ""
    assert dns.calls == []
    assert d.collect() == []


def test_nothing_configured(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    d = new_directory(make_settings(tmp_path, None))  # no mounts file at all
    directories.append(d)
    assert d.nfs_servers() == () and d.objstore_endpoints() == ()
    assert not d.objstore_configured


def test_background_refresh_notifies_subscribers(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    settings = fast_timers(make_settings(tmp_path, "10.0.0.1:/a /a nfs rw,addr=10.0.0.1 0 0\n"),
                           nfs_mount_refresh_interval=0.1)
    d = new_directory(settings, resolver=FakeDns({}))
    directories.append(d)
    changed = threading.Event()
    threads: list[str] = []

    def on_change() -> None:
        threads.append(threading.current_thread().name)
        changed.set()

    def broken_subscriber() -> None:
        raise RuntimeError("subscriber bug")

    d.subscribe(broken_subscriber)
    d.subscribe(on_change)
    assert [s.address for s in d.nfs_servers()] == ["10.0.0.1"]
    # The first discovery is a change too (from nothing), reported on the caller's thread.
    assert changed.is_set() and threads == ["MainThread"]
    changed.clear()
    threads.clear()
    time.sleep(0.3)
    assert not changed.is_set()  # unchanged mounts: no callback

    mounts_path(settings).write_text("10.0.0.1:/a /a nfs rw 0 0\n[fd00::7]:/b /b nfs4 rw 0 0\n")
    assert changed.wait(3.0)
    assert threads[0] == "targets-refresh"
    assert [s.address for s in d.nfs_servers()] == ["10.0.0.1", "fd00::7"]


def test_unreadable_mounts_keep_last_good(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    settings = make_settings(tmp_path, "10.0.0.1:/a /a nfs rw 0 0\n")
    d = new_directory(settings, resolver=FakeDns({}))
    directories.append(d)
    assert len(d.nfs_mounts()) == 1
    shutil.rmtree(mounts_path(settings).parent)
    assert d.refresh_now() is False
    assert [m.mount_point for m in d.nfs_mounts()] == ["/a"]


def test_objstore_re_resolved_on_timer(tmp_path: Path) -> None:
    settings = fast_timers(make_settings(tmp_path, OBJSTORE_ENDPOINT_FQDN="object.test"), objstore_refresh_interval=0.1)
    dns = FakeDns({"object.test": ["10.2.0.1"]})
    d = new_directory(settings, resolver=dns)
    try:
        assert [e.address for e in d.objstore_endpoints()] == ["10.2.0.1"]
        dns.table["object.test"] = ["10.2.0.1", "fd00::9"]
        assert wait_until(lambda: len(d.objstore_endpoints()) == 2)
    finally:
        d.stop()
    assert not d._thread or not d._thread.is_alive()


def test_dns_host_labels_are_capped(tmp_path: Path, directories: list[TargetDirectory]) -> None:
    names = [f"filer{i}.test" for i in range(MAX_DNS_HOSTS + 5)]
    settings = make_settings(tmp_path, "", NFS_SERVER_IPS=",".join(names))
    d = new_directory(settings, resolver=FakeDns({}))
    directories.append(d)
    d.nfs_servers()
    text = dns_exposition(d).decode()
    hosts = set(re.findall(r'^crusoe_vm_dns_resolve_total\{host="([^"]+)"', text, re.M))
    assert len(hosts) == MAX_DNS_HOSTS + 1 and "other" in hosts
    assert dns_value(d, "dns_resolve_total", "nfs", "other") == 5.0


def test_registered_as_a_shared_service_through_its_entry_point(tmp_path: Path) -> None:
    setup = make_settings(tmp_path, "")
    exporter = Exporter.from_environment(None, Overrides({}), {"HOST_PROC_PATH": str(setup.proc)}, [])
    [record] = [r for r in exporter.service_records if r.name == "targets"]
    assert record.distribution == "crusoe-metrics-exporter" and record.entry_point.endswith("targets.service")
    directory = exporter.services.get("targets")
    assert isinstance(directory, TargetDirectory)
    assert exporter.services.get("targets") is directory
    directory.start()
    exporter.stop()
    assert directory._thread is not None and not directory._thread.is_alive()


def test_non_utf8_server_name_in_mounts_does_not_break_the_exposition(
    tmp_path: Path, directories: list[TargetDirectory]
) -> None:
    settings = make_settings(tmp_path)
    mounts_path(settings).write_bytes(
        b"\xff\xfe:/export /mnt/a nfs rw,vers=3 0 0\n"
        b"filer.test:/volumes/v\xe9 /mnt/b nfs rw,vers=3 0 0\n"
    )
    d = new_directory(settings, resolver=FakeDns({"filer.test": ["10.0.0.7"]}))
    directories.append(d)
    mounts = d.nfs_mounts()
    # The host name becomes a DNS host label value: it must be encodable.
    text = dns_exposition(d).decode()
    assert 'host="\ufffd\ufffd"' in text
    # The same replacement nfs_stats applies to mountstats, so the ids agree.
    assert [m.volume_id for m in mounts if m.mount_point == "/mnt/b"] == ["v\ufffd"]
    assert [s.address for s in d.nfs_servers()] == ["10.0.0.7"]
