"""Regenerate the Python gRPC stubs from protos/ (the one code-generation entry point).

Usage: python scripts/gen_protos.py [--check]

Writes recstack/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py, and the gRPC service config
that callers in every language share, protos/recstack/v1/service_config.json (built by
recstack.runtime.contracts from the RPCs' idempotency_level options). With --check, generates into
a temporary directory and exits 1 if the committed files differ (CI drift check).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from recstack.runtime.contracts import methods_of, service_config_json

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = Path("recstack") / "v1"
INIT_TEXT = '"""Generated gRPC stubs for recstack.v1 (do not edit)."""\n'
SERVICE_CONFIG = PROTO_ROOT / PACKAGE / "service_config.json"


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every .proto under protos/recstack/v1 into out_root; return the files
    (the stubs, then ``service_config.json`` in out_root)."""
    protos = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PACKAGE}")
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--descriptor_set_out={out_root / 'descriptors.binpb'}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    out_pkg = out_root / PACKAGE
    (out_pkg / "__init__.py").write_text(INIT_TEXT)
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(
        (out_root / "descriptors.binpb").read_bytes()
    )
    config = out_root / SERVICE_CONFIG.name
    config.write_text(service_config_json(methods_of(descriptors.file)))
    return [*sorted(p for p in out_pkg.iterdir() if p.is_file()), config]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed stubs drift")
    args = parser.parse_args()
    target = ROOT / PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        *generated, config = generate(Path(tmp))
        names = {p.name for p in generated}
        if args.check:
            existing = {p.name for p in target.glob("*") if p.is_file()}
            drift = sorted(names ^ existing)
            drift += [
                n
                for n in sorted(names & existing)
                if not filecmp.cmp(Path(tmp) / PACKAGE / n, target / n, shallow=False)
            ]
            if not SERVICE_CONFIG.is_file() or SERVICE_CONFIG.read_text() != config.read_text():
                drift.append(str(SERVICE_CONFIG.relative_to(ROOT)))
            if drift:
                print("generated code drifts from protos/: " + ", ".join(drift), file=sys.stderr)
                print("run: python scripts/gen_protos.py", file=sys.stderr)
                return 1
            print(f"generated stubs up to date ({len(names)} files)")
            return 0
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob("*"):
            if stale.is_file() and stale.name not in names:
                stale.unlink()
        for p in generated:
            shutil.copyfile(p, target / p.name)
        shutil.copyfile(config, SERVICE_CONFIG)
        print(
            f"wrote {len(generated)} files to {target.relative_to(ROOT)} and {SERVICE_CONFIG.name}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
