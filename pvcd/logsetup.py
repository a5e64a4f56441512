"""Logging as the configuration's logging keys ask: where, with dates, with colours."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pvcd.config import Directories, Logging

LOG_FILE_NAME = "pvcd.log"

_COLOURS = {
    logging.DEBUG: "\033[2m",
    logging.INFO: "\033[32m",
    logging.WARNING: "\033[33m",
    logging.ERROR: "\033[31m",
    logging.CRITICAL: "\033[1;31m",
}
_RESET = "\033[0m"


class _Formatter(logging.Formatter):
    def __init__(self, node: str, dates: bool, colours: bool) -> None:
        prefix = "%(asctime)s " if dates else ""
        super().__init__(f"{prefix}%(levelname)-7s {node}: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        self.colours = colours

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if self.colours:
            return f"{_COLOURS.get(record.levelno, '')}{line}{_RESET}"
        return line


def configure_logging(node: str, settings: Logging, directories: Directories) -> list[str]:
    """Install the handlers; return problems (e.g. an unwritable log directory) to report."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.INFO)
    problems = []
    if settings.stdout_logging:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(_Formatter(node, settings.log_dates, settings.log_colours))
        root.addHandler(handler)
    if settings.file_logging:
        path = Path(directories.log_directory) / LOG_FILE_NAME
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(path)
        except OSError as exc:
            problems.append(f"cannot log to {path}: {exc.strerror or exc}")
        else:
            file_handler.setFormatter(_Formatter(node, settings.log_dates, settings.log_colours))
            root.addHandler(file_handler)
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    # The daemon logs connection changes itself, once; kazoo would log every retry.
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    return problems
