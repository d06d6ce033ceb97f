"""Server model: the sync gRPC server (what the services run) vs ``grpc.aio``, alternated.

For one service (recall or rank), three servers over the same bundle run side by side:

- ``sync``: the service's own command line (``python -m recall_service`` / ``rank_service``,
  default options: a thread pool of handlers);
- ``aio-loop``: the same servicer behind a ``grpc.aio`` server, handlers run on the event
  loop (the core's work blocks the loop while it runs: one request at a time in Python,
  ORT and hnswlib release the GIL);
- ``aio-executor``: the same, each handler sent to the loop's default thread pool.

The load generator (``python -m loadtest closed``, its own process) loads each in turn for
``--pairs`` rounds; per run: achieved req/s, p50, p99 and the server's CPU milliseconds
per request. Reported as median [min-max] per server; ranges that overlap the sync
server's are "no difference". The aio variants are a measurement harness (no interceptors,
no auth, plain health): they can only be cheaper per request than a full aio service.

Usage: ``python -m bench.server_model --bundle bundles --service recall [--pairs 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stack_bench import RESULTS, cpu_seconds, loadtest_closed, spread, verdict
from recstack.tools.procs import ServiceProcess

SERVICES = {"recall": "recstack.v1.RecallService", "rank": "recstack.v1.RankService"}
MODES = ("sync", "aio-loop", "aio-executor")


def _servicer(service: str, bundle: str, state_dir: str) -> tuple[Any, Callable[[Any, Any], None]]:
    """The service's real servicer over a loaded core, and its add-to-server function."""
    from recstack.core.config import OrtOptions, RankOptions, RecallOptions, ServerOptions
    from recstack.v1 import rank_pb2_grpc, recall_pb2_grpc

    if ServerOptions().blas_threads > 0:  # what start_server applies in the real service
        from threadpoolctl import threadpool_limits

        threadpool_limits(ServerOptions().blas_threads, user_api="blas")
    session = OrtOptions().session_options()
    if service == "recall":
        from recall_service.replica import Replica
        from recall_service.servicer import RecallServicer

        replica = Replica(
            RecallOptions(bundle=bundle, state_dir=state_dir, bundle_poll_s=0), session
        )
        replica.load()
        return RecallServicer(replica), recall_pb2_grpc.add_RecallServiceServicer_to_server
    from rank_service.core import rank_lifecycle
    from rank_service.servicer import RankServicer

    lifecycle = rank_lifecycle(RankOptions(bundle=bundle, bundle_poll_s=0))
    lifecycle.load_initial()
    return RankServicer(lifecycle), rank_pb2_grpc.add_RankServiceServicer_to_server


def serve_aio(service: str, bundle: str, mode: str, port_file: str) -> None:
    """Run the service's servicer behind a grpc.aio server until killed."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1._async import HealthServicer as AioHealthServicer

    method = {"recall": "Recall", "rank": "Rank"}[service]
    with tempfile.TemporaryDirectory(prefix="aio-") as tmp:
        servicer, add = _servicer(service, bundle, tmp)
        sync_method = getattr(servicer, method)

        # The generated base class: every other method answers UNIMPLEMENTED.
        class Aio(type(servicer).__bases__[0]):  # type: ignore[misc]
            pass

        if mode == "aio-loop":

            async def handler(self: Any, request: Any, context: Any) -> Any:
                return sync_method(request, context)
        else:

            async def handler(self: Any, request: Any, context: Any) -> Any:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(None, sync_method, request, context)

        setattr(Aio, method, handler)

        async def main() -> None:
            server = grpc.aio.server()
            add(Aio(), server)
            checks = AioHealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(checks, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            for name in ("", SERVICES[service]):
                await checks.set(name, health_pb2.HealthCheckResponse.SERVING)
            Path(port_file).write_text(str(port))
            await server.wait_for_termination()

        asyncio.run(main())


def _start(mode: str, service: str, bundle: str, work: Path) -> ServiceProcess:
    if mode == "sync":
        module = f"{service}_service"
        args = ["--bundle", bundle] + (
            ["--state-dir", str(work / "sync")] if service == "recall" else []
        )
        return ServiceProcess(module, *args, workdir=work, name=mode)
    # ServiceProcess passes --port 0 --port-file F; serve-aio binds port 0 itself.
    return ServiceProcess(
        "bench.server_model",
        "serve-aio",
        "--service",
        service,
        "--bundle",
        bundle,
        "--mode",
        mode,
        workdir=work,
        name=mode,
    )


def compare(args: argparse.Namespace) -> int:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="server-model-") as tmp:
        work = Path(tmp)
        servers = {m: _start(m, args.service, args.bundle, work) for m in MODES}
        try:
            for proc in servers.values():
                proc.wait_serving(SERVICES[args.service], 300)
            for pair in range(1, args.pairs + 1):
                for mode, proc in servers.items():
                    before = cpu_seconds(proc.proc.pid)
                    size = ["--k" if args.service == "recall" else "--candidates", str(args.k)]
                    out = work / f"{mode}.json"
                    result = loadtest_closed(args.service, proc.port, args, out, size)
                    cpu = cpu_seconds(proc.proc.pid) - before
                    result["cpu_ms_per_request"] = cpu / max(result["requests"], 1) * 1000
                    runs[mode].append(result)
                    print(
                        f"round {pair} {mode:13} {result['achieved_rps']:7.1f} req/s  p50 "
                        f"{result['p50_ms']:6.2f}  p99 {result['p99_ms']:6.2f} ms  server CPU "
                        f"{result['cpu_ms_per_request']:.2f} ms/req",
                        flush=True,
                    )
        finally:
            for proc in servers.values():
                proc.stop(timeout=10)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for mode, rs in runs.items():
        summary[mode] = {}
        for metric in ("achieved_rps", "p50_ms", "p99_ms", "cpu_ms_per_request"):
            summary[mode][metric] = spread([r[metric] for r in rs])
    print(f"\n{args.service}: {args.pairs} rounds, {args.concurrency} callers (median [min-max])")
    for metric, higher in (
        ("achieved_rps", True),
        ("p50_ms", False),
        ("cpu_ms_per_request", False),
    ):
        cells = []
        for mode in MODES:
            s = summary[mode][metric]
            cells.append(f"{mode} {s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]")
        judged = [
            f"{m}: {verdict(summary['sync'][metric], summary[m][metric], higher)}".replace(
                "A better", "sync better"
            ).replace("B better", f"{m} better")
            for m in MODES[1:]
        ]
        print(f"{metric:20} " + " | ".join(cells) + "   " + "; ".join(judged))
    out = Path(args.out or RESULTS / f"server-model-{args.service}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"service": args.service, "runs": runs, "summary": summary}, indent=2)
    )
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "serve-aio" in argv:  # a server process (ServiceProcess puts its flags first)
        argv.remove("serve-aio")
        parser = argparse.ArgumentParser(prog="python -m bench.server_model serve-aio")
        parser.add_argument("--service", choices=sorted(SERVICES), required=True)
        parser.add_argument("--bundle", required=True)
        parser.add_argument("--mode", choices=MODES[1:], required=True)
        parser.add_argument("--port", type=int, default=0, help="ignored: binds a free port")
        parser.add_argument("--port-file", required=True)
        a = parser.parse_args(argv)
        serve_aio(a.service, a.bundle, a.mode, a.port_file)
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.server_model", description=__doc__)
    parser.add_argument("--bundle", default="bundles")
    parser.add_argument("--service", choices=sorted(SERVICES), default="recall")
    parser.add_argument("--pairs", type=int, default=5, help="rounds (each server once)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--k", type=int, default=100, help="recall k / rank candidates")
    parser.add_argument("--out", default="")
    return compare(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
