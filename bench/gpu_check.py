"""CUDA against CPU for the two model stages a request can run, in one short run.

- **Rank**: a real rank server per configuration (``--device cuda --no-allow-cpu-fallback``,
  IO binding on, or ``--device cpu``), batching on and off, driven by the same closed-loop
  load (``bench.rank_load.drive``) with 100 and 1,000 candidates per request: throughput,
  p50, p95.
- **Query encoder** (``recstack.models.encoder.TextEncoder``, the bundle's ONNX model): median ms
  per call at batch 1 and 32.

Devices alternate within each configuration for ``--rounds`` rounds (CUDA, CPU, CUDA, CPU
...), so background load hits both alike; the report gives each figure's median and
min-max over the rounds. Needs only the serving dependencies (no torch) with
onnxruntime-gpu for CUDA: ``bash bench/gpu_check.sh`` sets that up. ``--devices cpu`` runs
the same code without a GPU (the test does).

Usage: ``python -m bench.gpu_check --bundle bundles [--rounds 3] [--seconds 6]`` (results in
``bench/results/gpu_check.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import median_ms
from bench.rank_load import RankProcess, drive
from recstack.core.bundle import Bundle
from recstack.models.encoder import TextEncoder
from recstack.models.ort import SessionOptions

RESULTS = Path(__file__).resolve().parent / "results"
DEVICE_FLAGS = {
    "cuda": ["--device", "cuda", "--no-allow-cpu-fallback", "--io-binding"],
    "cpu": ["--device", "cpu"],
}
BATCHING = {"on": ["--batching"], "off": ["--no-batching"]}


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def rank_rows(bundle: Bundle, devices: list[str], args: argparse.Namespace) -> list[dict]:
    common = ["--max-workers", str(args.clients + 4), "--max-concurrent-rpcs", "512",
              "--max-candidates", "2000"]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for candidates in (100, 1000):
            for batching, flags in BATCHING.items():
                runs: dict[str, list[dict[str, Any]]] = {d: [] for d in devices}
                for r in range(args.rounds):
                    for device in devices:
                        name = f"{device}-{batching}-{candidates}-{r}"
                        extra = [*common, *DEVICE_FLAGS[device], *flags]
                        with RankProcess(bundle.root, extra, Path(tmp), name) as server:
                            runs[device].append(
                                drive(server.port, bundle, args.clients, candidates, args.seconds)
                            )
                row: dict[str, Any] = {"candidates": candidates, "batching": batching}
                for device, got in runs.items():
                    row[device] = {
                        key: spread([g[key] for g in got]) for key in ("rps", "p50_ms", "p95_ms")
                    }
                    row[device]["errors"] = sum(g["errors"] for g in got)
                rows.append(row)
                print(f"  rank {candidates} candidates, batching {batching}: "
                      + "; ".join(f"{d} {row[d]['rps']['median']} req/s p95 "
                                  f"{row[d]['p95_ms']['median']} ms" for d in devices),
                      flush=True)  # fmt: skip
    return rows


def encoder_rows(bundle: Bundle, devices: list[str], args: argparse.Namespace) -> list[dict]:
    options = {
        "cuda": SessionOptions(device="cuda", allow_cpu_fallback=False),
        "cpu": SessionOptions(device="cpu"),
    }
    encoders = {d: TextEncoder(bundle, options[d]) for d in devices}
    texts = [it.text for it in bundle.iter_catalog()][:32]
    rows = []
    for batch in (1, 32):
        times: dict[str, list[float]] = {d: [] for d in devices}
        for _ in range(args.rounds):
            for device in devices:
                call = partial(encoders[device].encode, texts[:batch])
                times[device].append(median_ms(call, 5, args.encoder_seconds))
        row: dict[str, Any] = {"batch": batch}
        row.update({f"{d}_ms": spread(t) for d, t in times.items()})
        rows.append(row)
        print(f"  encoder batch {batch}: "
              + "; ".join(f"{d} {row[f'{d}_ms']['median']} ms" for d in devices),
              flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundles", help="bundle (or root with CURRENT)")
    parser.add_argument("--devices", default="cuda,cpu", help="comma-separated: cuda, cpu")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds per figure")
    parser.add_argument("--seconds", type=float, default=6.0, help="load per rank run")
    parser.add_argument("--encoder-seconds", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    args = parser.parse_args(argv)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    unknown = [d for d in devices if d not in DEVICE_FLAGS]
    if unknown or not devices or args.rounds < 1:
        parser.error(f"--devices {args.devices} / --rounds {args.rounds}: cuda, cpu; rounds >= 1")
    if "cuda" in devices:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            parser.error(
                "onnxruntime has no CUDA provider here (install the gpu extra: "
                f"bash bench/gpu_check.sh; providers: {ort.get_available_providers()})"
            )
    bundle = Bundle.open(args.bundle)
    print(f"bundle {bundle.version}; devices {devices}; {args.rounds} rounds", flush=True)
    report = {
        "bundle": bundle.version,
        "machine": platform.platform(),
        "devices": devices,
        "rounds": args.rounds,
        "rank": rank_rows(bundle, devices, args),
        "encoder": encoder_rows(bundle, devices, args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
