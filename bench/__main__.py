"""The benchmark suite in one command: ``python -m bench [--bundle bundles] [--quick]``.

Runs, one after the other on the same machine: recall (replay, recall@10 vs exact, single
vs batched, RPC vs in process), rank (ORT vs torch, dynamic batching on/off) and serving
(encoder ORT fp32/int8 vs torch, hnswlib vs faiss, end-to-end Recommend vs the in-process
floor). Each prints its own ratio table and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import sys

from bench import rank_bench, recall_bench, serving_bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--bundle", default="bundles")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter runs")
    args = parser.parse_args(argv)
    items = "20000" if args.quick else "100000"
    seconds = "3" if args.quick else "8"
    status = recall_bench.main(["--bundle", args.bundle, "--items", items])
    status |= rank_bench.main(["--bundle", args.bundle, "--seconds", seconds])
    status |= serving_bench.main(
        ["--bundle", args.bundle, "--requests", "100" if args.quick else "300"]
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
