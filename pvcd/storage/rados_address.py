"""Print this host's Ceph client address as librados reports it, as one JSON line.

Run by Debian's /usr/bin/python3 (the only interpreter the `rados` binding loads in; pvcd's venv
does not see it), as a process of its own that the caller kills at its deadline: librados can
block without limit while the mon does not answer. Imports nothing of pvcd.

Arguments: CONF KEYRING CLIENT_ID SECONDS. Output: {"addresses": "<what rados_getaddrs says>"}
or {"error": "..."} with exit status 1.
"""

import json
import sys


def main() -> int:
    conf, keyring, client_id, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(float(sys.argv[4]))
    try:
        import rados

        cluster = rados.Rados(conffile=conf, rados_id=client_id, conf={"keyring": keyring})
        cluster.connect(timeout=seconds)
        try:
            addresses = cluster.get_addrs()
        finally:
            cluster.shutdown()
    except Exception as exc:  # every failure is one line for the daemon's log
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps({"addresses": str(addresses)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
