"""`scripts/buf.sh breaking` (run by the test command) passes on protos/ and fails on a
breaking change: a copy of protos/ with a field removed or an RPC renamed is checked
against the same committed baseline image (buf.baseline.binpb)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF_SH = ROOT / "scripts" / "buf.sh"
BASELINE = ROOT / "buf.baseline.binpb"


def buf_breaking(module: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(BUF_SH), "breaking", str(module), "--against", str(BASELINE)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def module_copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    return tmp_path


def test_protos_are_compatible_with_the_baseline(module_copy):
    result = buf_breaking(module_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        (
            "  // Number of candidates wanted, 1 to the service's max_k.\n  int32 k = 4;\n",
            "",
            'name "k"',
        ),
        ("rpc GetItems(", "rpc FetchItems(", 'RPC "GetItems"'),
        ("option idempotency_level = NO_SIDE_EFFECTS;", "", "idempotency_level"),
    ],
)
def test_a_breaking_change_fails(module_copy, old, new, complaint):
    recall = module_copy / "protos" / "recstack" / "v1" / "recall.proto"
    text = recall.read_text()
    assert old in text
    recall.write_text(text.replace(old, new, 1))
    result = buf_breaking(module_copy)
    assert result.returncode != 0, "buf breaking accepted a breaking change"
    assert complaint in result.stdout + result.stderr
