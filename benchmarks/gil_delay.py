"""How long a thread waits for the GIL while other code holds it in long C calls: the reason the service runs its
index work in a separate process (``glocal/serve/worker.py``).

The "busy" code is the service's test hook (``sum(range(10_000_000))`` in a loop: one C call of 0.1-0.3 s that
keeps the GIL, as some numpy / OpenCV / PyTorch sections do). While it runs in a thread of this process, then in
a separate process, the main thread sleeps 1 ms ``--samples`` times and records how late it wakes up: the first
is what ``/health`` waited for when searches ran in threads of the HTTP process; the second is the machine's own
scheduling delay. Prints both with the load average; exit status 0.

    python benchmarks/gil_delay.py
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import threading
import time


def _burn(stop) -> None:  # noqa: ANN001 - a threading.Event or a multiprocessing Event
    while not stop.is_set():
        sum(range(10_000_000))


def _worst_wakeup(samples: int) -> float:
    worst = 0.0
    for _ in range(samples):
        t0 = time.perf_counter()
        time.sleep(0.001)
        worst = max(worst, time.perf_counter() - t0 - 0.001)
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=50)
    args = ap.parse_args()
    load = os.getloadavg()
    rows = [("idle (nothing else running here)", _worst_wakeup(args.samples))]
    stop = threading.Event()
    thread = threading.Thread(target=_burn, args=(stop,))
    thread.start()
    time.sleep(0.3)
    rows.append(("busy code in a thread of this process", _worst_wakeup(args.samples)))
    stop.set()
    thread.join()
    ctx = mp.get_context("spawn")
    pstop = ctx.Event()
    proc = ctx.Process(target=_burn, args=(pstop,))
    proc.start()
    time.sleep(1.0)
    rows.append(("busy code in a separate process", _worst_wakeup(args.samples)))
    pstop.set()
    proc.join()
    print(f"command: python benchmarks/gil_delay.py --samples {args.samples}; {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in load)} at the start, {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
    print("| where the busy code runs | worst extra wake-up delay of a 1 ms sleep, ms |\n|---|---|")
    for label, worst in rows:
        print(f"| {label} | {worst * 1000:.1f} |")


if __name__ == "__main__":
    main()
