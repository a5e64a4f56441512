"""Benchmark: the batch planner against one-at-a-time greedy placement.

Plans 2,000 VMs of mixed sizes onto 100 nodes with each target selector and
reports, per selector:

* the planning time of ``plan_batch`` (median of 5 runs);
* the memory spread after the plan: max / mean memory utilisation
  (allocated / total) across nodes; 1.0 is perfectly even;
* the same spread for the greedy baseline (every VM placed from the same stale
  keepalive figures, nothing reserved, memory unchecked) and how many nodes
  that baseline would overcommit.

Usage: python bench/placement.py [--out FILE] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pvcd.placement.planner import Plan, greedy_one_at_a_time, plan_batch  # noqa: E402
from pvcd.placement.selectors import SELECTORS, NodeCapacity, VmRequest  # noqa: E402

NODE_COUNT = 100
NODE_MEMORY_MIB = 256 * 1024
VM_COUNT = 2000
VM_SIZES_MIB = (512, 1024, 2048, 4096, 8192, 16384)
LIMITED_SHARE = 0.1
RUNS = 5
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "placement.json"

P = ParamSpec("P")


def make_nodes(rng: random.Random) -> list[NodeCapacity]:
    """100 equal nodes already carrying 0-40 % of their memory and some load."""
    nodes = []
    for i in range(NODE_COUNT):
        vm_count = rng.randint(0, 40)
        nodes.append(
            NodeCapacity(
                name=f"hv{i:03d}",
                daemon_state="run",
                domain_state="ready",
                memory_total_mib=NODE_MEMORY_MIB,
                memory_allocated_mib=rng.randint(0, NODE_MEMORY_MIB * 4 // 10 // 1024) * 1024,
                vcpus_allocated=vm_count * rng.randint(1, 4),
                load=round(rng.uniform(0.0, 8.0), 2),
                vm_count=vm_count,
            )
        )
    return nodes


def make_vms(rng: random.Random, node_names: list[str]) -> list[VmRequest]:
    """2,000 VMs leaving a dead node; one in ten limited to 8 random nodes."""
    vms = []
    for i in range(VM_COUNT):
        limit = tuple(sorted(rng.sample(node_names, 8))) if rng.random() < LIMITED_SHARE else ()
        vms.append(
            VmRequest(
                name=f"vm{i:04d}",
                memory_mib=rng.choice(VM_SIZES_MIB),
                vcpus=rng.randint(1, 8),
                current_node="hv-dead",
                node_limit=limit,
            )
        )
    return vms


def utilisation(nodes: tuple[NodeCapacity, ...] | list[NodeCapacity]) -> list[float]:
    """Allocated over total memory, per node."""
    return [n.memory_allocated_mib / n.memory_total_mib for n in nodes]


def spread(nodes: tuple[NodeCapacity, ...] | list[NodeCapacity]) -> float:
    """Max over mean memory utilisation across nodes."""
    used = utilisation(nodes)
    return max(used) / statistics.fmean(used)


def timed(fn: Callable[P, Plan], *args: P.args, **kwargs: P.kwargs) -> tuple[Plan, float]:
    """The plan and the median wall time in milliseconds over RUNS runs."""
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        plan = fn(*args, **kwargs)
        times.append((time.perf_counter() - start) * 1000.0)
    return plan, statistics.median(times)


def run(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    nodes = make_nodes(rng)
    vms = make_vms(rng, [n.name for n in nodes])
    results = {}
    for selector in SELECTORS:
        planned, plan_ms = timed(plan_batch, vms, nodes, selector)
        greedy, greedy_ms = timed(greedy_one_at_a_time, vms, nodes, selector)
        results[selector] = {
            "plan_ms_median": round(plan_ms, 1),
            "plan_spread": round(spread(planned.nodes), 3),
            "plan_max_utilisation": round(max(utilisation(planned.nodes)), 3),
            "plan_placed": len(planned.placements),
            "plan_unplaced": len(planned.unplaced),
            "plan_overcommitted_nodes": len(planned.overcommitted_nodes),
            "greedy_ms_median": round(greedy_ms, 1),
            "greedy_spread": round(spread(greedy.nodes), 3),
            "greedy_max_utilisation": round(max(utilisation(greedy.nodes)), 3),
            "greedy_nodes_used": len({p.node for p in greedy.placements}),
            "greedy_overcommitted_nodes": len(greedy.overcommitted_nodes),
        }
    return {
        "benchmark": "placement",
        "seed": seed,
        "nodes": NODE_COUNT,
        "node_memory_mib": NODE_MEMORY_MIB,
        "vms": VM_COUNT,
        "vm_memory_mib_total": sum(vm.memory_mib for vm in vms),
        "runs": RUNS,
        "initial_spread": round(spread(nodes), 3),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": results,
    }


def print_table(report: dict[str, Any]) -> None:
    print(
        f"{report['vms']} VMs ({report['vm_memory_mib_total'] // 1024} GiB) onto {report['nodes']} nodes "
        f"of {report['node_memory_mib'] // 1024} GiB; seed {report['seed']}; "
        f"spread before: {report['initial_spread']}"
    )
    header = (
        f"{'selector':<9}{'plan ms':>9}{'spread':>8}{'max use':>9}{'placed':>8}{'unplaced':>10}{'overc.':>8}"
        f" | {'greedy spread':>14}{'max use':>9}{'nodes used':>11}{'overcommitted':>14}"
    )
    print(header)
    print("-" * len(header))
    for selector, r in report["results"].items():
        print(
            f"{selector:<9}{r['plan_ms_median']:>9.1f}{r['plan_spread']:>8.3f}{r['plan_max_utilisation']:>9.0%}"
            f"{r['plan_placed']:>8}{r['plan_unplaced']:>10}{r['plan_overcommitted_nodes']:>8}"
            f" | {r['greedy_spread']:>14.3f}{r['greedy_max_utilisation']:>9.0%}{r['greedy_nodes_used']:>11}"
            f"{r['greedy_overcommitted_nodes']:>14}"
        )
    print("spread = max / mean memory utilisation across nodes (1.000 = perfectly even);")
    print("max use = the fullest node's allocated / total memory; overc. = nodes past 100 %")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--seed", type=int, default=20240601, help="RNG seed for nodes and VMs")
    args = parser.parse_args(argv)
    report = run(args.seed)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
