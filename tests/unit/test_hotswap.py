"""The CURRENT-pointer watcher: reloads on a move, reports a refused bundle only once."""

from recstack.errors import FailedPrecondition
from recstack.hotswap import PointerWatcher
from tests.unit.test_bundle import make_bundle


def test_reload_on_move_and_refused_bundle_not_retried(tmp_path):
    v1, v2 = make_bundle(tmp_path, "v1"), make_bundle(tmp_path, "v2")
    (tmp_path / "CURRENT").write_text("v1\n")
    serving = {"root": v1.resolve()}
    calls = []

    def reload():
        calls.append(serving["root"])
        if (tmp_path / "CURRENT").read_text().strip() == "v2":
            raise FailedPrecondition("bad bundle")
        serving["root"] = (tmp_path / "v3").resolve()

    watcher = PointerWatcher(str(tmp_path), lambda: serving["root"], reload, "test")
    watcher.check()
    assert calls == []  # the pointer names what is serving
    (tmp_path / "CURRENT").write_text("v2\n")
    watcher.check()
    watcher.check()
    assert len(calls) == 1  # refused once, then remembered
    make_bundle(tmp_path, "v3")
    (tmp_path / "CURRENT").write_text("v3\n")
    watcher.check()
    assert len(calls) == 2 and serving["root"] == (tmp_path / "v3").resolve()
    watcher.check()
    assert len(calls) == 2
    assert v2.exists()


def test_unreadable_pointer_keeps_serving(tmp_path):
    calls = []
    watcher = PointerWatcher(
        str(tmp_path / "missing"), lambda: None, lambda: calls.append(1), "test"
    )
    watcher.check()
    assert calls == []
