"""The `pvcd` command: check a configuration, or run the node daemon."""

from __future__ import annotations

import argparse
import logging
import sys

from pvcd import __version__
from pvcd.config import Config, ConfigError, config_path_from_env, load_config

EXIT_BAD_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvcd",
        description="pvcd node daemon. Reads its configuration from $PVCD_CONFIG_FILE (default /etc/pvc/pvcd.yaml).",
    )
    parser.add_argument(
        "--check-config",
        nargs="?",
        const="",
        metavar="FILE",
        help="validate FILE (default: $PVCD_CONFIG_FILE) and exit: 0 if valid, 2 with one line per problem",
    )
    parser.add_argument(
        "--secure-zookeeper",
        action="store_true",
        help="give every znode of the cluster the ACLs of pvc.cluster.zookeeper.acl, and close the tree's root "
        "and /pvc to unauthenticated clients (once, to convert a cluster made without ACLs), then exit",
    )
    parser.add_argument("--version", action="version", version=f"pvcd {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = args.check_config or config_path_from_env()
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.check_config is not None:
        print(f"{path}: configuration is valid")
        return 0
    if args.secure_zookeeper:
        return _secure_zookeeper(config)
    return _run(config)


def _secure_zookeeper(config: Config) -> int:
    """`pvcd --secure-zookeeper`: one line on success or failure; exit 0, 1, or 2 for the configuration."""
    from pvcd.zk.access import zk_security
    from pvcd.zk.base import StoreError
    from pvcd.zk.security import SecurityError
    from pvcd.zk.store import ZooKeeperStore, quiet_kazoo

    quiet_kazoo()
    settings = config.cluster.zookeeper
    if settings.acl is None:
        print(
            "pvcd: pvc.cluster.zookeeper.acl and credentials_file are not set: nothing to secure with", file=sys.stderr
        )
        return EXIT_BAD_CONFIG
    try:
        security = zk_security(settings)
    except SecurityError as exc:
        print(f"pvcd: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if security.credentials is not None and settings.acl.role_of(security.credentials) != "coordinator":
        print(
            "pvcd: --secure-zookeeper needs the coordinator identity (it must be able to read the BMC "
            "credentials it protects); run it on a coordinator",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    store = ZooKeeperStore(config.zookeeper_hosts, connect_timeout=settings.connect_timeout, security=security)
    try:
        store.start()
        try:
            count = store.secure_tree()
        finally:
            store.stop()
    except StoreError as exc:
        print(f"pvcd: cannot secure ZooKeeper at {config.zookeeper_hosts}: {exc}", file=sys.stderr)
        return 1
    print(f"ZooKeeper at {config.zookeeper_hosts}: ACLs set on {count} znodes; the root and /pvc are closed")
    return 0


def _run(config: Config) -> int:
    from pvcd.daemon import NodeDaemon
    from pvcd.logsetup import configure_logging

    for problem in configure_logging(config.node, config.logging, config.directories):
        print(f"pvcd: {problem}", file=sys.stderr)
    from pvcd.zk.security import SecurityError

    try:
        daemon = NodeDaemon(config)
    except SecurityError as exc:
        print(f"pvcd: {exc}", file=sys.stderr)
        logging.getLogger("pvcd").error("pvcd on node %s cannot start: %s", config.node, exc)
        return EXIT_BAD_CONFIG
    daemon.install_signal_handlers()
    try:
        return daemon.run()
    except Exception:
        logging.getLogger("pvcd").exception("pvcd on node %s stopped by an unexpected error", config.node)
        return 1


if __name__ == "__main__":
    sys.exit(main())
