"""The per-node VM loop: make this node's libvirt match ZooKeeper, and say what happened.

The node watches only what it owns: its index (`/pvc/node_vms/NODE`, the VMs
assigned to it and the moves towards or away from it, kept by `pvcd.zk.vms`)
and, for each VM in it, the record, status and migration znodes. Every change
updates that VM's view in memory; a pass then asks `reconcile.decide` about the
owned views and this node's domains, and runs each action in a small worker
pool, one action per VM at a time: a guest taking minutes to shut down must not
hold up the others. Nothing re-reads the whole VM tree: one VM change costs the
re-read of the changed znode, and an action re-reads its VM once more before
acting (`_still_wanted`).

A pass also runs when an action finishes and every `resync_interval` seconds,
to notice what changed in libvirt alone (a guest that shut itself down): those
passes read nothing from ZooKeeper. A domain on this host that no owned VM
claims is looked up on its own (at most once per `store_resync_interval`) so it
can be reported. After a session loss every watch delivers its current value
again; besides, every `store_resync_interval` seconds (10 minutes) the owned VMs
(only those) are read in one batch and any VM whose watched view differs is
watched afresh.

Nothing a single VM does can stop the loop: every failure of an action is
written into that VM (`fail` with the reason) or logged, and the next pass
goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from pvcd.cluster.vm_records import (
    SHOULD_RUN,
    ActualState,
    InvalidVm,
    MigrationMethod,
    MigrationStats,
    MovePhase,
    VmState,
    VmStatus,
    VmView,
)
from pvcd.supervisor import Supervisor
from pvcd.vm.domains import DomainError, Domains
from pvcd.vm.migrators import MigrationFailed, Migrator, migration_address, migrator_for
from pvcd.vm.reconcile import REPORT_ONLY, Act, Action, DomainInfo, decide, decide_vm, memory_shortfall
from pvcd.zk import nodes, schema, vms
from pvcd.zk.base import Store, StoreError, StoreUnavailable, VersionConflict, Versioned

log = logging.getLogger("pvcd.vm")

DEFAULT_RESYNC_INTERVAL = 5.0
DEFAULT_STORE_RESYNC_INTERVAL = 600.0
DEFAULT_WORKERS = 16
"""Actions under way at once on a node. Starts and moves run in parallel (a recovery starts hundreds
of VMs on the surviving nodes; a flush moves several at once): libvirt, not this number, should be
what bounds them."""
MEMORY_READING_MAX_AGE = 1.0
"""Seconds a reading of the host's free memory serves the starts that follow it (see `_MemoryBook`)."""

_PARTS = ("record", "status", "migration")


class _MemoryBook:
    """The free-memory check of concurrent starts: each start reserves its memory under one lock.

    What the check must guarantee is that two starts never both count the same
    free memory. A reading of the host's free memory counts the domains running
    when it was taken; every start reserved since (running now or not yet) is
    subtracted from it, so each check sees every earlier start, as if the starts
    had run one at a time. Only the check is serialised, not the starts.

    A start with no other under way reads afresh, as a start always did. In a
    burst (a recovery starting hundreds of VMs) one reading serves the starts
    of the next `max_age` seconds while others are under way: on the test
    driver a reading costs a call per running domain. Memory freed since (a VM
    stopped) is not in it, so a start that does not fit reads again before it
    is refused; memory taken outside pvcd since is not in it either, which
    widens the window a start always had between its check and its domain
    running to at most `max_age`. A reading forgets the reservations of the
    starts that had finished before it was taken: it counts them itself.
    """

    def __init__(self, read_free_mib: Callable[[], int], max_age: float = MEMORY_READING_MAX_AGE) -> None:
        self._read_free_mib = read_free_mib
        self.max_age = max_age
        self._lock = threading.Lock()
        self._free_mib: int | None = None
        self._read_at = 0.0
        self._next = 0
        self._reserved: dict[int, tuple[int, bool]] = {}
        """Per reservation since the reading (or still under way at it): MiB, and whether the start is over."""

    def reserve(self, vm: str, memory_mib: int, node: str) -> tuple[int | None, str | None]:
        """(a reservation to `settle` or `cancel`, None) if the VM fits; (None, why not) if it does not."""
        with self._lock:
            free_mib = self._free_mib
            busy = any(not over for _, over in self._reserved.values())
            fresh = free_mib is None or not busy or time.monotonic() - self._read_at > self.max_age
            if free_mib is None or fresh:
                free_mib = self._read()
            while True:
                free = free_mib - sum(mib for mib, _ in self._reserved.values())
                shortfall = memory_shortfall(vm, memory_mib, free, node)
                if shortfall is None:
                    self._next += 1
                    self._reserved[self._next] = (memory_mib, False)
                    return self._next, None
                if fresh:
                    return None, shortfall
                free_mib = self._read()
                fresh = True

    def _read(self) -> int:
        # Starts over by now are in the reading; those still under way are not, and stay reserved.
        # (One finishing while it is taken may be counted twice, until the next reading: never too few.)
        self._reserved = {key: entry for key, entry in self._reserved.items() if not entry[1]}
        self._free_mib = None
        free_mib = self._read_free_mib()
        self._free_mib, self._read_at = free_mib, time.monotonic()
        return free_mib

    def settle(self, reservation: int) -> None:
        """The start is over (the domain runs, or the attempt failed): the next reading counts what runs."""
        with self._lock:
            if reservation in self._reserved:
                self._reserved[reservation] = (self._reserved[reservation][0], True)

    def cancel(self, reservation: int) -> None:
        """Nothing was started: the memory is free again."""
        with self._lock:
            self._reserved.pop(reservation, None)


def _read_vm(store: Store, name: str) -> VmView | None:
    """One VM as `vms.read_vm` reads it, its three values asked for at once (one round trip)."""
    record = store.get_async(schema.vm(name))
    status = store.get_async(schema.vm_status(name))
    migration = store.get_async(schema.vm_migration(name))
    return vms.view_of(record.result(), status.result(), migration.result())


def _part_path(part: str, vm: str) -> str:
    if part == "record":
        return schema.vm(vm)
    if part == "status":
        return schema.vm_status(vm)
    return schema.vm_migration(vm)


PASS_DUTY = 0.25
"""The most of a core a burst of reconciler passes may take: after a pass that used t seconds of
CPU, the next waits t × (1 / PASS_DUTY - 1). A pass over a few VMs takes a millisecond, so this adds
nothing when little changes; over hundreds during a burst of starts, it keeps the passes from
starving the starts. Time a pass spends waiting (for ZooKeeper, for libvirt) does not count."""

MAX_PASS_PAUSE = 0.5
"""Seconds: the longest pause between passes, whatever a pass cost."""


def pass_pause(cpu_seconds: float) -> float:
    """How long to wait after a pass that used `cpu_seconds` of CPU before the next (pure)."""
    return min(max(cpu_seconds, 0.0) * (1 / PASS_DUTY - 1), MAX_PASS_PAUSE)


class VmReconciler:
    """Keeps the VMs assigned to `node` running (or not) as ZooKeeper says."""

    def __init__(
        self,
        store: Store,
        domains: Domains,
        node: str,
        shutdown_timeout: float,
        migrator: Migrator | None = None,
        resync_interval: float = DEFAULT_RESYNC_INTERVAL,
        workers: int = DEFAULT_WORKERS,
        held: Callable[[], str | None] = lambda: None,
        supervisor: Supervisor | None = None,
        store_resync_interval: float = DEFAULT_STORE_RESYNC_INTERVAL,
        repair_index: bool = True,
    ) -> None:
        """`held` says why the node must not touch its VMs right now (it was
        fenced and waits for an operator), or None. `repair_index`: put this
        node's index right at start (one read of every VM, once)."""
        self.store = store
        self.held = held
        self.supervisor = supervisor or Supervisor(node)
        self.domains = domains
        self.node = node
        self.shutdown_timeout = shutdown_timeout
        self.migrator = migrator or migrator_for(domains.uri)
        self.resync_interval = resync_interval
        self.store_resync_interval = store_resync_interval
        self.repair_index = repair_index
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._busy: dict[str, Future[None]] = {}
        self._busy_lock = threading.Lock()
        # Starts run in parallel; their free-memory checks are serialised, by reservation.
        self._memory = _MemoryBook(domains.free_memory_mib)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reports: dict[str, str] = {}
        """VMs this node reports but leaves alone (unmanaged, blocked), with the reason."""
        # What the watches delivered (guarded by _watch_lock; callbacks only record and wake).
        self._watch_lock = threading.Lock()
        self._index: set[str] | None = None
        """The names in this node's index, as last delivered (None: not yet watched)."""
        self._raw: dict[str, dict[str, Versioned | None]] = {}
        """Per watched VM, the values delivered so far for its record, status and migration."""
        self._generation: dict[str, int] = {}
        """The current watch generation per watched VM; a callback of an older one stops its watch."""
        self._next_generation = 0
        self._parsed: dict[str, tuple[tuple[Versioned | None, ...], VmView | str | None]] = {}
        """Per watched VM, the view made of the values delivered last (or why it is damaged): parsed once per change."""
        self._foreign: dict[str, tuple[float, VmView | None]] = {}
        """Domains no owned VM claims: the VM of that name as last read, and when (for the reports)."""
        self._last_store_resync = time.monotonic()

    # -- thread control --------------------------------------------------------

    def start(self) -> None:
        """Watch this node's index and run passes in a background thread until `stop`."""
        self._stop.clear()
        if self.repair_index:
            try:
                added, removed = vms.repair_index(self.store, self.node)
            except StoreError as exc:
                log.warning("Index of node %s not checked: %s", self.node, exc)
            else:
                if added or removed:
                    log.warning("Index of node %s put right: added %s, removed %s", self.node, added, removed)
        self.store.watch_children(schema.node_vms(self.node), self._on_index)
        self._wake.set()
        self._thread = threading.Thread(target=self._loop, name=f"vm-reconciler-{self.node}", daemon=True)
        self._thread.start()
        log.info("VM reconciler of node %s started (libvirt %s)", self.node, self.domains.uri)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop passing; actions under way finish in the background (VMs keep running)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._watch_lock:
            self._generation.clear()  # every VM watch stops at its next event
        with self._busy_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def wake(self) -> None:
        self._wake.set()

    def drain(self, timeout: float) -> list[str]:
        """Wait for the VM actions under way; the VMs still busy at the deadline.

        For a self-fence: once the node is held nothing new is submitted, and
        after this returns no start already begun can complete after the destroy
        (unless libvirt hangs past the deadline, which the caller logs).
        """
        with self._busy_lock:
            futures = dict(self._busy)
        _done, pending = wait(futures.values(), timeout=timeout)
        busy = sorted(vm for vm, future in futures.items() if future in pending)
        if busy:
            log.critical("Node %s: VM actions on %s still under way after %.0fs", self.node, ", ".join(busy), timeout)
        return busy

    # -- watches (the store's thread: record and wake, nothing else) -------------

    def _on_index(self, names: list[str]) -> bool:
        if self._stop.is_set():
            return False
        with self._watch_lock:
            self._index = set(names)
        self._wake.set()
        return True

    def _on_value(self, vm: str, part: str, generation: int, value: Versioned | None) -> bool:
        with self._watch_lock:
            if self._stop.is_set() or self._generation.get(vm) != generation:
                return False  # no longer owned, or watched afresh: this watch ends
            self._raw.setdefault(vm, {})[part] = value
        self._wake.set()
        return True

    def _watch_vm(self, vm: str) -> None:
        """Watch the VM's three znodes (afresh: an earlier generation's watches end at their next event)."""
        with self._watch_lock:
            self._next_generation += 1
            generation = self._next_generation
            self._generation[vm] = generation
            self._raw[vm] = {}
        for part in _PARTS:
            self.store.watch_data(
                _part_path(part, vm),
                lambda value, part=part: self._on_value(vm, part, generation, value),  # type: ignore[misc]
            )

    def _follow_index(self) -> None:
        """Start watching the VMs that joined the index, forget those that left it."""
        with self._watch_lock:
            index = set(self._index or ())
            joined = sorted(index - set(self._generation))
            for vm in set(self._generation) - index:
                del self._generation[vm]
                self._raw.pop(vm, None)
        for vm in joined:
            self._watch_vm(vm)

    def owned_views(self) -> tuple[dict[str, VmView], dict[str, str]]:
        """The owned VMs as the watches have them, and the damaged ones with the reason."""
        with self._watch_lock:
            raw = {vm: dict(parts) for vm, parts in self._raw.items() if vm in self._generation}
        views: dict[str, VmView] = {}
        damaged: dict[str, str] = {}
        parsed: dict[str, tuple[tuple[Versioned | None, ...], VmView | str | None]] = {}
        for vm, parts in raw.items():
            if len(parts) < len(_PARTS):
                continue  # being watched: not all of it delivered yet
            values = (parts["record"], parts["status"], parts["migration"])
            known = self._parsed.get(vm)
            if known is not None and all(a is b for a, b in zip(known[0], values, strict=True)):
                result = known[1]
            else:
                try:
                    result = vms.view_of(*values)
                except InvalidVm as exc:
                    result = str(exc)
            parsed[vm] = (values, result)
            if isinstance(result, str):
                damaged[vm] = result
            elif result is not None:
                views[vm] = result
        self._parsed = parsed
        return views, damaged

    def _store_resync(self) -> None:
        """The slow safety net: read the owned VMs once; watch afresh any whose view differs."""
        self._last_store_resync = time.monotonic()
        self._foreign.clear()
        index = set(vms.owned(self.store, self.node))
        with self._watch_lock:
            if index != self._index:
                log.warning("Index of node %s: watch missed %s", self.node, sorted(index ^ (self._index or set())))
                self._index = index
        self._follow_index()
        watched, _damaged = self.owned_views()
        read, _damaged = vms.read_owned(self.store, self.node)
        for vm in sorted(index):
            fresh = read.get(vm)
            if fresh != watched.get(vm):
                with self._watch_lock:
                    still_owned = vm in self._generation
                if still_owned:
                    log.warning("VM %s on node %s: watched view out of date; watching it afresh", vm, self.node)
                    self._watch_vm(vm)

    def _unclaimed(self, domains: dict[str, DomainInfo], views: dict[str, VmView]) -> dict[str, VmView]:
        """The VMs (if any) of the domains here that no owned VM claims, read on their own."""
        now = time.monotonic()
        found: dict[str, VmView] = {}
        for name in sorted(domains.keys() - views.keys()):
            cached = self._foreign.get(name)
            if cached is None or now - cached[0] >= self.store_resync_interval:
                try:
                    cached = (now, vms.read_vm(self.store, name))
                except InvalidVm:
                    cached = (now, None)
                self._foreign[name] = cached
            if cached[1] is not None:
                found[name] = cached[1]
        for name in set(self._foreign) - domains.keys():
            del self._foreign[name]
        return found

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.resync_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            began, cpu = time.monotonic(), time.thread_time()
            try:
                if began - self._last_store_resync >= self.store_resync_interval:
                    self._store_resync()
                self.run_once()
            except StoreUnavailable as exc:
                log.warning("VM pass on node %s skipped: ZooKeeper unreachable (%s)", self.node, exc)
            except (StoreError, DomainError) as exc:
                log.error("VM pass on node %s failed: %s", self.node, exc)
            except Exception as exc:  # a bug must not end the loop: counted, and tried again next pass
                self.supervisor.failed("vm-reconciler", exc)
            else:
                self.supervisor.succeeded("vm-reconciler")
            # Changes that come during the pause are all taken by the next pass: in a burst (a
            # recovery starting hundreds of VMs here) passes then take at most a share of a core.
            self._stop.wait(pass_pause(time.thread_time() - cpu))

    # -- one pass --------------------------------------------------------------

    def run_once(self, wait_for_actions: bool = False) -> list[Action]:
        """Decide and start this pass's actions; with `wait_for_actions`, return once they are done."""
        reason = self.held()
        if reason is not None:
            log.debug("VM pass on node %s skipped: %s", self.node, reason)
            return []
        self._follow_index()
        views, damaged = self.owned_views()
        domains = self.domains.list()
        views.update(self._unclaimed(domains, views))
        for name, problem in damaged.items():
            self._report(name, f"VM {name} has a damaged record and is left alone: {problem}")
        actions = decide(self.node, views, domains)
        started: list[Future[None]] = []
        current_reports: set[str] = set(damaged)
        for action in actions:
            if action.act in REPORT_ONLY:
                current_reports.add(action.vm)
                self._report(action.vm, action.note)
                continue
            future = self._submit(action)
            if future is not None:
                started.append(future)
        for name in set(self.reports) - current_reports:
            log.info("VM %s on node %s: no longer reported (%s)", name, self.node, self.reports.pop(name))
        if wait_for_actions:
            wait(started)
        return actions

    def _report(self, vm: str, note: str) -> None:
        if self.reports.get(vm) != note:
            log.warning("Node %s leaves VM %s alone: %s", self.node, vm, note)
            self.reports[vm] = note

    def _submit(self, action: Action) -> Future[None] | None:
        with self._busy_lock:
            # held() again here: a pass that began before the node was fenced must not start anything after.
            if action.vm in self._busy or self._stop.is_set() or self.held() is not None:
                return None
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=f"vm-{self.node}")
            future = self._pool.submit(self._execute, action)
            self._busy[action.vm] = future
        return future

    def _execute(self, action: Action) -> None:
        handlers: dict[Act, Callable[[Action, VmView], None]] = {
            Act.START: self._start,
            Act.RESTART: self._restart,
            Act.SHUTDOWN: self._shutdown,
            Act.STOP: self._stop_now,
            Act.REPORT_RUNNING: self._report_running,
            Act.REPORT_STOPPED: self._report_stopped,
            Act.GUEST_STOPPED: self._guest_stopped,
            Act.MIGRATE_OUT: self._migrate_out,
            Act.RELEASE: self._release,
            Act.FINISH_MOVE: self._finish_move,
        }
        try:
            fresh = self._still_wanted(action)
            if fresh is not None:
                handlers[action.act](action, fresh)
        except VersionConflict:
            log.info("VM %s changed in ZooKeeper while node %s acted on it; looking again", action.vm, self.node)
        except StoreUnavailable as exc:
            log.warning("VM %s on node %s: ZooKeeper unreachable (%s); retrying next pass", action.vm, self.node, exc)
        except (StoreError, DomainError) as exc:
            log.error("VM %s on node %s: %s failed: %s; retrying next pass", action.vm, self.node, action.act, exc)
        except Exception as exc:  # one VM's bug must not take the others down
            log.error("VM %s on node %s: %s failed unexpectedly", action.vm, self.node, action.act)
            self.supervisor.failed("vm-actions", exc)
        else:
            self.supervisor.succeeded("vm-actions")
        finally:
            with self._busy_lock:
                self._busy.pop(action.vm, None)
            self._wake.set()

    def _still_wanted(self, action: Action) -> VmView | None:
        """The VM as it is now, if the action decided on the pass's snapshot still holds.

        A pass reads everything first and its actions start later; in between,
        an operator or an earlier action may have changed the VM. Deciding
        again on a fresh read keeps a stale snapshot from, say, stopping a VM
        that was just started again.
        """
        fresh = _read_vm(self.store, action.vm)
        if fresh is None:
            return None
        again = decide_vm(self.node, fresh, self.domains.info(action.vm))
        if again != action:
            log.debug("VM %s on node %s: %s no longer needed (now %s)", action.vm, self.node, action.act, again)
            return None
        return fresh

    # -- actions ---------------------------------------------------------------

    def _status(self, state: ActualState, message: str | None = None) -> VmStatus:
        return VmStatus(node=self.node, state=state, message=message)

    def _start(self, action: Action, view: VmView) -> None:
        started = self._start_domain(view)
        if started is None:
            return
        write = vms.VmWrite(self.store, started).status(self._status(ActualState.RUNNING))
        if action.then is not None:
            write.record(started.record.with_state(action.then))
        write.commit()
        log.info("VM %s started on node %s", started.name, self.node)

    def _start_domain(self, view: VmView) -> VmView | None:
        """Claim the VM, check memory, define and start it; on failure put it in `fail` and return None.

        The claim (status `starting`, checked against the record version the
        decision was made on) comes first: once it is in ZooKeeper no other
        node starts the VM and no direct move can take it away unnoticed.
        """
        record = view.record
        reservation, shortfall = self._memory.reserve(record.name, record.memory_mib, self.node)
        if reservation is None:
            self._fail(view, shortfall or "not enough memory")
            return None
        try:
            view = vms.VmWrite(self.store, view).check_record().status(self._status(ActualState.STARTING)).commit()
        except BaseException:
            self._memory.cancel(reservation)
            raise
        try:
            self.domains.start(record.name, record.xml)
        except DomainError as exc:
            self._fail(view, str(exc))
            return None
        finally:
            self._memory.settle(reservation)
        return view

    def _fail(self, view: VmView, reason: str) -> None:
        """Put the VM in `fail` with `reason`, the status telling whether it still runs here.

        A move that brought the VM here is over too: the same transaction ends it.
        """
        try:
            running = self.domains.is_running(view.name)
            if not running:
                self.domains.undefine(view.name)
        except DomainError as exc:
            reason = f"{reason}; then: {exc}"
            running = True
        state = ActualState.RUNNING if running else ActualState.STOPPED
        log.error("VM %s failed on node %s: %s", view.name, self.node, reason)
        write = vms.VmWrite(self.store, view).record(view.record.with_state(VmState.FAIL, reason))
        if view.migration is not None and view.migration.target == self.node:
            write.delete_migration()
        write.status(self._status(state, reason)).commit()

    def _restart(self, action: Action, view: VmView) -> None:
        view = vms.VmWrite(self.store, view).status(self._status(ActualState.STOPPING, "restarting")).commit()
        try:
            outcome = self.domains.shutdown(view.name, self.shutdown_timeout)
        except DomainError as exc:
            self._fail(view, str(exc))
            return
        log.info("VM %s on node %s %s; starting it again", view.name, self.node, outcome)
        self._start(action, view)

    def _shutdown(self, action: Action, view: VmView) -> None:
        view = vms.VmWrite(self.store, view).status(self._status(ActualState.STOPPING)).commit()
        try:
            outcome = self.domains.shutdown(view.name, self.shutdown_timeout)
        except DomainError as exc:
            self._fail(view, str(exc))
            return
        self._stopped(view, action, outcome)

    def _stop_now(self, action: Action, view: VmView) -> None:
        try:
            self.domains.destroy(view.name)
            self.domains.undefine(view.name)
        except DomainError as exc:
            self._fail(view, str(exc))
            return
        self._stopped(view, action, "destroyed")

    def _stopped(self, view: VmView, action: Action, outcome: str) -> None:
        write = vms.VmWrite(self.store, view).status(self._status(ActualState.STOPPED, outcome))
        if action.then is not None:
            write.record(view.record.with_state(action.then, view.record.reason))
        write.commit()
        log.info("VM %s on node %s %s", view.name, self.node, outcome)

    def _report_running(self, action: Action, view: VmView) -> None:
        write = vms.VmWrite(self.store, view).status(self._status(ActualState.RUNNING))
        if action.then is not None:
            write.record(view.record.with_state(action.then))
        write.commit()

    def _report_stopped(self, action: Action, view: VmView) -> None:
        try:
            self.domains.undefine(view.name)
        except DomainError as exc:
            log.error("VM %s on node %s: %s", view.name, self.node, exc)
        write = vms.VmWrite(self.store, view)
        status = view.status
        if not status.active or status.node == self.node:
            write.status(self._status(ActualState.STOPPED, status.message))
        if action.then is not None:
            write.record(view.record.with_state(action.then, view.record.reason))
        write.commit()

    def _guest_stopped(self, action: Action, view: VmView) -> None:
        reason = f"the guest shut itself down on {self.node}"
        log.info("VM %s: %s; recording it as stopped", view.name, reason)
        try:
            self.domains.undefine(view.name)
        except DomainError as exc:
            log.error("VM %s on node %s: %s", view.name, self.node, exc)
        vms.VmWrite(self.store, view).status(self._status(ActualState.STOPPED, reason)).record(
            view.record.with_state(VmState.STOP, reason)
        ).commit()

    # -- moves -----------------------------------------------------------------

    def _migrate_out(self, action: Action, view: VmView) -> None:
        """Source of a move, VM running here: migrate (or shut down), then release."""
        migration = view.migration
        assert migration is not None
        if migration.method == MigrationMethod.LIVE:
            view = (
                vms.VmWrite(self.store, view)
                .migration(dataclasses.replace(migration, phase=MovePhase.MIGRATING))
                .status(self._status(ActualState.MIGRATING, f"migrating to {migration.target}"))
                .commit()
            )
            target_info = nodes.read_node(self.store, migration.target)
            address = migration_address(target_info.info if target_info else {}, migration.target)
            try:
                figures = self.migrator.migrate(self.domains, view.name, address)
            except MigrationFailed as exc:
                log.warning("VM %s: %s; falling back to a shutdown-migrate", view.name, exc)
            else:
                if self.migrator.leaves_running:
                    status = VmStatus(migration.target, ActualState.RUNNING, f"live-migrated from {self.node}")
                else:
                    status = self._status(ActualState.STOPPED, f"left {self.node} by {self.migrator.how} migration")
                stats = MigrationStats(self.node, migration.target, figures) if figures else None
                self._release_now(view, self.migrator.how, status, stats)
                return
        view = (
            vms.VmWrite(self.store, view)
            .status(self._status(ActualState.STOPPING, f"shutting down to move to {migration.target}"))
            .commit()
        )
        try:
            outcome = self.domains.shutdown(view.name, self.shutdown_timeout)
        except DomainError as exc:
            self._abort_move(view, str(exc))
            return
        self._release_now(
            view, "shutdown", self._status(ActualState.STOPPED, f"{outcome} to move to {migration.target}")
        )

    def _release(self, action: Action, view: VmView) -> None:
        """Source of a move with nothing running here: tidy up and release at once."""
        try:
            self.domains.undefine(view.name)
        except DomainError as exc:
            log.error("VM %s on node %s: %s", view.name, self.node, exc)
        status = view.status
        if status.active and status.node != self.node:
            # Another node reports the VM (the target, after a live migration this node
            # did not get to release): its status stays, and the target sees its own domain.
            self._release_now(view, "not_running", None)
            return
        self._release_now(view, "not_running", self._status(ActualState.STOPPED, status.message))

    def _release_now(
        self, view: VmView, how: str, status: VmStatus | None, stats: MigrationStats | None = None
    ) -> None:
        migration = view.migration
        assert migration is not None
        write = vms.VmWrite(self.store, view).migration(migration.released(how, stats))
        if status is not None:
            write.status(status)
        write.commit()
        log.info("VM %s released by node %s to %s (%s)", view.name, self.node, migration.target, how)

    def _abort_move(self, view: VmView, reason: str) -> None:
        """The source could not let the VM go: keep it here, in `fail`, and cancel the move."""
        migration = view.migration
        assert migration is not None
        running = self.domains.is_running(view.name)
        reason = f"move to {migration.target} failed: {reason}"
        log.error("VM %s on node %s: %s", view.name, self.node, reason)
        record = dataclasses.replace(
            view.record, node=self.node, lastnode=migration.previous_lastnode, state=VmState.FAIL, reason=reason
        )
        vms.VmWrite(self.store, view).record(record).delete_migration().status(
            self._status(ActualState.RUNNING if running else ActualState.STOPPED, reason)
        ).commit()

    def _finish_move(self, action: Action, view: VmView) -> None:
        """Target of a released move: start the VM if it should run, then close the move."""
        migration = view.migration
        assert migration is not None
        record = view.record
        then = VmState.START if record.state in (VmState.MIGRATE, VmState.UNMIGRATE) else record.state
        if self.domains.is_running(view.name):
            status = self._status(ActualState.RUNNING, f"arrived from {migration.source} ({migration.how})")
        elif record.state in SHOULD_RUN:
            started = self._start_domain(view)
            if started is None:
                return
            view = started
            status = self._status(ActualState.RUNNING, f"started after {migration.how} move from {migration.source}")
        else:
            status = view.status
        last = migration.stats or view.record.last_migration
        record = dataclasses.replace(view.record, state=then, last_migration=last)
        write = vms.VmWrite(self.store, view).delete_migration().record(record)
        if status != view.status:
            write.status(status)
        write.commit()
        log.info(
            "VM %s arrived on node %s from %s (%s, %s)",
            view.name,
            self.node,
            migration.source,
            migration.kind,
            migration.how,
        )
