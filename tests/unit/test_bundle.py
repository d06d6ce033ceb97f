import json
import os

import numpy as np
import pytest

from recstack.core.bundle import MANIFEST, Bundle, resolve_bundle_dir, write_manifest
from recstack.core.errors import BundleError


def make_bundle(root, version="v1"):
    d = root / version
    (d / "items").mkdir(parents=True)
    (d / "items" / "catalog.jsonl").write_text(
        json.dumps({"id": "a", "title": "A", "text": "alpha", "metadata": {}})
        + "\n"
        + json.dumps({"id": "b", "title": "", "text": "beta"})
        + "\n"
    )
    np.save(d / "items" / "vectors.npy", np.eye(2, 4, dtype=np.float32))
    (d / "users").mkdir()
    (d / "users" / "history.jsonl").write_text('{"user_id": 7, "items": ["b", "a"]}\n')
    write_manifest(
        d,
        {
            "version": version,
            "dim": 4,
            "encoder": {},
            "ranker": {},
            "items": {"catalog": "items/catalog.jsonl", "vectors": "items/vectors.npy"},
            "index": {},
            "users": {"history": "users/history.jsonl"},
        },
    )
    return d


def test_open_verify_and_read(tmp_path):
    d = make_bundle(tmp_path)
    b = Bundle.open(d)
    assert b.version == "v1" and b.dim == 4
    items = list(b.iter_catalog())
    assert [i.id for i in items] == ["a", "b"]
    assert items[1].display_title == "beta"
    assert b.load_vectors().shape == (2, 4)
    assert list(b.iter_user_histories()) == [("7", ["b", "a"])]


def test_current_pointer(tmp_path):
    make_bundle(tmp_path, "v1")
    make_bundle(tmp_path, "v2")
    (tmp_path / "CURRENT").write_text("v2\n")
    assert resolve_bundle_dir(tmp_path).name == "v2"
    (tmp_path / "CURRENT").write_text("../etc\n")
    with pytest.raises(BundleError, match="invalid version"):
        resolve_bundle_dir(tmp_path)


def test_tampered_file_is_refused(tmp_path):
    d = make_bundle(tmp_path)
    with (d / "items" / "catalog.jsonl").open("a") as f:
        f.write("{}\n")
    with pytest.raises(BundleError, match="checksum mismatch for items/catalog.jsonl"):
        Bundle.open(d)


def test_missing_file_is_refused(tmp_path):
    d = make_bundle(tmp_path)
    os.remove(d / "users" / "history.jsonl")
    with pytest.raises(BundleError, match="missing file users/history.jsonl"):
        Bundle.open(d)


@pytest.mark.parametrize("rel", ["../outside.onnx", "/etc/passwd"])
def test_escaping_paths_are_refused(tmp_path, rel):
    d = make_bundle(tmp_path)
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["files"][rel] = {"sha256": "0" * 64, "bytes": 1}
    (d / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="must be relative and inside"):
        Bundle.open(d)


def test_symlinks_are_refused(tmp_path):
    d = make_bundle(tmp_path)
    (tmp_path / "elsewhere.txt").write_text("x")
    os.symlink(tmp_path / "elsewhere.txt", d / "link.txt")
    with pytest.raises(BundleError, match="symlink"):
        write_manifest(d, {"version": "v1"})


def test_unlisted_path_is_refused(tmp_path):
    b = Bundle.open(make_bundle(tmp_path))
    with pytest.raises(BundleError, match="not listed"):
        b.path("encoder/model.onnx")


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="neither a bundle"):
        Bundle.open(tmp_path)


@pytest.mark.parametrize("shape", [(2, 3), (3, 3), (2, 2)])
def test_recency_counts_are_checked_against_the_catalog(tmp_path, shape):
    from recstack.core.features import RECENCY_WINDOWS_S, load_recency

    d = make_bundle(tmp_path)
    assert load_recency(Bundle.open(d)) == {}  # no recency section: no counts
    counts = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.save(d / "items" / "recent.npy", counts)
    manifest = json.loads((d / MANIFEST).read_text())
    spec = {"counts": "items/recent.npy", "windows_s": list(RECENCY_WINDOWS_S), "as_of": 1}
    manifest["ranker"] = {"recency": spec}
    write_manifest(d, {k: v for k, v in manifest.items() if k != "files"})
    if shape == (2, 3):
        got = load_recency(Bundle.open(d))
        assert sorted(got) == ["a", "b"] and got["b"].tolist() == [3, 4, 5]
    else:
        with pytest.raises(BundleError, match="recent.npy has shape"):
            load_recency(Bundle.open(d))
    manifest["ranker"]["recency"]["windows_s"] = [1, 2, 3]
    write_manifest(d, {k: v for k, v in manifest.items() if k != "files"})
    with pytest.raises(BundleError, match="recency windows"):
        load_recency(Bundle.open(d))


def test_on_use_hashes_only_the_files_a_service_reads(tmp_path):
    d = make_bundle(tmp_path)
    history = d / "users" / "history.jsonl"
    history.write_text(history.read_text().replace("7", "8"))  # same size, wrong sha256
    b = Bundle.open(d, verify="on_use")  # opens: every file present with its size
    assert b.verified == set()
    assert [i.id for i in b.iter_catalog()] == ["a", "b"]
    assert b.verified == {"items/catalog.jsonl"}  # only what was read was hashed
    with pytest.raises(BundleError, match="checksum mismatch for users/history.jsonl"):
        list(b.iter_user_histories())
    with pytest.raises(BundleError, match="checksum mismatch"):
        Bundle.open(d)  # release tools still check every file


def test_on_use_refuses_a_missing_or_resized_file_at_open(tmp_path):
    d = make_bundle(tmp_path)
    (d / "users" / "history.jsonl").write_text("{}\n")
    with pytest.raises(BundleError, match="bytes, the manifest says"):
        Bundle.open(d, verify="on_use")
    (d / "users" / "history.jsonl").unlink()
    with pytest.raises(BundleError, match="missing file"):
        Bundle.open(d, verify="on_use")
