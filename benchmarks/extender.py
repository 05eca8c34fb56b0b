"""Extender latency: filter + prioritize for one pod over 500 candidate nodes in a
5,000-node, 500-domain cluster (DESIGN quality bars: p99 ≤ 2 ms of compute; over
HTTP p99 ≤ 10 ms at 200 requests/s).

    python -m benchmarks.extender                 # both parts
    python -m benchmarks.extender --part compute  # decisions only
    python -m benchmarks.extender --part http --rate 200 --seconds 20

The cluster is :func:`benchmarks.synthetic.synthetic_problem` at 5,000 nodes, 19
rows and 480 racks (500 domains, T = 144), two thirds of the greedy placement
already bound, a greedy plan published. Every iteration invalidates the per-version
cache first (as a bind between two pods does), so each one pays the full cost.

* compute: ``Decider.filter`` + ``Decider.prioritize`` on parsed requests, and the
  same through the byte-in/byte-out handlers (orjson parse, decide, encode);
* HTTP: uvicorn serving the app on 127.0.0.1 (a free port), a second process sending
  filter+prioritize pairs at a fixed rate, open-loop, for a bounded time; latency is
  per request, measured by the client.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from benchmarks.synthetic import synthetic_problem
from extender import runtime
from extender.cluster.state import PodRecord
from extender.config.loading import config_from_problem
from extender.config.model import PlannerSettings, ScoringSpec
from extender.webhook.planner import Planner
from extender.webhook.protocol import ExtenderArgs, parse
from extender.webhook.settings import Limits
from placement.problem import Problem
from placement.strategies import run_strategy

NODES, RACKS, ROWS, SERVICES = 5000, 480, 19, 50
CANDIDATES = 500


@dataclass
class Cluster:
    problem: Problem
    ext: runtime.Extender
    bodies: list[tuple[bytes, bytes]]  # (filter body, prioritize body) per sample pod


def build_cluster(
    seed: int = 0, samples: int = 64, fill: float = 2 / 3, *, reserve_plan: bool = False
) -> Cluster:
    """The benchmark cluster and ``samples`` request bodies (see the module doc);
    ``fill`` is the share of greedy's placement bound beforehand (1.0: power-bound,
    most candidates fail and every failure is explained)."""
    problem = synthetic_problem(nodes=NODES, racks=RACKS, rows=ROWS, services=SERVICES, seed=seed)
    assert problem.tree.size == 1 + ROWS + RACKS
    config = config_from_problem(
        problem,
        planner=PlannerSettings(strategy="greedy"),
        scoring=ScoringSpec.model_validate({"reservePlan": reserve_plan}),
    )
    ext = runtime.from_scenario(problem, config)
    state, svc, fleet = ext.state, problem.services, problem.fleet
    placed = run_strategy("greedy", problem).assignment.counts
    rng = np.random.default_rng(seed)
    k = 0
    for s, n in zip(*placed.nonzero(), strict=True):
        for _ in range(int(placed[s, n])):
            if rng.random() < fill:
                k += 1
                state.add_pod(
                    PodRecord(
                        uid=f"bench-{k}",
                        namespace="bench",
                        name=f"bench-{k}",
                        node=fleet.names[n],
                        service=svc.names[s],
                        profile=config.services[svc.names[s]].profile,  # type: ignore[arg-type]
                        gpus=int(svc.gpus[s]),
                        profile_key=f"service:{svc.names[s]}",
                    )
                )
    assert ext.planner is not None
    Planner.plan_now(ext.planner)
    bodies = []
    names = np.array(fleet.names)
    for i in range(samples):
        s = int(rng.integers(svc.size))
        free = (
            state.node_gpus[state.node_slots(list(fleet.names))]
            - state.node_used[state.node_slots(list(fleet.names))]
        )
        pool = np.flatnonzero(free >= svc.gpus[s])
        chosen = rng.choice(pool, size=min(CANDIDATES, pool.size), replace=False)
        pod = scheduler_pod(f"sample-{i}", svc.names[s], int(svc.gpus[s]))
        candidates = names[np.sort(chosen)].tolist()
        filter_body = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": candidates})
        result = ext.decider.filter(parse(filter_body, ExtenderArgs))
        passed = [candidates[j] for j in result.passed] or candidates
        bodies.append((filter_body, orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": passed})))
    return Cluster(problem, ext, bodies)


def scheduler_pod(name: str, service: str, gpus: int) -> dict[str, Any]:
    """A pod shaped as kube-scheduler sends it (a Deployment's replica, vLLM-like)."""
    rs = f"{service}-7d9f8b6c5d"
    return {
        "metadata": {
            "name": f"{rs}-{name}",
            "generateName": f"{rs}-",
            "namespace": "llm",
            "uid": f"00000000-0000-4000-8000-{abs(hash(name)) % 10**12:012d}",
            "resourceVersion": "4242",
            "creationTimestamp": "2025-01-01T10:00:00Z",
            "labels": {"app": service, "pod-template-hash": "7d9f8b6c5d"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": rs,
                    "uid": "11111111-2222-4333-8444-555555555555",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.7.2",
                    "args": [
                        "--model",
                        "meta-llama/Meta-Llama-3-70B",
                        "--tensor-parallel-size",
                        "8",
                    ],
                    "resources": {
                        "limits": {"nvidia.com/gpu": str(gpus)},
                        "requests": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": str(gpus)},
                    },
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "powercap-scheduler",
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    }


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000.0
    return {
        "n": float(ms.size),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
    }


def bench_compute(cluster: Cluster, iterations: int = 2000) -> dict[str, dict[str, float]]:
    """p50/p99 of filter + prioritize, decisions only and byte-to-byte."""
    ext = cluster.ext
    parsed = [(parse(f, ExtenderArgs), parse(p, ExtenderArgs)) for f, p in cluster.bodies]
    app_handlers = _handlers(ext)
    decide: list[float] = []
    handle: list[float] = []
    for i in range(iterations + 200):
        f_args, p_args = parsed[i % len(parsed)]
        ext.state.version += 1  # as a bind between pods would: no cached view
        t0 = time.perf_counter()
        ext.decider.filter(f_args)
        ext.decider.prioritize(p_args)
        t1 = time.perf_counter()
        f_body, p_body = cluster.bodies[i % len(cluster.bodies)]
        ext.state.version += 1
        t2 = time.perf_counter()
        app_handlers[0](f_body)
        app_handlers[1](p_body)
        t3 = time.perf_counter()
        if i >= 200:  # warm-up
            decide.append(t1 - t0)
            handle.append(t3 - t2)
    return {"decisions": _percentiles(decide), "parse+decide+encode": _percentiles(handle)}


def _failing_share(cluster: Cluster) -> float:
    failed = total = 0
    for f_body, _ in cluster.bodies:
        args = parse(f_body, ExtenderArgs)
        result = cluster.ext.decider.filter(args)
        failed += len(result.failed) + len(result.unresolvable)
        total += len(args.candidate_names())
    return failed / max(1, total)


def _handlers(ext: runtime.Extender) -> tuple[Any, Any]:
    """The byte-in/byte-out work the app does per request (parse, decide, encode), as
    the verbs' worker threads run it, without the HTTP server."""
    from extender.webhook.app import Handlers

    handlers = Handlers(ext.decider, ext.telemetry, Limits().max_candidates)
    return (
        lambda body: handlers.answer("filter", body),
        lambda body: handlers.answer("prioritize", body),
    )


# --- HTTP -----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(port: int, ready: Any, stop: Any) -> None:
    import uvicorn

    cluster = build_cluster()
    cluster_bodies = cluster.bodies
    server = uvicorn.Server(
        uvicorn.Config(
            cluster.ext.app(), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    ready.send(cluster_bodies)
    stop.wait()
    server.should_exit = True
    thread.join(10)


def _load(port: int, bodies: list[tuple[bytes, bytes]], rate: float, seconds: float) -> Any:
    """Open-loop load: a request every 1/rate s whether or not the last one returned
    (a few client threads), alternating filter and prioritize; latency per request."""
    import httpx

    interval = 1.0 / rate
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    start = time.perf_counter() + 0.2
    workers = 8
    counter = iter(range(total))
    counter_lock = threading.Lock()

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
            while True:
                with counter_lock:
                    i = next(counter, None)
                if i is None:
                    return
                due = start + i * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                f_body, p_body = bodies[(i // 2) % len(bodies)]
                path, body = ("/filter", f_body) if i % 2 == 0 else ("/prioritize", p_body)
                t0 = time.perf_counter()
                response = client.post(
                    path, content=body, headers={"content-type": "application/json"}
                )
                # Latency from when the request was due: queueing in the client counts.
                t1 = time.perf_counter()
                with lock:
                    if response.status_code != 200:
                        errors += 1
                    latencies.append(t1 - max(t0, due))

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors


def _client(
    port: int, bodies: list[tuple[bytes, bytes]], rate: float, seconds: float, out: Any
) -> None:
    # warm the connection pool and the server
    _load(port, bodies, min(rate, 50), 1.0)
    latencies, errors = _load(port, bodies, rate, seconds)
    out.send((latencies, errors))


def bench_http(rate: float = 200.0, seconds: float = 20.0) -> dict[str, float]:
    """p50/p99 over HTTP at ``rate`` requests/s for ``seconds`` (see the module doc)."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    ready_recv, ready_send = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    server = ctx.Process(target=_serve, args=(port, ready_send, stop), daemon=True)
    server.start()
    try:
        if not ready_recv.poll(300):
            raise RuntimeError("the extender did not start within 300 s")
        bodies = ready_recv.recv()
        out_recv, out_send = ctx.Pipe(duplex=False)
        client = ctx.Process(target=_client, args=(port, bodies, rate, seconds, out_send))
        client.start()
        if not out_recv.poll(seconds + 120):
            raise RuntimeError("the load generator did not finish in time")
        latencies, errors = out_recv.recv()
        client.join(10)
    finally:
        stop.set()
        server.join(15)
        if server.is_alive():
            server.terminate()
    result = _percentiles(latencies)
    result["errors"] = float(errors)
    result["rate_rps"] = rate
    result["seconds"] = seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["compute", "http", "all"], default="all")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--reserve-plan", action="store_true", help="scoring.reservePlan on")
    parser.add_argument(
        "--fill", type=float, default=2 / 3, help="share of greedy's placement bound first"
    )
    args = parser.parse_args()
    if args.part in ("compute", "all"):
        t0 = time.perf_counter()
        cluster = build_cluster(fill=args.fill, reserve_plan=args.reserve_plan)
        failing = _failing_share(cluster)
        print(
            f"cluster: {NODES} nodes, {cluster.problem.tree.size} domains, "
            f"T={cluster.problem.grid.slots}, {len(cluster.ext.state.pods)} pods bound, "
            f"{CANDIDATES} candidates per request, {failing:.0%} of them failing "
            f"(built in {time.perf_counter() - t0:.1f}s)"
        )
        for name, stats in bench_compute(cluster, args.iterations).items():
            print(
                f"compute {name:<22} p50 {stats['p50_ms']:.3f} ms  p99 {stats['p99_ms']:.3f} ms"
                f"  max {stats['max_ms']:.3f} ms  (n={int(stats['n'])}, filter+prioritize)"
            )
    if args.part in ("http", "all"):
        stats = bench_http(args.rate, args.seconds)
        print(
            f"http    {args.rate:.0f} req/s for {args.seconds:.0f}s   p50 {stats['p50_ms']:.3f} ms"
            f"  p99 {stats['p99_ms']:.3f} ms  max {stats['max_ms']:.3f} ms"
            f"  (n={int(stats['n'])}, errors={int(stats['errors'])}, per request)"
        )


if __name__ == "__main__":
    main()
