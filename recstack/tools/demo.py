"""End-to-end demo: start recall, rank and gateway as processes on loopback, recommend, stop.

Usage: python -m recstack.tools.demo --bundle bundles [--users 1 2 3] [--query "..."]

Each service is started exactly as an operator would (its command line, ``--port 0`` and a
port file), health is awaited through ``grpc.health.v1``, Recommend is called over gRPC,
and every process is stopped with SIGTERM and must exit cleanly.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from recstack.core.bundle import Bundle
from recstack.tools.procs import STACK_TIMEOUT_S, Stack
from recstack.v1 import gateway_pb2, gateway_pb2_grpc

START_TIMEOUT_S = STACK_TIMEOUT_S


def show(title: str, resp: gateway_pb2.RecommendResponse) -> None:
    print(f"\n{title}")
    timings = "  ".join(f"{t.stage} {t.millis:.1f} ms" for t in resp.timings)
    print(f"  bundle {resp.bundle_version}   {timings}")
    for rank, item in enumerate(resp.items, 1):
        label = item.title or item.text
        reasons = []
        if item.because_item_id:
            reasons.append(f"because you watched {item.because_title or item.because_item_id}")
        if item.trending:
            reasons.append("trending now")
        elif item.because_query:
            reasons.append("matches your query")
        why = "; ".join(reasons)
        print(
            f"  {rank:2d}. {label[:50]:<50} score {item.score:7.3f} "
            f"(recall {item.recall_score:.3f})  {why[:60]}"
        )


def run(bundle_path: str, users: list[str], query: str, k: int) -> int:
    bundle = Bundle.open(bundle_path)
    titles = {i.id: i.display_title for i in bundle.iter_catalog()}
    histories = dict(bundle.iter_user_histories())
    users = users or list(histories)[:3]
    with tempfile.TemporaryDirectory(prefix="recstack-demo-") as tmp:
        t0 = time.perf_counter()
        stack = Stack(str(bundle.root), Path(tmp)).start(START_TIMEOUT_S)
        try:
            ports = "  ".join(f"{s.name} :{s.port}" for s in stack.services)
            print(f"{ports}  (all SERVING after {time.perf_counter() - t0:.1f}s)")
            stub = gateway_pb2_grpc.RecommendServiceStub(stack.gateway.channel())
            for user in users:
                history = histories.get(user, [])
                recent = "; ".join(titles.get(i, i) for i in history[:3])
                resp = stub.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=k), timeout=10)
                show(f"user {user} ({len(history)} items seen; recently: {recent})", resp)
            resp = stub.Recommend(gateway_pb2.RecommendRequest(query_text=query, k=k), timeout=10)
            show(f"cold start, no history, query: {query!r}", resp)
        finally:
            codes = stack.stop()
            print("\nstopped with SIGTERM: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))
    return 0 if all(c == 0 for c in codes.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recstack.tools.demo", description=__doc__)
    parser.add_argument("--bundle", default="bundles", help="bundle dir or root with CURRENT")
    parser.add_argument(
        "--users",
        nargs="*",
        default=[],
        help="user ids to recommend for (default: the bundle's first three)",
    )
    parser.add_argument(
        "--query",
        default="a funny animated movie for the whole family",
        help="cold-start query text",
    )
    parser.add_argument("-k", type=int, default=5, help="recommendations per user")
    args = parser.parse_args(argv)
    return run(args.bundle, args.users, args.query, args.k)


if __name__ == "__main__":
    sys.exit(main())
