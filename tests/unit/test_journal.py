"""The journal analysis (pvcd/devcluster/journal.py): runs, overlaps, VMs not running once."""

from __future__ import annotations

import json

import pytest

from pvcd.devcluster import journal
from pvcd.devcluster.journal import Entry, Misplaced, Overlap, Run


def start(t: float, host: str, vm: str) -> Entry:
    return Entry(t, host, journal.START, vm, "event")


def stop(t: float, host: str, vm: str) -> Entry:
    return Entry(t, host, journal.STOP, vm, "event")


def test_a_move_that_stops_before_it_starts_is_clean():
    entries = [start(1.0, "hv1", "vm1"), stop(5.0, "hv1", "vm1"), start(5.001, "hv2", "vm1")]
    assert journal.runs(entries) == [Run("vm1", "hv1", 1.0, 5.0), Run("vm1", "hv2", 5.001, None)]
    assert journal.overlaps(journal.runs(entries)) == []


def test_touching_runs_do_not_overlap():
    entries = [start(1.0, "hv1", "vm1"), stop(5.0, "hv1", "vm1"), start(5.0, "hv2", "vm1")]
    assert journal.overlaps(journal.runs(entries)) == []


def test_a_synthetic_double_run_is_reported_with_its_interval():
    entries = [start(1.0, "hv1", "vm1"), start(4.5, "hv2", "vm1"), stop(5.0, "hv1", "vm1"), start(2.0, "hv3", "vm2")]
    assert journal.overlaps(journal.runs(entries)) == [Overlap("vm1", ("hv1", "hv2"), 4.5, 5.0)]


def test_an_overlap_that_still_runs_has_no_end():
    entries = [start(1.0, "hv2", "vm1"), start(3.0, "hv1", "vm1")]
    [overlap] = journal.overlaps(journal.runs(entries))
    assert overlap == Overlap("vm1", ("hv1", "hv2"), 3.0, None)
    assert overlap.to_json(now=10.0) == {
        "vm": "vm1",
        "hosts": ["hv1", "hv2"],
        "start": 3.0,
        "end": None,
        "ongoing": True,
        "seconds": 7.0,
    }


def test_one_long_run_against_two_short_ones_gives_two_overlaps():
    entries = [
        start(0.0, "hv1", "vm1"),
        start(1.0, "hv2", "vm1"),
        stop(2.0, "hv2", "vm1"),
        start(3.0, "hv3", "vm1"),
        stop(4.0, "hv3", "vm1"),
        stop(10.0, "hv1", "vm1"),
    ]
    assert journal.overlaps(journal.runs(entries)) == [
        Overlap("vm1", ("hv1", "hv2"), 1.0, 2.0),
        Overlap("vm1", ("hv1", "hv3"), 3.0, 4.0),
    ]


def test_same_vm_twice_on_one_host_is_one_run():
    """The poll may confirm what an event said: a second start or a stray stop adds nothing."""
    entries = [
        start(1.0, "hv1", "vm1"),
        Entry(1.2, "hv1", journal.START, "vm1", "poll"),
        stop(3.0, "hv1", "vm1"),
        Entry(3.1, "hv1", journal.STOP, "vm1", "poll"),
    ]
    assert journal.runs(entries) == [Run("vm1", "hv1", 1.0, 3.0)]


def test_power_off_ends_every_run_of_its_host_only():
    entries = [
        start(1.0, "hv1", "vm1"),
        start(1.0, "hv2", "vm2"),
        Entry(2.0, "hv1", journal.POWER_OFF, via="bmc"),
        start(3.0, "hv3", "vm1"),
    ]
    runs = journal.runs(entries)
    assert runs == [Run("vm1", "hv1", 1.0, 2.0), Run("vm1", "hv3", 3.0, None), Run("vm2", "hv2", 1.0, None)]
    assert journal.overlaps(runs) == []
    assert journal.running(runs) == {"vm1": ["hv3"], "vm2": ["hv2"]}


def test_entries_are_ordered_by_time_not_by_file():
    entries = [stop(5.0, "hv1", "vm1"), start(1.0, "hv1", "vm1")]
    assert journal.runs(entries) == [Run("vm1", "hv1", 1.0, 5.0)]


def test_vms_that_should_run_but_not_on_exactly_one_host():
    where = {"vm1": ["hv1"], "vm2": ["hv1", "hv2"], "vm4": ["hv3"]}
    assert journal.not_running_once(["vm1", "vm2", "vm3"], where) == [
        Misplaced("vm2", ("hv1", "hv2")),
        Misplaced("vm3", ()),
    ]


def test_analyse_reports_both_kinds_and_counts_entries():
    entries = [start(1.0, "hv1", "vm1"), start(2.0, "hv2", "vm1"), Entry(0.5, "hv3", journal.POWER_ON)]
    report = journal.analyse(entries, ["vm1", "vm2"])
    assert not report.clean
    value = report.to_json(now=3.0)
    assert value["overlaps"] == [
        {"vm": "vm1", "hosts": ["hv1", "hv2"], "start": 2.0, "end": None, "ongoing": True, "seconds": 1.0}
    ]
    assert value["not_running_once"] == [{"vm": "vm1", "hosts": ["hv1", "hv2"]}, {"vm": "vm2", "hosts": []}]
    assert value["journals"] == {"entries": {"hv1": 1, "hv2": 1, "hv3": 1}, "first": 0.5, "last": 2.0}
    assert journal.analyse([start(1.0, "hv1", "vm1")], ["vm1"]).clean


def test_parse_reads_what_the_chassis_writes_and_skips_a_torn_last_line():
    lines = [
        json.dumps(
            {
                "t": 1.5,
                "wall": "2024-01-01T00:00:00+00:00",
                "host": "hv1",
                "event": "start",
                "vm": "vm1",
                "via": "event",
            }
        ),
        json.dumps({"t": 2, "host": "hv1", "event": "power-off", "via": "watchdog"}),
    ]
    text = "\n".join(lines) + "\n" + '{"t": 3.0, "host": "hv1", "ev'
    assert journal.parse(text, "j") == [
        Entry(1.5, "hv1", "start", "vm1", "event"),
        Entry(2.0, "hv1", "power-off", None, "watchdog"),
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "j:1: not JSON"),
        ("[1, 2]", "j:1: not a JSON object"),
        ('{"t": "soon", "host": "hv1", "event": "start", "vm": "x"}', "j:1: 't' must be a number"),
        ('{"t": 1, "host": "", "event": "start", "vm": "x"}', "j:1: 'host' must be a node name"),
        ('{"t": 1, "host": "hv1", "event": "explode"}', "j:1: unknown event 'explode'"),
        ('{"t": 1, "host": "hv1", "event": "stop"}', "j:1: a stop needs the VM's name"),
    ],
)
def test_parse_names_the_line_that_is_not_an_entry(line: str, message: str):
    with pytest.raises(journal.JournalError) as caught:
        journal.parse(line + "\n", "j")
    assert str(caught.value).startswith(message)
