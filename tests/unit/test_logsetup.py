"""The logging keys: where lines go and what they look like."""

from __future__ import annotations

import logging

import pytest

from pvcd.config import Directories, Logging
from pvcd.logsetup import LOG_FILE_NAME, configure_logging


def settings(**overrides) -> Logging:
    values = dict(
        file_logging=True,
        stdout_logging=False,
        log_colours=False,
        log_dates=False,
        log_keepalives=True,
        log_keepalive_cluster_details=False,
        log_keepalive_storage_details=False,
        console_log_lines=10,
    )
    values.update(overrides)
    return Logging(**values)


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def dirs(tmp_path) -> Directories:
    return Directories(str(tmp_path / "run"), str(tmp_path / "log"), str(tmp_path / "console"))


def test_file_logging_without_dates_or_colours(tmp_path):
    assert configure_logging("hv1", settings(), dirs(tmp_path)) == []
    logging.getLogger("pvcd").info("hello")
    assert (tmp_path / "log" / LOG_FILE_NAME).read_text() == "INFO    hv1: hello\n"


def test_dates_and_colours(tmp_path):
    configure_logging("hv1", settings(log_dates=True, log_colours=True), dirs(tmp_path))
    logging.getLogger("pvcd").warning("careful")
    line = (tmp_path / "log" / LOG_FILE_NAME).read_text()
    assert line.startswith("\033[33m20") and line.rstrip().endswith("careful\033[0m")


def test_stdout_only_writes_no_file(tmp_path, capsys):
    configure_logging("hv2", settings(file_logging=False, stdout_logging=True), dirs(tmp_path))
    logging.getLogger("pvcd").info("to stdout")
    assert capsys.readouterr().out == "INFO    hv2: to stdout\n"
    assert not (tmp_path / "log").exists()


def test_unwritable_log_directory_is_reported_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    problems = configure_logging("hv1", settings(), Directories("/run/x", str(blocker / "log"), "/c"))
    assert len(problems) == 1 and "cannot log to" in problems[0]
