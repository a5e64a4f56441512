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
    return _run(config)


def _run(config: Config) -> int:
    from pvcd.daemon import NodeDaemon
    from pvcd.logsetup import configure_logging

    for problem in configure_logging(config.node, config.logging, config.directories):
        print(f"pvcd: {problem}", file=sys.stderr)
    daemon = NodeDaemon(config)
    daemon.install_signal_handlers()
    try:
        return daemon.run()
    except Exception:
        logging.getLogger("pvcd").exception("pvcd on node %s stopped by an unexpected error", config.node)
        return 1


if __name__ == "__main__":
    sys.exit(main())
