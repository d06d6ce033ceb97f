"""Serving processes never import torch or transformers (ARCHITECTURE invariant 1)."""

import subprocess
import sys

CODE = """
import sys
import gateway.__main__, gateway.server
import rank_service.__main__, rank_service.server
import recall_service.__main__, recall_service.server
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'transformers', 'optimum'})
print(','.join(heavy))
"""


def test_serving_modules_do_not_import_torch():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"serving imported: {out.stdout}"


def test_training_is_never_imported_by_serving_code():
    out = subprocess.run(
        [sys.executable, "-c", CODE.replace("'optimum'}", "'optimum', 'training'}")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == ""


def loaded(modules: str, heavy: set[str]) -> list[str]:
    code = (
        f"import sys\nimport {modules}\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_the_gateway_and_the_client_sdk_load_no_model_runtime():
    """The gateway runs no model and searches no index; a client SDK user needs neither:
    neither process loads ONNX Runtime, hnswlib or tokenizers (nor any service's
    internals: service names come from the generated descriptors)."""
    heavy = {"onnxruntime", "hnswlib", "tokenizers"}
    assert loaded("gateway.__main__, gateway.server", heavy) == []
    assert loaded("recstack.client", heavy | {"recall_service", "rank_service", "gateway"}) == []
    assert loaded("gateway.server", {"recall_service", "rank_service"}) == []


def test_the_core_loads_neither_grpc_nor_a_model_runtime():
    """recstack.core (bundles, domain, errors, vectors, features, options, lifecycle) is what
    every process shares: it needs neither grpc nor ONNX Runtime nor hnswlib."""
    core = ", ".join(
        f"recstack.core.{m}"
        for m in (
            "bundle", "config", "deadline", "domain", "errors", "features", "lifecycle",
            "metrics", "sharding", "storage", "vectors",
        )
    )  # fmt: skip
    assert loaded(core, {"grpc", "onnxruntime", "hnswlib", "tokenizers"}) == []
