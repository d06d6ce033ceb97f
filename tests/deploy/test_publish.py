"""recstack.tools.publish: what the initContainer, the follow sidecar and the training Job's publish
step rely on."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from recstack.core.bundle import CURRENT, MANIFEST, PREVIOUS, Bundle, write_manifest
from recstack.tools.publish import PublishError, fetch, follow_once, main, publish

VERSION = "20260101T000000-tiny"


def make_bundle(root: Path, version: str = VERSION) -> Path:
    """A structurally valid bundle (content is irrelevant to delivery)."""
    d = root / version
    for rel in ("encoder/model.onnx", "ranker/model.onnx", "items/catalog.jsonl", "index/hnsw.bin"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(rel.encode() * 100)
    write_manifest(
        d,
        {"version": version, "dim": 4, "encoder": {}, "ranker": {}, "items": {}, "index": {}},
    )
    (root / "CURRENT").write_text(version + "\n")
    return d


@pytest.fixture
def source(tmp_path: Path) -> Path:
    make_bundle(tmp_path / "src")
    return tmp_path / "src"


@pytest.fixture
def http_source(source: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(source))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def test_fetch_local_verifies_and_points_current(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    path = fetch(str(source), dest, VERSION)
    assert (dest / "CURRENT").read_text().strip() == VERSION
    assert Bundle.open(dest).version == VERSION and path == dest / VERSION
    assert sorted(p.name for p in dest.iterdir()) == sorted(["CURRENT", VERSION])  # no staging left


def test_fetch_over_http_and_default_version(http_source: str, tmp_path: Path) -> None:
    fetch(http_source, tmp_path / "dest")  # version from the source's CURRENT
    assert Bundle.open(tmp_path / "dest").version == VERSION


def test_corrupt_source_is_refused_and_current_untouched(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    make_bundle(dest, "old")
    (source / VERSION / "ranker/model.onnx").write_bytes(b"tampered")
    with pytest.raises(PublishError, match="checksum mismatch"):
        fetch(str(source), dest, VERSION)
    assert (dest / "CURRENT").read_text().strip() == "old"
    assert not (dest / VERSION).exists()
    assert [p.name for p in dest.iterdir() if p.name.startswith(".")] == []


def test_http_body_larger_than_manifest_is_refused(
    source: Path, http_source: str, tmp_path: Path
) -> None:
    manifest = json.loads((source / VERSION / MANIFEST).read_text())
    manifest["files"]["index/hnsw.bin"]["bytes"] = 10
    (source / VERSION / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PublishError, match="larger than"):
        fetch(http_source, tmp_path / "dest", VERSION)


def test_escaping_paths_and_bad_names_are_refused(source: Path, tmp_path: Path) -> None:
    manifest = json.loads((source / VERSION / MANIFEST).read_text())
    manifest["files"]["../../evil"] = {"sha256": "0" * 64, "bytes": 1}
    (source / VERSION / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PublishError, match="inside the bundle"):
        fetch(str(source), tmp_path / "dest", VERSION)
    assert not (tmp_path / "evil").exists()
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(PublishError):
            fetch(str(source), tmp_path / "dest2", bad or " ")
    with pytest.raises(PublishError, match="unsupported"):
        fetch("file:///etc", tmp_path / "dest3", VERSION)


def test_version_must_match_manifest(tmp_path: Path) -> None:
    d = make_bundle(tmp_path / "src", "v2")
    d.rename(tmp_path / "src" / "v3")  # directory says v3, manifest says v2
    with pytest.raises(PublishError, match="expected 'v3'"):
        fetch(str(tmp_path / "src"), tmp_path / "dest", "v3")


def test_existing_copy_is_reused_and_corrupt_copy_replaced(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    fetch(str(source), dest, VERSION)
    (dest / VERSION / "items/catalog.jsonl").write_text("corrupt")
    fetch(str(source), dest, VERSION)
    Bundle.open(dest)  # verified again: the corrupt copy was replaced


def test_publish_cli_then_fetch_cli(source: Path, tmp_path: Path) -> None:
    assert main(["publish", "--bundles", str(source), "--dest", str(tmp_path / "pub")]) == 0
    assert (tmp_path / "pub" / "CURRENT").read_text().strip() == VERSION
    assert publish(source, tmp_path / "pub2", VERSION, set_current=False).is_dir()
    assert not (tmp_path / "pub2" / "CURRENT").exists()
    args = ["fetch", "--source", str(tmp_path / "pub"), "--version", VERSION, "--dest"]
    assert main([*args, str(tmp_path / "pod")]) == 0
    assert main(["fetch", "--source", str(tmp_path / "nope"), "--dest", str(tmp_path / "x")]) == 2


def test_follow_installs_each_new_version_and_keeps_the_one_before(
    source: Path, http_source: str, tmp_path: Path
) -> None:
    pod = tmp_path / "pod"
    assert follow_once(http_source, pod) == VERSION
    assert (pod / CURRENT).read_text().strip() == VERSION and not (pod / PREVIOUS).exists()
    assert follow_once(http_source, pod) is None  # nothing new: nothing copied
    for n, version in enumerate(("v2", "v3"), start=1):
        make_bundle(source, version)  # the publish step points the source's CURRENT
        assert follow_once(http_source, pod) == version
        assert (pod / CURRENT).read_text().strip() == version
        before = VERSION if n == 1 else "v2"
        assert (pod / PREVIOUS).read_text().strip() == before
        Bundle.open(pod / version)
    # Two back is removed; the staging area and other files are not touched.
    assert sorted(p.name for p in pod.iterdir() if p.is_dir()) == ["v2", "v3"]
    # A corrupt new version is refused; the pod keeps serving what it has.
    make_bundle(source, "v4")
    (source / "v4" / "index" / "hnsw.bin").write_bytes(b"tampered")
    with pytest.raises(PublishError):
        follow_once(http_source, pod)
    assert (pod / CURRENT).read_text().strip() == "v3"


def test_follow_cli_stops_on_sigterm(source: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    pod = tmp_path / "pod"
    argv = ["follow", "--source", str(source), "--dest", str(pod), "--interval-s", "0.2"]
    proc = subprocess.Popen([sys.executable, "-m", "recstack.tools.publish", *argv])
    try:
        deadline = time.monotonic() + 60
        while not (pod / CURRENT).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "follow did not install"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert main(["follow", "--source", str(source), "--dest", str(pod), "--interval-s", "0"]) == 2
