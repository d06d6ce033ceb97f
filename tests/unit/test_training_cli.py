"""CLI user errors: one line, non-zero exit, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.cli import main


def test_build_missing_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["build", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: --data ") and err.count("\n") == 1


def test_build_bad_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "items.csv").write_text("item_id,text\na,x\n")
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\nu,b,1\n")
    rc = main(
        [
            "build",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "b"),
            "--profile",
            "tiny",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "interactions.csv:2: column item_id: unknown item 'b'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "b" / "CURRENT").exists()
