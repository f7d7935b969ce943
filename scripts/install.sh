#!/usr/bin/env bash
# Install the exporter as a systemd service: a venv under /opt, the unit, a
# config file and a dedicated system user. Run as root from a clone (or pass
# --wheel dist/crusoe_metrics_exporter-X.Y.Z-py3-none-any.whl). Idempotent:
# an existing config file is kept; the unit and the venv are replaced.
#
#   scripts/install.sh [--prefix DIR] [--user NAME] [--unit-dir DIR] [--config FILE] [--wheel FILE] [--no-start]
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/opt/crusoe-metrics-exporter
user=crusoe-exporter
unit_dir=/etc/systemd/system
config=/etc/crusoe-metrics-exporter/config.toml
wheel=""
start=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --unit-dir) unit_dir=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --wheel) wheel=$2; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (it creates a system user and installs a unit)" >&2
  exit 1
fi

scripts/setup-system.sh

if ! getent passwd "$user" >/dev/null; then
  useradd --system --user-group --no-create-home --home-dir /var/lib/crusoe-metrics-exporter \
    --shell /usr/sbin/nologin --comment "crusoe-metrics-exporter" "$user"
fi

# --system-site-packages: the venv sees Debian's bcc bindings (python3-bpfcc).
rm -rf "$prefix"
# Debian's python3: the one python3-bpfcc installs bcc for.
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3)
"$python" -m venv --system-site-packages "$prefix"
"$prefix/bin/pip" install --quiet --disable-pip-version-check "${wheel:-.}"

if [ ! -e "$config" ]; then
  install -d -m 0755 "$(dirname "$config")"
  "$prefix/bin/crusoe-metrics-exporter" config init "$config" >/dev/null
  chmod 0644 "$config"
fi

install -d -m 0755 "$unit_dir"
sed -e "s|/opt/crusoe-metrics-exporter/|$prefix/|g" \
    -e "s|^User=.*|User=$user|" -e "s|^Group=.*|Group=$user|" \
    -e "s|^EnvironmentFile=.*|&\nEnvironment=CRUSOE_EXPORTER_CONFIG=$config|" \
    deploy/systemd/crusoe-metrics-exporter.service > "$unit_dir/crusoe-metrics-exporter.service"
chmod 0644 "$unit_dir/crusoe-metrics-exporter.service"
echo "install.sh: installed $prefix, $unit_dir/crusoe-metrics-exporter.service, $config (user $user)"

if [ "$start" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now crusoe-metrics-exporter.service
  echo "install.sh: started; curl localhost:9500/metrics"
elif [ "$start" = 1 ]; then
  echo "install.sh: systemd is not running here; start the unit when it is"
fi
