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


def _fake_bundle(root: Path, name: str, users: list[str], ndcg: list[float]) -> Path:
    """A directory that resolves as a bundle and carries only a report's per-user scores."""
    import json

    from recstack.core.bundle import MANIFEST

    path = root / name
    (path / "report").mkdir(parents=True)
    (path / MANIFEST).write_text("{}")
    per_user = {phase: {"users": users, "ndcg@10": ndcg} for phase in ("valid", "test")}
    (path / "report" / "report.json").write_text(json.dumps({"per_user_served": per_user}))
    return path


def test_compare_is_paired_over_common_users(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    users = [f"u{n}" for n in range(200)]
    new = _fake_bundle(tmp_path, "new", users, [1.0] * 200)
    # The old bundle evaluated one user more and scored every common user 0.
    old = _fake_bundle(tmp_path, "old", [*users, "extra"], [0.0] * 201)
    assert main(["compare", str(new), str(old), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    test = out["phases"]["test"]
    assert (out["new"], out["old"], test["users"]) == ("new", "old", 200)
    assert test["new_minus_old"]["mean"] == pytest.approx(1.0)
    assert test["new_minus_old"]["verdict"] == "better"
    assert main(["compare", str(old), str(new)]) == 0
    text = capsys.readouterr().out
    assert "test   200 users: 0.0000 vs 1.0000, new - old -1.0000" in text and "worse" in text


def test_compare_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _fake_bundle(tmp_path, "a", ["u1"], [0.5])
    b = _fake_bundle(tmp_path, "b", ["u2"], [0.5])
    for argv, message in (
        (["compare", str(a), str(tmp_path / "nope")], "neither a bundle"),
        (["compare", str(a), str(b)], "share no evaluated users"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
