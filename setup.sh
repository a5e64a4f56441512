#!/usr/bin/env bash
# Install everything pvcd needs on a Debian bookworm machine (as root), then:
#   ./setup.sh demo   start a local 3-node cluster and print `pvc node list`
#   ./setup.sh test   run ruff and mypy, then the whole test suite
set -euo pipefail

cd "$(dirname "$0")"
ACTION="${1:-}"
VENV="${PVCD_VENV:-$PWD/.venv}"
DEMO_DIR="${PVCD_DEMO_DIR:-/tmp/pvcd-demo}"

DEBIAN_PACKAGES=(
  zookeeper            # the coordination store (run by the tests and the demo)
  default-jre-headless # ZooKeeper's runtime
  libvirt-dev          # headers for building libvirt-python
  libvirt-daemon       # libvirtd: each local node's simulated host (pvc-devcluster's chassis)
  qemu-system-x86      # QEMU for the real-host tests' TCG guests
  busybox-static       # the guests' userland (pvcd.devcluster.guest_image's initramfs)
  pkg-config
  gcc
  python3-dev
  python3-venv
  libpq-dev            # headers for building psycopg2
  iproute2
  iputils-ping
  nftables             # the real-host tests cut a host's libvirtd off to make a live migration fail
  # Building and checking the Debian packages (tests/deploy): the build
  # dependencies of debian/control, systemd-analyze, and the runtime Depends of
  # the packages so that `dpkg -i` succeeds (the tests install them in a
  # throw-away overlay of /, never on this machine itself).
  git
  debhelper
  dh-python
  pybuild-plugin-pyproject
  python3-all
  python3-setuptools
  python3-wheel
  systemd
  python3-kazoo
  python3-libvirt
  python3-yaml
  python3-psycopg2
  python3-dnspython
  python3-pyroute2
  python3-click
  python3-pyghmi
  dnsmasq
  pdns-server
  pdns-backend-pgsql
  postgresql           # the DNS aggregator's database, which the network tests start
  # A one-node Ceph (mon, mgr, memstore OSD on 127.0.0.1) that the storage tests
  # start, and the ceph/rbd commands pvcd.storage drives.
  ceph-mon
  ceph-osd
  ceph-mgr
  ceph-common
  python3-rados        # a node asks librados for its Ceph client address (storage fencing)
  python3-rbd          # the storage tests' lock-holding client, a VM's QEMU on a dead node
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
  # dnsmasq and pdns-server would start system-wide services listening on every
  # interface; pvcd runs its own instances, so no service starts on install.
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$own_policy" ]; then rm -f "$policy"; fi
fi

# libvirtd's QEMU driver looks this user up at start and, without it, the whole
# daemon exits; Debian's libvirt-daemon-system would create it, but that package
# also installs services the local cluster does not want.
id libvirt-qemu >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin libvirt-qemu

# An isolated venv on Debian's interpreter: the Python libraries come from PyPI
# at the versions setup.cfg allows, not from the python3-* packages installed
# above for the Debian package tests.
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[test]"

case "$ACTION" in
  demo)
    if [ -f "$DEMO_DIR/cluster.json" ]; then
      "$VENV/bin/pvc-devcluster" down --workdir "$DEMO_DIR" >/dev/null 2>&1 || true
    fi
    rm -rf "$DEMO_DIR"
    # PVCD_DEMO_HOSTS=qemu: real QEMU hosts in namespaces instead of libvirt's test driver.
    "$VENV/bin/pvc-devcluster" up --nodes 3 --workdir "$DEMO_DIR" --keepalive-interval 1 --detach \
      --hosts "${PVCD_DEMO_HOSTS:-test}"
    # ZooKeeper speaks TLS only and wants credentials: the operator's environment.
    eval "$("$VENV/bin/pvc-devcluster" env --workdir "$DEMO_DIR")"
    "$VENV/bin/pvc" node list
    echo
    echo "Point pvc at it with: eval \"\$($VENV/bin/pvc-devcluster env --workdir $DEMO_DIR)\""
    echo "Stop it with: $VENV/bin/pvc-devcluster down --workdir $DEMO_DIR"
    ;;
  test)
    # Lint and type-check first (configuration in pyproject.toml); either
    # failing fails the run (set -e).
    "$VENV/bin/ruff" check .
    "$VENV/bin/mypy"
    # The slowest tests are listed after the summary so the suite's time can be watched.
    exec "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider --durations=40
    ;;
esac
