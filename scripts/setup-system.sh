#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the exporter needs and, with --test,
# everything the test suite starts on this machine, so a bare Debian 12 gets
# all of it from this script. Idempotent, and quick when nothing is missing
# (one dpkg-query; apt is consulted only when something is): it runs at the
# start of every `make run` and `make test`.
set -euo pipefail

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# Each entry is "package: the commands we run from it". tests/test_setup_system.py
# checks that every command the test suite starts on this machine is named
# here, so a test cannot depend on a tool only the development machine has.
runtime=(
  "python3-bpfcc:"                 # bcc's bindings (the PyPI "bcc" is another project)
  "python3-venv: python3"          # the project's virtualenv
  "mount: mount umount"            # the eBPF runtime mounts tracefs when it is not mounted
  "procps:"                        # /bin/kill, the systemd unit's ExecReload (not in a minimal Debian)
)
test_tools=(
  # Real peers and references of the host suite.
  "prometheus: prometheus promtool"
  "prometheus-node-exporter: prometheus-node-exporter"
  "fio: fio"
  "iperf3: iperf3"
  "nftables: nft"
  "iproute2: ip tc nstat ss"
  "iputils-ping: ping"
  "openssl: openssl"
  # Loop devices, freezing, namespaces, limits, privilege drops, kernel log.
  "util-linux: losetup fsfreeze dmesg prlimit setpriv unshare nsenter"
  "kmod: modprobe"
  "procps: pgrep"
  "coreutils: dd du truncate sha256sum"
  # The guest lane (tests/vm): QEMU boots Debian's stock kernel from an image
  # mmdebstrap builds; mkfs.ext4 turns it into a disk.
  "qemu-system-x86: qemu-system-x86_64"
  "mmdebstrap: mmdebstrap"
  "e2fsprogs: mkfs.ext4"
  # Deployment tests: the image is built and run with podman (runc; no
  # registry: the Debian base is made with mmdebstrap), manifests rendered
  # with kubectl, the unit checked with systemd-analyze and installed by
  # scripts/install.sh (a system user), `make dist` builds the release.
  "podman: podman"
  "buildah: buildah"
  "runc: runc"
  "uidmap: newuidmap"
  "systemd: systemd-analyze systemctl"
  "passwd: useradd userdel groupdel"
  "libc-bin: getent"
  "make: make"
  # Debian's kubectl; a kubectl from elsewhere does as well (checked below).
  "kubernetes-client: kubectl"
)

entries=("${runtime[@]}")
[ "$want_test" = 1 ] && entries+=("${test_tools[@]}")
wanted=()
for entry in "${entries[@]}"; do
  package=${entry%%:*}
  case " ${wanted[*]} " in *" $package "*) continue ;; esac
  # A kubectl installed some other way is as good as Debian's.
  if [ "$package" = kubernetes-client ] && command -v kubectl >/dev/null 2>&1; then continue; fi
  wanted+=("$package")
done

# bcc compiles against kernel headers at start-up: the running kernel's own
# when they are installed; otherwise the nearest packaged headers (the
# exporter's eBPF runtime makes those usable, see README "Kernel headers").
header_candidates=("linux-headers-$(uname -r)" linux-headers-cloud-amd64 linux-headers-amd64 linux-headers-generic)
need_headers=0
[ -e "/lib/modules/$(uname -r)/build/include" ] || need_headers=1

# One dpkg-query answers for every package (unknown ones are simply absent).
installed=" $({ dpkg-query -W -f='${Package}=${db:Status-Abbrev}\n' "${wanted[@]}" "${header_candidates[@]}" 2>/dev/null || true; } \
  | sed -n 's/=ii *$//p' | tr '\n' ' ') "
missing=()
for package in "${wanted[@]}"; do
  case "$installed" in *" $package "*) ;; *) missing+=("$package") ;; esac
done
if [ "$need_headers" = 1 ]; then
  for candidate in "${header_candidates[@]}"; do
    case "$installed" in *" $candidate "*) need_headers=0; break ;; esac
  done
fi

if [ "${#missing[@]}" -eq 0 ] && [ "$need_headers" = 0 ]; then exit 0; fi

# The first headers package apt offers (its lists may be empty before an update).
find_headers() {
  for candidate in "${header_candidates[@]}"; do
    if apt-cache show "$candidate" >/dev/null 2>&1; then echo "$candidate"; return; fi
  done
}
headers=""
[ "$need_headers" = 1 ] && headers=$(find_headers)
# Kernel headers that no package provides are not worth an apt-get update on every run.
if [ "${#missing[@]}" -eq 0 ] && [ -z "$headers" ]; then
  echo "setup: no kernel headers package for $(uname -r) or a nearest one; the eBPF plugins will say so" >&2
  exit 0
fi

if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
echo "setup: updating apt's package lists"
$SUDO apt-get update -qq
if [ "$need_headers" = 1 ]; then
  headers=$(find_headers)
  if [ -n "$headers" ]; then
    missing+=("$headers")
  else
    echo "setup: no kernel headers package for $(uname -r) or a nearest one; the eBPF plugins will say so" >&2
  fi
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Every command this script promises must now be there (root's PATH has sbin).
absent=()
for entry in "${entries[@]}"; do
  for command in ${entry#*:}; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$command" >/dev/null 2>&1 || absent+=("$command (${entry%%:*})")
  done
done
if [ "${#absent[@]}" -gt 0 ]; then
  echo "setup: installed, but these commands are still missing: ${absent[*]}" >&2
  exit 1
fi
