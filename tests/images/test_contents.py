"""What each built image contains, checked by running Python inside it as the pods do."""

from __future__ import annotations

import json

from tests.images import podman

PROBE = """
import importlib.util, json, sys
mods = {m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}
print(json.dumps({"mods": mods, "python": sys.version.split()[0]}))
"""
HEAVY = ["torch", "transformers", "optimum"]
NOT_SERVING_CODE = ["training", "bench", "loadtest"]
SERVICES = ["recall_service", "rank_service", "gateway", "recstack.tools.publish", "psycopg"]


def probe(image: str, *modules: str) -> dict[str, object]:
    return json.loads(podman.run_in(image, "python", "-c", PROBE, *modules))


def test_serving_image_has_services_and_driver_but_no_training_stack(images):
    found = probe(images["serve"], *SERVICES, *HEAVY, *NOT_SERVING_CODE)
    assert found["mods"] == {m: m in SERVICES for m in [*SERVICES, *HEAVY, *NOT_SERVING_CODE]}
    assert str(found["python"]).startswith("3.11.")
    impl = podman.run_in(
        images["serve"], "python", "-c", "import psycopg; print(psycopg.pq.__impl__)"
    )
    assert impl.strip() == "binary"
    # The console scripts that would name the missing packages are gone too.
    scripts = podman.run_in(images["serve"], "sh", "-c", "ls /opt/venv/bin | grep recstack-")
    assert scripts.split() == [
        "recstack-colocated",
        "recstack-gateway",
        "recstack-rank",
        "recstack-recall",
    ]
    # The one-process entry point imports all three services' code without torch.
    help_text = podman.run_in(images["serve"], "recstack-colocated", "--help")
    assert "--recall-ef-search" in help_text and "--rank-max-candidates" in help_text


def test_serving_image_runs_as_the_pods_uid(images):
    assert podman.run_in(images["serve"], "id", "-u").strip() == str(podman.UID)
    user = podman.podman("image", "inspect", "--format", "{{.Config.User}}", images["serve"])
    assert user.stdout.strip() == f"{podman.UID}:{podman.UID}"


def test_training_image_has_torch_cpu_and_the_pipeline(images):
    out = podman.run_in(
        images["train"], "python", "-c",
        "import torch, training.pipeline, recstack.tools.publish;"
        "print(torch.__version__, torch.cuda.is_available())",
    )  # fmt: skip
    assert out.split() == ["2.13.0+cpu", "False"]
    help_text = podman.run_in(images["train"], "python", "-m", "training", "--help")
    assert "build" in help_text


def test_gpu_image_has_the_cuda_provider_compiled_in_and_no_training_stack(images):
    # Listing providers needs neither a GPU nor the CUDA libraries; running on one needs both
    # (docs/deploy.md lists what only a GPU node can check).
    out = podman.run_in(
        images["gpu"], "python", "-c",
        "import onnxruntime as o, importlib.metadata as m;"
        "print(m.version('onnxruntime-gpu'),"
        " 'CUDAExecutionProvider' in o.get_available_providers())",
    )  # fmt: skip
    assert out.split() == ["1.31.1", "True"]
    found = probe(images["gpu"], "rank_service", *HEAVY)
    assert found["mods"] == {"rank_service": True, **dict.fromkeys(HEAVY, False)}


def test_image_sizes_are_reported(images, record_property, capsys):
    sizes = {name: podman.image_size(image) for name, image in images.items()}
    for name, size in sizes.items():
        record_property(f"{name}_image_bytes", size)
    with capsys.disabled():
        listed = ", ".join(f"{images[n]} {s / 1e6:.0f} MB" for n, s in sizes.items())
        print(f"\nimage sizes: {listed}")
    # The serving image stays small because it has no torch (the training image has it).
    assert sizes["serve"] < sizes["train"] / 2
