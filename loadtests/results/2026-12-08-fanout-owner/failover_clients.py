"""The failover drill of `make chaos`, printing the three clients that waited longest for a
message sent after the fault, with what they received around it. Run from a tree's root."""

import runpy
import sys

import harness.faults.scenarios as scenarios
from harness import recovery

original = scenarios.delivery_recovery


def dumping(clients, injected_at):
    rows = []
    for c in clients:
        got = recovery.first_fresh_delivery(c, injected_at)
        rows.append(((got - injected_at) if got else float("inf"), c))
    rows.sort(key=lambda r: -r[0])
    for delay, c in rows[:3]:
        print("CLIENT", c.replica, c.room, "first fresh", round(delay, 2))
        tl = [
            (round(g - injected_at, 2), round(cr - injected_at, 2))
            for g, cr in c.timeline
            if g >= injected_at - 1
        ]
        print("  timeline (got, created) rel:", tl[:40])
        print("  refusals:", [round(s - injected_at, 2) for s in c.refusals if s][:30])
        print(
            "  acks:",
            [
                (round(g - injected_at, 2), round(s - injected_at, 2))
                for g, s in c.acks
                if s and s >= injected_at - 1
            ][:20],
        )
    median = sorted(r[0] for r in rows)[len(rows) // 2]
    print("median", round(median, 2))
    return original(clients, injected_at)


scenarios.delivery_recovery = dumping
sys.argv = [
    "faults.py",
    "--scenario",
    "failover",
    "--clients",
    "60",
    "--rooms",
    "6",
    "--rate",
    "5",
    "--seconds",
    "20",
    "--quiesce",
    "30",
]
runpy.run_path("loadtests/faults.py", run_name="__main__")
