"""HTTP serving cost of shoal's services against the servers they are built on, over loopback.

    python perf/serving.py [--requests 500] [--clients 8] [--seconds 10] [--warmup 50]
                           [--systems uvicorn,shoal-local,raw-serve,shoal-ray] [--repeats 1]
                           [--quick] [--out DIR]

Every system answers the same no-op handler (the JSON body ``{"x": 1}`` as its parameters, the
value back as JSON), one replica each, on 127.0.0.1 only:

- ``uvicorn``: plain starlette + uvicorn in a process of its own (an endpoint that parses the body
  and calls the handler), the local backend's baseline;
- ``shoal-local``: ``fn.deploy(backend="local")``;
- ``raw-serve``: a Ray Serve deployment written by hand (``serve.run``, ``num_cpus=1``) on the same
  Ray instance and HTTP proxy as shoal's, the Ray backend's baseline;
- ``shoal-ray``: ``fn.deploy(backend=<shoal's Ray backend>)`` with ``replicas=1``.

Per system: ``--warmup`` requests, then ``--requests`` sequential requests from one keep-alive
client (latency p50/p99), then ``--clients`` threads, each with its own keep-alive client, sending
requests back to back for ``--seconds`` (requests per second, latency p50/p99). The client is httpx
(connection reuse, no retries); the load generator runs in this process, the servers in others
(Ray Serve's proxy and replica are Ray worker processes). With ``--repeats`` > 1 the systems run
interleaved and each keeps its best repeat (lowest sequential p50, highest throughput). Targets:
shoal on Ray within 1.1x raw Serve's p50 and >= 0.9x its throughput; shoal local >= 0.8x the plain
server's throughput. Writes ``perf/results/serving.json`` and ``serving.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from harness import Session, bars, options, pyplot

SYSTEMS = ("uvicorn", "shoal-local", "raw-serve", "shoal-ray")
BODY = json.dumps({"x": 1}).encode()
HEADERS = {"content-type": "application/json"}
READY_TIMEOUT = 120.0
TARGETS = {"ray_p50": 1.1, "ray_throughput": 0.9, "local_throughput": 0.8}


def noop(x: int = 0) -> int:
    """The handler every system serves."""
    return x


# -- servers ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plain_server(port: int) -> None:
    """The baseline: starlette + uvicorn, nothing else (run in a child process: ``--plain-server``)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse(noop(**await request.json()))

    app = Starlette(routes=[Route("/noop", endpoint, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wait_answering(url: str, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` (bounded) until it answers 200 with the handler's value."""
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(timeout=5.0) as client:
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server for {url} exited with {process.returncode}")
            try:
                answer = client.post(url, content=BODY, headers=HEADERS)
                if answer.status_code == 200 and answer.json() == 1:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {READY_TIMEOUT:g} s")
            time.sleep(0.1)  # polling a server that is starting, not synchronising a measurement


@contextlib.contextmanager
def uvicorn_system() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--plain-server", str(port)])
    try:
        url = f"http://127.0.0.1:{port}/noop"
        wait_answering(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(30)


@contextlib.contextmanager
def shoal_local_system(fn, project) -> Iterator[str]:
    service = fn.deploy(backend="local", name="noop-local", port=free_port(), project=project)
    try:
        wait_answering(service.url)
        yield service.url
    finally:
        service.delete()


@contextlib.contextmanager
def ray_instance() -> Iterator[Any]:
    """shoal's Ray backend (a local Ray instance of 2 CPUs): shoal's service and the raw Serve
    application share it, its Serve controller and its HTTP proxy."""
    import shoal.backends

    backend = shoal.backends.get("ray", num_cpus=2)
    try:
        backend.start()
        yield backend
    finally:
        backend.close()


@contextlib.contextmanager
def shoal_ray_system(fn, project, backend, port: int) -> Iterator[str]:
    service = fn.deploy(backend=backend, name="noop-shoal", port=port, project=project)
    try:
        wait_answering(service.url)
        yield service.url
    finally:
        service.delete()


@contextlib.contextmanager
def raw_serve_system(port: int) -> Iterator[str]:
    """A Ray Serve deployment by hand on the running Serve instance (started by shoal's deploy on
    ``port``): the request's JSON body as the handler's parameters, its value back as JSON."""
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1})
    class Noop:
        async def __call__(self, request: Request) -> Any:
            return noop(**await request.json())

    serve.run(Noop.bind(), name="noop-raw", route_prefix="/noop-raw")
    try:
        url = f"http://127.0.0.1:{port}/noop-raw"
        wait_answering(url)
        yield url
    finally:
        serve.delete("noop-raw")


# -- load -------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(latencies: list[float], errors: int, seconds: float) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": seconds,
        "per_s": len(latencies) / seconds if seconds else 0.0,
        "p50_ms": percentile(latencies, 50) * 1e3 if latencies else None,
        "p99_ms": percentile(latencies, 99) * 1e3 if latencies else None,
        "mean_ms": statistics.fmean(latencies) * 1e3 if latencies else None,
    }


def send(client: Any, url: str) -> tuple[float, bool]:
    began = time.perf_counter()
    answer = client.post(url, content=BODY, headers=HEADERS)
    elapsed = time.perf_counter() - began
    return elapsed, answer.status_code == 200


def sequential(url: str, count: int) -> dict[str, Any]:
    import httpx

    latencies, errors = [], 0
    with httpx.Client(timeout=30.0) as client:
        began = time.perf_counter()
        for _ in range(count):
            elapsed, ok = send(client, url)
            if ok:
                latencies.append(elapsed)
            else:
                errors += 1
        return summary(latencies, errors, time.perf_counter() - began)


def concurrent(url: str, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads sending back to back until ``seconds`` have passed since they all started."""
    import httpx

    barrier = threading.Barrier(clients + 1)
    results: list[tuple[list[float], int]] = []
    lock = threading.Lock()
    deadline = [0.0]

    def client_loop() -> None:
        latencies, errors = [], 0
        with httpx.Client(timeout=30.0) as client:
            send(client, url)  # connect before the clock starts
            barrier.wait()
            while time.perf_counter() < deadline[0]:
                try:
                    elapsed, ok = send(client, url)
                except httpx.HTTPError:
                    elapsed, ok = 0.0, False
                if ok:
                    latencies.append(elapsed)
                else:
                    errors += 1
        with lock:
            results.append((latencies, errors))

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + 3600  # set for real once every client is connected
    barrier.wait(timeout=READY_TIMEOUT)
    began = time.perf_counter()
    deadline[0] = began + seconds
    for thread in threads:
        thread.join(seconds + 60)
    elapsed = time.perf_counter() - began
    latencies = [value for part, _ in results for value in part]
    return summary(latencies, sum(errors for _, errors in results), elapsed)


def measure(url: str, args) -> dict[str, Any]:
    sequential(url, args.warmup)
    return {"sequential": sequential(url, args.requests), "concurrent": concurrent(url, args.clients, args.seconds)}


def best(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """The least disturbed repeat of each measurement: lowest sequential p50, highest throughput."""
    return {
        "sequential": min((r["sequential"] for r in repeats), key=lambda s: s["p50_ms"] or float("inf")),
        "concurrent": max((r["concurrent"] for r in repeats), key=lambda c: c["per_s"]),
        "repeats": repeats,
    }


# -- the run ----------------------------------------------------------------------------------------
def run(args) -> dict[str, Any]:
    import tempfile

    import shoal

    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown:
        args.parser.error(f"--systems: unknown {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    fn = shoal.function(noop, replicas=1)
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        project = stack.enter_context(shoal.Project(folder, name="perf"))
        urls: dict[str, str] = {}
        local = {"uvicorn": uvicorn_system, "shoal-local": lambda: shoal_local_system(fn, project)}
        for name, start in local.items():
            if name in chosen:
                urls[name] = stack.enter_context(start())
        if {"raw-serve", "shoal-ray"} & set(chosen):
            backend = stack.enter_context(ray_instance())
            port = free_port()
            urls["shoal-ray"] = stack.enter_context(shoal_ray_system(fn, project, backend, port))
            if "raw-serve" in chosen:
                urls["raw-serve"] = stack.enter_context(raw_serve_system(port))
        for index in range(args.repeats):
            order = chosen[index % len(chosen) :] + chosen[: index % len(chosen)]  # rotate who goes first
            for name in order:
                measured[name].append(measure(urls[name], args))
                row = measured[name][-1]
                print(
                    f"{name}: sequential p50 {row['sequential']['p50_ms']:.2f} ms, p99 "
                    f"{row['sequential']['p99_ms']:.2f} ms; {args.clients} clients "
                    f"{row['concurrent']['per_s']:.0f} req/s",
                    flush=True,
                )
    systems = {name: best(rows) for name, rows in measured.items()}
    return {"systems": systems, "ratios": ratios(systems), "targets": TARGETS}


def ratios(systems: dict[str, Any]) -> dict[str, float]:
    out = {}

    def p50(name: str) -> float:
        return systems[name]["sequential"]["p50_ms"]

    def rate(name: str) -> float:
        return systems[name]["concurrent"]["per_s"]

    if {"shoal-ray", "raw-serve"} <= systems.keys():
        out["ray_p50"] = p50("shoal-ray") / p50("raw-serve")
        out["ray_throughput"] = rate("shoal-ray") / rate("raw-serve")
    if {"shoal-local", "uvicorn"} <= systems.keys():
        out["local_p50"] = p50("shoal-local") / p50("uvicorn")
        out["local_throughput"] = rate("shoal-local") / rate("uvicorn")
    return out


def describe(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, row in report["systems"].items():
        seq, con = row["sequential"], row["concurrent"]
        lines.append(
            f"{name:12s} sequential p50 {seq['p50_ms']:.2f} ms p99 {seq['p99_ms']:.2f} ms | "
            f"{con['per_s']:.0f} req/s, p50 {con['p50_ms']:.2f} ms, errors {seq['errors'] + con['errors']}"
        )
    labels = {
        "ray_p50": "shoal-ray / raw-serve p50",
        "ray_throughput": "shoal-ray / raw-serve req/s",
        "local_p50": "shoal-local / uvicorn p50",
        "local_throughput": "shoal-local / uvicorn req/s",
    }
    for key, value in report["ratios"].items():
        target = TARGETS.get(key)
        mark = "" if target is None else f" (target {'<=' if key.endswith('p50') else '>='} {target})"
        lines.append(f"{labels[key]}: {value:.2f}x{mark}")
    return lines


def plot(report: dict[str, Any], path) -> None:
    plt = pyplot()
    systems = report["systems"]
    names = list(systems)
    colors = ["#3b75af" if name.startswith("shoal") else "#999999" for name in names]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    bars(axes[0], names, [systems[n]["sequential"]["p50_ms"] for n in names], colors, "{:.2f} ms")
    axes[0].set_title(f"{report['options']['requests']} sequential requests: p50 latency", fontsize=9)
    axes[0].set_ylabel("ms")
    bars(axes[1], names, [systems[n]["concurrent"]["per_s"] for n in names], colors, "{:.0f}")
    axes[1].set_title(
        f"{report['options']['clients']} clients for {report['options']['seconds']:g} s: throughput", fontsize=9
    )
    axes[1].set_ylabel("requests per second")
    fig.suptitle(
        f"no-op handler over loopback; load average {report['machine']['load_average']} -> "
        f"{report['machine']['load_average_end']}",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add(parser) -> None:
    parser.add_argument("--requests", type=int, default=500, help="sequential requests per system")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the concurrent load")
    parser.add_argument("--warmup", type=int, default=50, help="requests before measuring")
    parser.add_argument("--systems", default=",".join(SYSTEMS))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--plain-server"]:
        plain_server(int(argv[1]))
        return 0
    args = options(__doc__, {"requests": 100, "seconds": 2.0, "warmup": 20}, add, repeats=1, argv=argv)
    session = Session("serving", args)
    report = run(args)
    print("\n".join(describe(report)), flush=True)
    session.write(report, plot)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
