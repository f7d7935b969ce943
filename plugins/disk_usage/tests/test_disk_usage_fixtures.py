"""disk_usage on the seed's mounts fixtures, escaped mount points, device selection and this machine."""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path
from typing import Any, cast

import pytest

from crusoe_metrics_exporter.options import SettingError
from crusoe_metrics_exporter.plugins.disk_usage import crusoe_metrics_exporter_plugin
from crusoe_metrics_exporter.plugins.disk_usage.collector import (
    DiskUsageCollector,
    effective_mount_timeout,
    resolve_statfs_root,
)
from crusoe_metrics_exporter.plugins.disk_usage.parser import MountSelector, parse_mounts, unescape
from crusoe_metrics_exporter.testing import check_declaration, error_totals

ERRORS = "disk_usage_collection_errors_total"
SEED_GAUGES = ("disk_bytes_used", "disk_bytes_total", "disk_inodes_used", "disk_inodes_total")


def collect(ctx: Any) -> tuple[dict[tuple[str, str, str], float], int]:
    collector = DiskUsageCollector(ctx)
    collector.start()
    try:
        samples = collector.collect()
    finally:
        collector.stop()
    values = {(s.metric, s.labels[0], s.labels[1]): float(cast(float, s.value)) for s in samples}
    assert len(values) == len(samples)
    return values, error_totals(ctx)[ERRORS]


def expected_for(path: str) -> dict[str, float]:
    st = os.statvfs(path)
    return {
        "disk_bytes_used": (st.f_blocks - st.f_bfree) * st.f_frsize,
        "disk_bytes_total": st.f_blocks * st.f_frsize,
        "disk_inodes_used": st.f_files - st.f_ffree,
        "disk_inodes_total": st.f_files,
    }


def test_spec_is_accepted_by_the_core() -> None:
    spec = crusoe_metrics_exporter_plugin()
    check_declaration(spec)
    assert [m.name for m in spec.metrics[:4]] == list(SEED_GAUGES)
    assert all(m.labels == ("device", "mount_point") for m in spec.metrics if not m.error_counter)


def test_seed_skips_non_vd(make_ctx: Any, host_mounts: Any, data_dir: Path) -> None:
    values, errors = collect(make_ctx(host_mounts((data_dir / "diskusage_skips_non_vd.mounts").read_bytes())))
    assert values == {}
    assert errors == 0  # the seed's "only the error metric", at 0


@pytest.mark.parametrize("fixture", ["diskusage_dedup.mounts", "diskusage_statfs_real_path.mounts"])
def test_seed_tmp_mount_reported_once_with_statfs_values(make_ctx: Any, host_mounts: Any, data_dir: Path,
                                                         fixture: str) -> None:
    values, errors = collect(make_ctx(host_mounts((data_dir / fixture).read_bytes())))
    assert errors == 0
    assert {(m, d, mp) for (m, d, mp) in values} == {
        (m, "vda1", "/tmp") for m in (*SEED_GAUGES, "disk_bytes_available", "disk_filesystem_readonly",
                                      "disk_mount_stuck")
    }
    expected = expected_for("/tmp")
    assert values[("disk_bytes_total", "vda1", "/tmp")] == expected["disk_bytes_total"]
    assert values[("disk_inodes_total", "vda1", "/tmp")] == expected["disk_inodes_total"]
    # "used" moves with other processes' writes; it must be close to a fresh statfs.
    assert values[("disk_bytes_used", "vda1", "/tmp")] == pytest.approx(expected["disk_bytes_used"], rel=0.01)
    assert values[("disk_inodes_used", "vda1", "/tmp")] == pytest.approx(expected["disk_inodes_used"], rel=0.01)
    assert values[("disk_mount_stuck", "vda1", "/tmp")] == 0


def test_missing_mounts_file(make_ctx: Any, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    collector = DiskUsageCollector(ctx)
    collector.start()
    assert collector.collect() == []
    assert collector.collect() == []
    collector.stop()
    assert error_totals(ctx)[ERRORS] == 2  # cumulative, unlike the seed's per-scrape value


def test_octal_escaped_mount_points_are_decoded_and_measured(make_ctx: Any, host_mounts: Any, tmp_path: Path) -> None:
    base = tmp_path / "mnt"
    names = {"with space": r"with\040space", "with\ttab": r"with\011tab", "back\\slash": r"back\134slash",
             "new\nline": r"new\012line", "caf\u00e9": "caf\u00e9"}
    lines = []
    for i, (real, escaped) in enumerate(names.items()):
        (base / real).mkdir(parents=True)
        lines.append(f"/dev/vd{chr(97 + i)} {base}/{escaped} ext4 rw 0 0")
    values, errors = collect(make_ctx(host_mounts("\n".join(lines).encode())))
    assert errors == 0
    reported = {mp for (m, _, mp) in values if m == "disk_bytes_total"}
    assert reported == {f"{base}/{real}" for real in names}


def test_escapes_in_node_exporter_mountinfo(data_dir: Path) -> None:
    # The same kernel escaping is used in mountinfo (field 5 is the mount point).
    points = [line.split()[4] for line in (data_dir / "node_exporter__collector_fixtures_proc_1_mountinfo.txt")
              .read_bytes().splitlines()]
    decoded = [unescape(p) for p in points if b"\\" in p]
    prefix = b"/var/lib/kubelet/plugins/kubernetes.io/vsphere-volume/mounts/[vsanDatastore]"
    suffix = b"bafb9e5a-8856-7e6c-699c-801844e77a4a/kubernetes-dynamic-pvc-3eba5bba-48a3-11e8-89ab-005056b92113.vmdk"
    assert decoded == [prefix + b" " + suffix, prefix + b"\t" + suffix]
    assert unescape(rb"a\\b\999\0400") == b"a\\\\b\\999 0"  # only valid three-digit byte escapes change


def test_device_selection_and_labels() -> None:
    default = MountSelector()
    for source, label in [("/dev/vda", "vda"), ("/dev/vda1", "vda1"), ("/dev/vdaa", "vdaa"),
                          ("/dev/vdab12", "vdab12")]:
        assert default.device_label(source) == label
    for source in ["/dev/sda1", "/dev/nvme0n1p1", "/dev/mapper/vg-root", "overlay", "tmpfs", "/dev/vd",
                   "10.0.0.1:/volumes/abc", "/dev/vda1x", "x/dev/vda"]:
        assert default.device_label(source) is None, source
    named = MountSelector(r"^/dev/(?:mapper/)?(?P<device>[\w-]+)$", exclude=r"^/dev/loop")
    assert named.device_label("/dev/mapper/vg-root") == "vg-root"
    assert named.device_label("/dev/loop0") is None
    assert MountSelector(r"^/dev/nvme").device_label("/dev/nvme0n1p2") == "nvme0n1p2"
    assert MountSelector("").device_label("tmpfs") == "tmpfs"


def test_first_visible_mount_of_a_device_wins_and_mount_point_exclude(make_ctx: Any, host_mounts: Any) -> None:
    mounts = b"\n".join([
        b"/dev/vda1 /var/lib/docker/overlay ext4 rw 0 0",
        b"/dev/vda1 /tmp ext4 rw 0 0",
        b"/dev/vda1 /proc ext4 rw 0 0",  # a bind mount of the same filesystem: not repeated
        b"/dev/vdb /tmp ext4 rw 0 0",
    ])
    values, errors = collect(make_ctx(host_mounts(mounts), {"mount_point_exclude": "^/var/lib/docker/"}))
    assert errors == 0
    # vdb is mounted over vda1's /tmp: statfs("/tmp") measures vdb only, so
    # vda1 is reported at its next visible mount.
    assert {(d, mp) for (m, d, mp) in values if m == "disk_bytes_total"} == {("vda1", "/proc"), ("vdb", "/tmp")}


def test_statfs_failures_are_counted_per_mount_and_scrape(make_ctx: Any, host_mounts: Any) -> None:
    ctx = make_ctx(host_mounts(b"/dev/vda1 /nonexistent/h2-disk-usage ext4 rw 0 0\n/dev/vdb /tmp ext4 rw 0 0\n"))
    collector = DiskUsageCollector(ctx)
    collector.start()
    for scrape in (1, 2):
        values = {(s.metric, s.labels[0]): s.value for s in collector.collect()}
        assert values[("disk_mount_stuck", "vda1")] == 0
        assert ("disk_bytes_total", "vda1") not in values
        assert ("disk_bytes_total", "vdb") in values
        assert error_totals(ctx)[ERRORS] == scrape
    collector.stop()


def test_readonly_flag_from_a_real_read_only_mount(make_ctx: Any, host_mounts: Any, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("LOUD SKIP: mounting a read-only tmpfs needs root; the read-only flag check cannot run")
    libc = ctypes.CDLL(None, use_errno=True)
    ro = tmp_path / "ro"
    ro.mkdir()
    ms_rdonly = 1
    assert libc.mount(b"h2-ro-tmpfs", os.fsencode(ro), b"tmpfs", ms_rdonly, b"size=1m") == 0, ctypes.get_errno()
    try:
        mounts = f"/dev/vdq {ro} tmpfs ro 0 0\n/dev/vdr /tmp x rw 0 0\n".encode()
        values, errors = collect(make_ctx(host_mounts(mounts)))
    finally:
        libc.umount2(os.fsencode(ro), 2)
    assert errors == 0
    assert values[("disk_filesystem_readonly", "vdq", str(ro))] == 1
    assert values[("disk_bytes_total", "vdq", str(ro))] == 1024 * 1024
    assert values[("disk_filesystem_readonly", "vdr", "/tmp")] == 0


def test_this_machine_reports_vda_usage(make_ctx: Any) -> None:
    mounts = Path("/proc/1/mounts").read_text().split("\n")
    vd = [line.split() for line in mounts if line.startswith("/dev/vd")]
    if not vd:
        pytest.skip("LOUD SKIP: this machine mounts no /dev/vd* filesystem; the real-usage check cannot run")
    values, errors = collect(make_ctx(Path("/proc")))
    assert errors == 0
    device, mount_point = vd[0][0].removeprefix("/dev/"), unescape(vd[0][1].encode()).decode()
    expected = expected_for(mount_point)
    assert values[("disk_bytes_total", device, mount_point)] == expected["disk_bytes_total"]
    assert values[("disk_inodes_total", device, mount_point)] == expected["disk_inodes_total"]
    assert values[("disk_bytes_used", device, mount_point)] == pytest.approx(expected["disk_bytes_used"], rel=0.01)
    # df's view agrees: total and available as `df -B1` computes them.
    df = shutil.disk_usage(mount_point)
    assert values[("disk_bytes_total", device, mount_point)] == df.total


def test_statfs_root_choice(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "self").mkdir()
    (proc / "1" / "mounts").write_bytes(b"/dev/vda / ext4 rw 0 0\n")
    (proc / "self" / "mounts").write_bytes(b"/dev/vda / ext4 rw 0 0\n")
    # No usable 1/root, same mount table: mount points are used as they are.
    root = resolve_statfs_root(proc)
    assert root.prefix == b"" and "shares PID 1's mount table" in root.note and root.problem is None
    # A different mount table (a container without the host's PID 1 root): no way to the host's
    # filesystems, and the fix names HOST_ROOT_PATH.
    (proc / "self" / "mounts").write_bytes(b"overlay / overlay rw 0 0\n")
    root = resolve_statfs_root(proc)
    assert root.problem is not None and "cannot reach the host's filesystems" in root.problem.reason
    assert "HOST_ROOT_PATH=/host/root" in root.problem.fix
    # HOST_ROOT_PATH wins over everything and says so; "/" means the paths as they are.
    host_root = tmp_path / "host-root"
    host_root.mkdir()
    root = resolve_statfs_root(proc, host_root)
    assert root.prefix == os.fsencode(host_root) and root.note == f"{host_root} (HOST_ROOT_PATH)"
    assert resolve_statfs_root(proc, Path("/")).prefix == b""
    missing = resolve_statfs_root(proc, tmp_path / "absent")
    assert missing.problem is not None and "HOST_ROOT_PATH" in missing.problem.reason
    # An accessible 1/root is used when HOST_ROOT_PATH is not set.
    (proc / "1" / "root").symlink_to("/")
    root = resolve_statfs_root(proc)
    assert root.prefix == os.fsencode(proc / "1" / "root") and root.note == f"{proc / '1' / 'root'} (PID 1's root)"


def test_host_root_path_statfs_and_readonly_from_the_host_table(make_ctx: Any, host_mounts: Any,
                                                                tmp_path: Path) -> None:
    """With HOST_ROOT_PATH, statfs goes under it; read-only comes from the host's table, not the bind."""
    if os.geteuid() != 0:
        pytest.skip("LOUD SKIP: a read-only bind of the host's / needs root; the HOST_ROOT_PATH check cannot run")
    libc = ctypes.CDLL(None, use_errno=True)
    host_root = tmp_path / "host-root"
    host_root.mkdir()
    ms_bind, ms_remount, ms_rdonly = 4096, 32, 1
    assert libc.mount(b"/", os.fsencode(host_root), None, ms_bind, None) == 0, ctypes.get_errno()
    try:
        assert libc.mount(None, os.fsencode(host_root), None, ms_bind | ms_remount | ms_rdonly, None) == 0
        ctx = make_ctx(host_mounts(b"/dev/vdq / ext4 rw,relatime 0 0\n"), host_root=host_root)
        values, errors = collect(ctx)
    finally:
        libc.umount2(os.fsencode(host_root), 2)
    assert errors == 0
    expected = expected_for("/")
    assert values[("disk_bytes_total", "vdq", "/")] == expected["disk_bytes_total"]
    assert values[("disk_inodes_total", "vdq", "/")] == expected["disk_inodes_total"]
    # statfs through the read-only bind says ST_RDONLY; the host mounted it rw.
    assert os.statvfs(tmp_path).f_flag & os.ST_RDONLY == 0
    assert values[("disk_filesystem_readonly", "vdq", "/")] == 0


def test_parse_mounts_counts_non_records() -> None:
    result = parse_mounts(b"/dev/vda / ext4 rw 0 0\nlonely\n\n  \n/dev/vdb relative ext4 rw 0 0\n/dev/vdc /x\n")
    assert [(e.source, e.mount_point) for e in result.entries] == [("/dev/vda", b"/"), ("/dev/vdc", b"/x")]
    assert result.errors == 2


def test_mount_timeout_fits_the_collect_timeout(make_ctx: Any, tmp_path: Path) -> None:
    assert effective_mount_timeout(make_ctx(tmp_path, {"mount_timeout": 1.5}, collect_timeout=5.0)) == 1.5
    assert effective_mount_timeout(make_ctx(tmp_path, {"mount_timeout": 10.0}, collect_timeout=5.0)) == 1.6
    assert effective_mount_timeout(make_ctx(tmp_path, {"mount_timeout": 0.0}, collect_timeout=5.0)) == 1.5
    assert effective_mount_timeout(make_ctx(tmp_path, {}, collect_timeout=1.0)) == pytest.approx(0.32)
    assert DiskUsageCollector(make_ctx(tmp_path, {"stat_workers": 64})).pool.workers == 64
    with pytest.raises(SettingError, match=r"^invalid --set plugins\.disk_usage\.stat_workers='10000': expected an "
                                           r"integer from 1 to 64$"):
        make_ctx(tmp_path, {"stat_workers": 10_000})


def test_a_mount_hidden_by_a_later_mount_is_not_measured_with_the_top_filesystems_numbers(
    make_ctx: Any, host_mounts: Any, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("LOUD SKIP: stacking two tmpfs mounts needs root; the overmount check cannot run")
    libc = ctypes.CDLL(None, use_errno=True)
    point = tmp_path / "stacked"
    point.mkdir()
    # The real kernel: a 4 MiB tmpfs, then an 8 MiB tmpfs mounted over it.
    for size in (b"size=4m", b"size=8m"):
        assert libc.mount(b"tmpfs", bytes(point), b"tmpfs", 0, size) == 0, os.strerror(ctypes.get_errno())
    try:
        mounts = f"/dev/vdc {point} ext4 rw 0 0\n/dev/vdd {point} ext4 rw 0 0\n".encode()
        values, errors = collect(make_ctx(host_mounts(mounts)))
    finally:
        libc.umount2(bytes(point), 2)
        libc.umount2(bytes(point), 2)
    assert errors == 0
    totals = {d: v for (m, d, _mp), v in values.items() if m == "disk_bytes_total"}
    # Only the top filesystem can be measured; the hidden one must not get its numbers.
    assert totals == {"vdd": 8 * 1024 * 1024}


@pytest.mark.parametrize("raw", ["0", "-3"])
def test_stat_workers_below_one_is_rejected_not_silently_raised(raw: str) -> None:
    from crusoe_metrics_exporter.plugins.disk_usage import DiskUsageOptions
    from crusoe_metrics_exporter.testing import options_for

    with pytest.raises(SettingError, match="expected an integer from 1 to 64"):
        options_for(DiskUsageOptions, {"stat_workers": raw})
    assert options_for(DiskUsageOptions, {"stat_workers": "1"}).stat_workers == 1
