"""The shared core lifecycle (recstack.core.lifecycle): versions held during a rollout, leases
that keep a core open while a request runs on it, retirement after the grace period, and
the CURRENT-pointer watcher (reloads on a move, reports a refused bundle only once).
The services' real cores are exercised in test_rank_core and the integration tests."""

import threading
from pathlib import Path

import pytest

from recstack.core.bundle import resolve_previous_dir
from recstack.core.errors import FailedPrecondition, Unavailable
from recstack.core.lifecycle import PointerWatcher, VersionNotServed, Versions
from tests.unit.test_bundle import make_bundle

WAIT = 30.0


class FakeCore:
    """Stands in for a service core: a version and a close() the test can observe."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.root = Path("/bundles") / version
        self.closed = threading.Event()
        self.close_calls = 0

    def close(self) -> None:
        self.close_calls += 1
        self.closed.set()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def versions(grace_s=60.0):
    clock = Clock()
    return Versions("test", grace_s, clock=clock), clock


def test_nothing_is_served_before_the_first_publish():
    v, _ = versions()
    with pytest.raises(Unavailable, match="still loading"), v.lease():
        pass
    assert v.peek() is None and v.held() == ()


def test_lease_by_version_and_refusal_names_the_field_and_the_held_versions():
    v, _ = versions()
    v1 = FakeCore("v1")
    assert v.publish(v1) is None
    with v.lease() as core:
        assert core is v1
    with v.lease("v1") as core:
        assert core is v1
    with pytest.raises(VersionNotServed) as err, v.lease("v9"):
        pass
    assert err.value.field == "embedding_version" and err.value.held == ("v1",)
    assert isinstance(err.value, FailedPrecondition)


def test_replaced_primary_is_kept_while_named_then_retired_after_grace():
    v, clock = versions(grace_s=60.0)
    v1, v2 = FakeCore("v1"), FakeCore("v2")
    v.publish(v1)
    clock.now += 500  # v1 idle for longer than the grace period before the swap ...
    assert v.publish(v2) == "v1"
    # ... still kept: the grace period of a replaced primary starts at the swap.
    assert v.held() == ("v2", "v1")
    with v.lease() as core:
        assert core is v2
    clock.now += 50
    with v.lease("v1") as core:  # named: its grace period restarts
        assert core is v1
    clock.now += 50
    assert v.sweep() == []
    clock.now += 11
    assert v.sweep() == ["v1"]
    assert v.held() == ("v2",)
    assert v1.closed.wait(WAIT), "the retired core was never closed"
    assert not v2.closed.is_set()
    with pytest.raises(VersionNotServed), v.lease("v1"):
        pass


def test_a_retired_core_is_closed_only_after_its_last_lease_ends():
    v, _ = versions(grace_s=0.0)
    v1, v2 = FakeCore("v1"), FakeCore("v2")
    v.publish(v1)
    with v.lease("v1") as core:
        v.publish(v2)  # no grace: v1 retires at once, but a request is still inside it
        assert v.held() == ("v2",)
        assert not v1.closed.wait(0.2)
        assert core is v1
    assert v1.closed.wait(WAIT), "closed neither at the last release nor after"
    assert v1.close_calls == 1


def test_same_version_published_again_replaces_the_old_instance():
    v, _ = versions()
    a, b = FakeCore("v1"), FakeCore("v1")
    v.publish(a)
    v.publish(b)
    assert v.held() == ("v1",)
    assert a.closed.wait(WAIT)
    with v.lease("v1") as core:
        assert core is b


def test_retain_adds_a_non_primary_version_once():
    v, _ = versions()
    v2, v1 = FakeCore("v2"), FakeCore("v1")
    v.publish(v2)
    assert v.retain(v1) is True
    assert v.retain(FakeCore("v1")) is False
    assert v.held() == ("v2", "v1")
    with v.lease_all() as cores:
        assert {c.version for c in cores} == {"v1", "v2"}


def test_close_closes_every_core():
    v, _ = versions()
    v1, v2 = FakeCore("v1"), FakeCore("v2")
    v.publish(v1)
    v.publish(v2)
    v.close()
    assert v1.closed.is_set() and v2.closed.is_set()
    assert v.peek() is None


def test_previous_pointer(tmp_path):
    make_bundle(tmp_path, "v1")
    make_bundle(tmp_path, "v2")
    (tmp_path / "CURRENT").write_text("v2\n")
    assert resolve_previous_dir(tmp_path) is None
    (tmp_path / "PREVIOUS").write_text("v1\n")
    assert resolve_previous_dir(tmp_path) == tmp_path / "v1"
    (tmp_path / "PREVIOUS").write_text("../etc\n")
    assert resolve_previous_dir(tmp_path) is None
    assert resolve_previous_dir(tmp_path / "v1") is None  # a bundle directory has none


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
