#!/usr/bin/env bash
# Installs the system packages the exporter (and, with --test, its test suite)
# needs on Debian/Ubuntu. Idempotent: installs only what is missing.
set -euo pipefail

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

runtime_pkgs=(python3-bpfcc python3-venv)
# bcc compiles against kernel headers at start-up. Use the running kernel's
# package when the distribution has it; otherwise the nearest packaged headers
# (the exporter's eBPF runtime makes those usable, see README "Kernel headers").
test_pkgs=(prometheus prometheus-node-exporter fio iperf3 nftables iproute2 util-linux kmod)
# The guest lane (tests/vm): QEMU boots Debian's stock kernel from an image
# mmdebstrap builds; mkfs.ext4 (e2fsprogs) turns it into a disk.
test_pkgs+=(qemu-system-x86 mmdebstrap e2fsprogs)
# iputils-ping and openssl are the independent references of the probe timing tests.
test_pkgs+=(iputils-ping openssl)
# Deployment tests: the image is built and run with podman (runc; no registry:
# the Debian base is made with mmdebstrap), manifests rendered with kubectl,
# the unit checked with systemd-analyze.
test_pkgs+=(podman buildah runc uidmap systemd)
# Debian's kubectl is kubernetes-client; a kubectl from elsewhere does as well.
command -v kubectl >/dev/null 2>&1 || test_pkgs+=(kubernetes-client)

missing=()
for p in "${runtime_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "$want_test" = 1 ]; then
  for p in "${test_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
fi

headers=""
if [ ! -e "/lib/modules/$(uname -r)/build/include" ]; then
  if apt-cache show "linux-headers-$(uname -r)" >/dev/null 2>&1; then
    headers="linux-headers-$(uname -r)"
  else
    for candidate in linux-headers-cloud-amd64 linux-headers-amd64 linux-headers-generic; do
      if apt-cache show "$candidate" >/dev/null 2>&1; then headers="$candidate"; break; fi
    done
  fi
fi
if [ -n "$headers" ] && ! dpkg -s "$headers" >/dev/null 2>&1; then missing+=("$headers"); fi

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "setup: installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # apt-cache may have been empty before the update; retry header discovery.
  if [ -z "$headers" ] && [ ! -e "/lib/modules/$(uname -r)/build/include" ]; then
    for candidate in "linux-headers-$(uname -r)" linux-headers-cloud-amd64 linux-headers-amd64 linux-headers-generic; do
      if apt-cache show "$candidate" >/dev/null 2>&1; then missing+=("$candidate"); break; fi
    done
  fi
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
