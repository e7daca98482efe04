"""Load on ``glocal serve``: concurrent searchers and a writer against a real service, plus a /health poller.

Builds a small sift index from the embedded benchmark (scikit-image photos, no download), starts
``python -m glocal serve`` (uvicorn) on a free localhost port in a subprocess, then runs two phases of
``--seconds`` each: ``--searchers`` search threads + one writer (adding then removing an image, with the
token) -- within the queue limit, so every request must succeed -- and an overload phase with
``--overload-searchers`` search threads, more than ``--max-queue`` + 1, where the surplus must get 503
(never a crash or a hang). A separate process (so the client threads' GIL cannot delay it) polls
``GET /health`` every 50 ms throughout; an idle first phase gives its latency on the machine as it is. The
exit status is 1 on any error (a 503 because a request overran ``--request-timeout`` or its index worker
stopped counts as one), any 503 within the queue limit, a service that died, or a ``/health`` poll slower than
``--health-max-ms`` (100) at any time. The load average at the start and the end and the command line, to be
re-run as printed on a quiet machine, are printed with the table.

    python benchmarks/serve_load.py --seconds 15
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

TOKEN = "serve-load-token"


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"search": [], "write": []})
    busy: dict[str, int] = field(default_factory=lambda: {"search": 0, "write": 0})
    errors: dict[str, list[str]] = field(default_factory=lambda: {"search": [], "write": []})
    lock: threading.Lock = field(default_factory=threading.Lock)

    waited_out: dict[str, int] = field(default_factory=lambda: {"search": 0, "write": 0})

    def record(self, kind: str, seconds: float, status: int | None, what: str = "") -> None:
        with self.lock:
            if status == 503 and "not free within" in what:  # the wait limit (--lock-timeout), not the queue
                self.waited_out[kind] += 1
            elif status == 503 and ("took longer than" in what or "worker" in what):  # overran, or a dead worker
                self.errors[kind].append(what)
            elif status == 503:
                self.busy[kind] += 1
            elif status is not None and status < 300:
                self.latencies[kind].append(seconds)
            else:
                self.errors[kind].append(what or str(status))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _searcher(base: str, queries: list[Path], stop: threading.Event, tally: Tally, seed: int,
              busy_pause: float) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=120) as client:
        while not stop.is_set():
            path = rng.choice(queries)
            t0 = time.perf_counter()
            try:
                res = client.post("/search", files={"image": (path.name, path.read_bytes(), "image/jpeg")},
                                  params={"top": 10})
                tally.record("search", time.perf_counter() - t0, res.status_code, f"{res.status_code} {res.text[:160]}")
            except httpx.HTTPError as exc:
                tally.record("search", time.perf_counter() - t0, None, repr(exc))
                continue
            if res.status_code == 503:
                time.sleep(busy_pause)


def _writer(base: str, images: list[Path], stop: threading.Event, tally: Tally, busy_pause: float) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    k = 0
    with httpx.Client(base_url=base, timeout=120, headers=auth) as client:
        while not stop.is_set():
            path, name = images[k % len(images)], f"load/{k}.jpg"
            k += 1
            for method in ("add", "remove"):
                t0 = time.perf_counter()
                try:
                    if method == "add":
                        res = client.post("/images", data={"name": name},
                                          files={"image": (path.name, path.read_bytes(), "image/jpeg")})
                    else:
                        res = client.delete(f"/images/{name}")
                except httpx.HTTPError as exc:
                    tally.record("write", time.perf_counter() - t0, None, f"{method} {exc!r}")
                    break
                tally.record("write", time.perf_counter() - t0, res.status_code,
                             f"{method} {res.status_code} {res.text[:160]}")
                if res.status_code >= 300:
                    if res.status_code == 503:
                        time.sleep(busy_pause)
                    break  # not added: nothing to remove


def _health_poller(base: str, stop: Any, out: Any) -> None:
    """(own process: the client threads' GIL does not delay it) GET /health every 50 ms until ``stop`` is set;
    sends back ``(start time, seconds, failure or "")`` per poll."""
    polls = []
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            t0, failure = time.perf_counter(), ""
            try:
                res = client.get("/health")
                if res.status_code != 200:
                    failure = str(res.status_code)
            except httpx.HTTPError as exc:
                failure = repr(exc)
            polls.append((t0, time.perf_counter() - t0, failure))
            time.sleep(0.05)
    out.send(polls)


def run_phase(base: str, searchers: int, writers: int, seconds: float, queries: list[Path],
              images: list[Path], busy_pause: float) -> tuple[Tally, float, float]:
    tally, stop = Tally(), threading.Event()
    threads = [threading.Thread(target=_searcher, args=(base, queries, stop, tally, i, busy_pause))
               for i in range(searchers)]
    threads += [threading.Thread(target=_writer, args=(base, images, stop, tally, busy_pause))
                for _ in range(writers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(180)
        if t.is_alive():
            raise SystemExit("a client thread hung for 3 minutes after the end of the phase")
    return tally, t0, time.perf_counter() - t0


def _ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:.0f}" if values else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="Length of each phase.")
    ap.add_argument("--searchers", type=int, default=8, help="Search threads in the phase within the limit.")
    ap.add_argument("--overload-searchers", type=int, default=24, help="Search threads in the overload phase "
                    "(0 skips it).")
    ap.add_argument("--images", type=int, default=30, help="Images in the index.")
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--lock-timeout", type=float, default=30.0)
    ap.add_argument("--request-timeout", type=float, default=60.0)
    ap.add_argument("--health-max-ms", type=float, default=100.0, help="Exit 1 when any /health poll took longer.")
    ap.add_argument("--idle-seconds", type=float, default=5.0, help="A first phase without clients: /health's "
                    "latency on this machine as it is (0 skips it).")
    ap.add_argument("--busy-pause", type=float, default=0.05, help="Seconds a search client waits after a 503 "
                    "before its next request (0: hammer the service).")
    args = ap.parse_args()
    command = " ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]])
    load_start = os.getloadavg()

    from glocal.demo.synthetic import make_benchmark
    from glocal.index.builder import build_index

    with tempfile.TemporaryDirectory(prefix="glocal-serve-load-") as tmp:
        bench = make_benchmark(Path(tmp) / "bench", seed=0)
        index = Path(tmp) / "load.glx"
        t0 = time.perf_counter()
        build_index(bench.db_paths[:args.images], bench.db_names[:args.images], index, progress=False,
                    settings={"codebook_size": 256}).collection.close()
        print(f"index: {args.images} images (sift, codebook 256), built in {time.perf_counter() - t0:.1f} s")
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            [sys.executable, "-m", "glocal", "serve", str(index), "--port", str(port), "--writable",
             "--max-queue", str(args.max_queue), "--lock-timeout", str(args.lock_timeout),
             "--request-timeout", str(args.request_timeout)],
            env=os.environ | {"GLOCAL_TOKEN": TOKEN, "GLOCAL_PROGRESS": "0"}, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"the service exited ({server.returncode}):\n"
                                     + (Path(tmp) / "server.log").read_text())
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the service did not answer /health within 120 s")
                time.sleep(0.2)
            queries, images = bench.query_paths, bench.db_paths[args.images:] or bench.db_paths
            ctx = mp.get_context("spawn")
            stop_health = ctx.Event()
            receive, send = ctx.Pipe(duplex=False)
            poller = ctx.Process(target=_health_poller, args=(base, stop_health, send))
            poller.start()
            time.sleep(1.0)  # the poller's start-up
            phases = [("idle service (the machine's floor)", 0, 0)] if args.idle_seconds else []
            phases.append((f"{args.searchers} searchers + 1 writer", args.searchers, 1))
            if args.overload_searchers:
                phases.append((f"overload: {args.overload_searchers} searchers + 1 writer",
                               args.overload_searchers, 1))
            rows = []
            for label, searchers, writers in phases:
                seconds = args.idle_seconds if not searchers else args.seconds
                rows.append((label, *run_phase(base, searchers, writers, seconds, queries, images, args.busy_pause)))
            stop_health.set()
            polls = receive.recv()
            poller.join(60)
            alive = server.poll() is None
            service = httpx.get(f"{base}/info", timeout=30).json()["service"] if alive else {}
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()

    print(f"command: {command}")
    print(f"service: --max-queue {args.max_queue} --lock-timeout {args.lock_timeout:g} --request-timeout "
          f"{args.request_timeout:g}, {args.seconds:g} s per phase, {os.cpu_count()} CPUs, load average (1, 5, 15 min) "
          f"{' '.join(f'{x:.1f}' for x in load_start)} at the start, {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"at the end; clients pause {args.busy_pause:g} s after a 503; index worker restarts: "
          f"{service.get('worker_restarts', '?')}\n")
    head = (f"| {'phase':<36} | {'kind':<6} | {'ok':>5} | {'req/s':>6} | {'p50 ms':>6} | {'p95 ms':>6} | "
            f"{'p99 ms':>6} | {'503':>5} | {'waited out':>10} | {'errors':>6} | {'/health p99 / max ms':>20} |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    all_errors = []
    for label, tally, start, elapsed in rows:
        hl = [sec for t0, sec, _ in polls if start <= t0 < start + elapsed]
        hcol = f"{_ms(hl, 99)} / {max(hl) * 1000:.0f}" if hl else "-"
        for kind in ("search", "write") if "idle" not in label else ("search",):
            lat = tally.latencies[kind]
            all_errors += tally.errors[kind]
            print(f"| {label if kind == 'search' else '':<36} | {kind:<6} | {len(lat):>5} | "
                  f"{len(lat) / elapsed:>6.1f} | {_ms(lat, 50):>6} | {_ms(lat, 95):>6} | {_ms(lat, 99):>6} | "
                  f"{tally.busy[kind]:>5} | {tally.waited_out[kind]:>10} | {len(tally.errors[kind]):>6} | {hcol if kind == 'search' else '':>20} |")
    seconds = [sec for _, sec, _ in polls]
    failures = [f for _, _, f in polls if f]
    within = [tally.busy[k] + tally.waited_out[k] for label, tally, *_ in rows if "overload" not in label
              for k in tally.busy]
    print("(503: refused, the queue was full; waited out: 503 after --lock-timeout s without the index)")
    slow = [sec for sec in seconds if sec * 1000 > args.health_max_ms]
    print(f"\n/health: {len(seconds)} polls, p99 {_ms(seconds, 99)} ms, max {max(seconds) * 1000:.0f} ms, "
          f"{len(slow)} over {args.health_max_ms:g} ms, {len(failures)} failed; 503 within the queue limit: "
          f"{sum(within)}; service alive at the end: {alive}")
    for error in sorted(set(all_errors))[:10]:
        print("error:", error)
    if all_errors or failures or sum(within) or not alive or slow or service.get("worker_restarts"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
