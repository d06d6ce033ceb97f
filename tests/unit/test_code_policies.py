"""Repository-wide policies that a grep can check: no pickle, no unsafe model loading."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = [
    "recstack",
    "recall_service",
    "rank_service",
    "gateway",
    "training",
    "bench",
    "loadtest",
    "scripts",
]
FORBIDDEN = [
    (re.compile(r"^\s*(import|from)\s+(c?pickle|dill|joblib|cloudpickle)\b", re.M), "pickle"),
    (re.compile(r"allow_pickle\s*=\s*True"), "numpy pickle"),
    (re.compile(r"torch\.load\("), "torch.load (a pickle loader)"),
    (re.compile(r"register_custom_ops_library"), "ONNX Runtime custom op library"),
]


def python_files():
    for d in CODE_DIRS:
        yield from (p for p in (ROOT / d).rglob("*.py") if "/v1/" not in p.as_posix())


def test_no_pickle_or_unsafe_loading_anywhere():
    files = list(python_files())
    assert len(files) > 20
    offences = [
        f"{path.relative_to(ROOT)}: {what}"
        for path in files
        for pattern, what in FORBIDDEN
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert not offences, offences
