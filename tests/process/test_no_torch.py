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
