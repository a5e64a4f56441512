#!/usr/bin/env bash
# Install everything pvcd needs on a Debian bookworm machine (as root), then:
#   ./setup.sh demo   start a local 3-node cluster and print `pvc node list`
#   ./setup.sh test   run the whole test suite
set -euo pipefail

cd "$(dirname "$0")"
ACTION="${1:-}"
VENV="${PVCD_VENV:-$PWD/.venv}"
DEMO_DIR="${PVCD_DEMO_DIR:-/tmp/pvcd-demo}"

DEBIAN_PACKAGES=(
  zookeeper            # the coordination store (run by the tests and the demo)
  default-jre-headless # ZooKeeper's runtime
  libvirt-dev          # headers for building libvirt-python
  pkg-config
  gcc
  python3-dev
  python3-venv
  libpq-dev            # headers for building psycopg2
  iproute2
  iputils-ping
)

case "$ACTION" in
  demo|test) ;;
  *) echo "usage: $0 demo|test" >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages)" >&2
  exit 2
fi

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "Installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's own interpreter, so Debian-only bindings (Ceph's rados/rbd) stay importable.
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[test]"

case "$ACTION" in
  demo)
    if [ -f "$DEMO_DIR/cluster.json" ]; then
      "$VENV/bin/pvc-devcluster" down --workdir "$DEMO_DIR" >/dev/null 2>&1 || true
    fi
    "$VENV/bin/pvc-devcluster" up --nodes 3 --workdir "$DEMO_DIR" --keepalive-interval 1 --detach
    ZK=$("$VENV/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['zookeeper'])" "$DEMO_DIR/cluster.json")
    "$VENV/bin/pvc" --zookeeper "$ZK" node list
    echo
    echo "Stop it with: $VENV/bin/pvc-devcluster down --workdir $DEMO_DIR"
    ;;
  test)
    exec "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider
    ;;
esac
