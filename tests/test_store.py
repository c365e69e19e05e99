"""Behaviour of suti.store over a local folder and a real (moto) S3 server. No mocks."""

from __future__ import annotations

import os
import pickle
import time
import uuid

import numpy as np
import pytest

from suti.store import DONE_MARKER, FileStore, S3Store, StoreError, open_store

try:
    from servers import free_port, moto_server
except ImportError:  # tests/ became a package
    from tests.servers import free_port, moto_server


BUCKET = "suti-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_server() as url:
        yield url


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return open_store(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    # A fresh prefix per test keeps tests independent inside one bucket.
    return open_store(f"s3://{BUCKET}/t-{uuid.uuid4().hex[:8]}", endpoint_url=endpoint)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


class Unserialisable:
    """JSON encoding reaches this only after earlier chunks were written."""


# -- round trips --------------------------------------------------------------


def test_bytes_roundtrip_and_overwrite(store):
    url = store.put_bytes("a/b/blob.bin", b"\x00\x01hello")
    assert url == store.url("a/b/blob.bin")
    assert store.get_bytes("a/b/blob.bin") == b"\x00\x01hello"
    store.put_bytes("a/b/blob.bin", bytearray(b"second"))
    assert store.get_bytes("a/b/blob.bin") == b"second"
    assert store.exists("a/b/blob.bin")
    assert not store.exists("a/b")  # a folder is not an object


def test_json_roundtrip(store):
    obj = {"name": "sübject", "scores": [0.5, 1, None], "nested": {"k": True}}
    store.put_json("meta/run.json", obj)
    assert store.get_json("meta/run.json") == obj
    assert store.get_bytes("meta/run.json").endswith(b"\n")


def test_array_roundtrip(store):
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    b = np.array([1, -2, 3], dtype=np.int64)
    store.put_array("arr/a.npy", a)
    store.put_array("arr/b.npy", b)
    got_a, got_b = store.get_array("arr/a.npy"), store.get_array("arr/b.npy")
    assert got_a.dtype == np.float32 and got_a.shape == (3, 4)
    np.testing.assert_array_equal(got_a, a)
    np.testing.assert_array_equal(got_b, b)
    store.put_bytes("arr/junk.npy", b"not an array")
    with pytest.raises(StoreError) as exc:
        store.get_array("arr/junk.npy")
    assert _one_line(exc).startswith("corrupt array artifact: ")


def test_file_roundtrip(store, tmp_path):
    src = tmp_path / "src.bin"
    payload = os.urandom(300_000)
    src.write_bytes(payload)
    assert store.put_file("files/x.bin", src) == store.url("files/x.bin")
    dest_dir = tmp_path / "down" / "deep"
    dest = store.get_file("files/x.bin", dest_dir / "x.bin")
    assert dest.read_bytes() == payload
    assert os.listdir(dest_dir) == ["x.bin"]  # no temp file left behind
    # Overwriting an existing local file works too.
    store.put_bytes("files/x.bin", b"small")
    store.get_file("files/x.bin", dest)
    assert dest.read_bytes() == b"small"
    with pytest.raises(StoreError) as exc:
        store.put_file("files/y.bin", tmp_path / "nope.bin")
    assert "no such local file" in _one_line(exc)


# -- listing and deleting -------------------------------------------------------


def test_list_is_sorted_recursive_with_folder_semantics(store):
    for key in ["b", "a/2/x", "a/1", "a10/y", "a/2/z"]:
        store.put_bytes(key, b"1")
    assert store.list() == ["a/1", "a/2/x", "a/2/z", "a10/y", "b"]
    assert store.list("a") == ["a/1", "a/2/x", "a/2/z"]  # not a10/
    assert store.list("a/") == ["a/1", "a/2/x", "a/2/z"]
    assert store.list("a/2") == ["a/2/x", "a/2/z"]
    assert store.list("a/1") == ["a/1"]
    assert store.list("missing") == []


def test_delete_prefix(store):
    for key in ["a/1", "a/2/x", "a10/y", "b"]:
        store.put_bytes(key, b"1")
    store.delete("a")
    assert store.list() == ["a10/y", "b"]
    store.delete("b")
    assert store.list() == ["a10/y"]
    store.delete("never/there")  # deleting nothing is fine
    with pytest.raises(StoreError) as exc:
        store.delete("")
    assert "refusing" in _one_line(exc)
    assert store.list() == ["a10/y"]


# -- errors --------------------------------------------------------------------


def test_missing_key_is_one_line_store_error(store, tmp_path):
    url = store.url("nope/x.json")
    for call in (
        lambda: store.get_bytes("nope/x.json"),
        lambda: store.get_json("nope/x.json"),
        lambda: store.get_array("nope/x.json"),
        lambda: store.get_file("nope/x.json", tmp_path / "dl" / "x.json"),
    ):
        with pytest.raises(StoreError) as exc:
            call()
        assert _one_line(exc) == f"missing artifact: {url}"
    assert not (tmp_path / "dl").exists() or os.listdir(tmp_path / "dl") == []


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "a/..", "/etc/passwd", "a\\..\\b", "", "./", ".suti-tmp-x"]
)
def test_escaping_and_reserved_keys_rejected(store, key, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    for call in (
        lambda: store.put_bytes(key, b"evil"),
        lambda: store.get_bytes(key),
        lambda: store.exists(key),
    ):
        with pytest.raises(StoreError) as exc:
            call()
        assert "invalid artifact key" in _one_line(exc)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with pytest.raises(StoreError):
        store.list("../")
    with pytest.raises(StoreError):
        store.delete("a/../..")


def test_keys_are_normalised(store):
    store.put_bytes("./a//b/./c.txt", b"x")
    assert store.list() == ["a/b/c.txt"]
    assert store.get_bytes("a/b/c.txt") == b"x"


# -- atomicity -----------------------------------------------------------------


def test_failed_put_leaves_no_partial_object(store):
    store.put_json("out/result.json", {"ok": 1})
    # The big string is encoded (and, locally, written) before the encoder hits
    # the unserialisable value: a genuine failure half-way through the write.
    bad = {"big": "x" * 200_000, "boom": Unserialisable()}
    with pytest.raises(TypeError):
        store.put_json("out/result.json", bad)
    with pytest.raises(TypeError):
        store.put_json("out/new.json", bad)
    assert store.get_json("out/result.json") == {"ok": 1}  # old version intact
    assert not store.exists("out/new.json")
    assert store.list() == ["out/result.json"]
    if isinstance(store, FileStore):
        # No temp file left on disk either.
        assert os.listdir(store.root / "out") == ["result.json"]


def test_stray_temp_file_is_invisible(tmp_path):
    """A writer killed before os.replace leaves a temp file: it must not look like an artifact."""
    store = FileStore(tmp_path / "s")
    store.put_bytes("out/a.bin", b"a")
    (store.root / "out" / ".suti-tmp-k2j3h4").write_bytes(b"half")
    assert store.list() == ["out/a.bin"]
    assert store.list("out") == ["out/a.bin"]
    assert not store.is_done("out")


# -- completion markers ------------------------------------------------------------


def test_done_markers(store):
    assert not store.is_done("stage1")
    assert store.done_meta("stage1") is None
    store.put_array("stage1/part-0.npy", np.zeros(3))
    assert not store.is_done("stage1")  # outputs without a marker are not complete
    store.mark_done("stage1", {"rows": 3, "seed": 7})
    assert store.is_done("stage1") and store.is_done("stage1/")
    assert store.done_meta("stage1") == {"rows": 3, "seed": 7}
    assert store.list("stage1") == [f"stage1/{DONE_MARKER}", "stage1/part-0.npy"]
    assert not store.is_done("stage")  # folder semantics, not string prefix
    store.mark_done("stage2")
    assert store.done_meta("stage2") == {}
    store.mark_done("")  # marker at the store root
    assert store.is_done("") and store.exists(DONE_MARKER)
    store.delete("stage1")
    assert not store.is_done("stage1")
    with pytest.raises(StoreError):
        store.mark_done("../other")


# -- open_store and backend specifics ----------------------------------------------------


def test_open_store_local_forms(tmp_path, monkeypatch):
    plain = open_store(str(tmp_path / "s"))
    assert isinstance(plain, FileStore)
    assert plain.uri == (tmp_path / "s").as_uri()
    assert open_store(plain.uri) == plain
    assert open_store(tmp_path / "s") == plain
    monkeypatch.chdir(tmp_path)
    assert open_store("s") == plain  # relative paths resolve now, against the cwd
    assert plain.local_path("a/b.json") == tmp_path / "s" / "a" / "b.json"
    assert plain.url("a/b.json") == (tmp_path / "s" / "a" / "b.json").as_uri()
    assert open_store("file://localhost" + str(tmp_path / "s")) == plain
    spaced = open_store((tmp_path / "with space").as_uri())
    assert spaced.root == tmp_path / "with space"


@pytest.mark.parametrize("uri", ["ftp://host/x", "http://example.com/a", "file://otherhost/x", ""])
def test_open_store_rejects_other_schemes(uri):
    with pytest.raises(StoreError) as exc:
        open_store(uri)
    _one_line(exc)


def test_s3_uri_url_and_local_path(s3_endpoint):
    store = open_store(f"s3://{BUCKET}/some/prefix/", endpoint_url=s3_endpoint)
    assert isinstance(store, S3Store)
    assert store.uri == f"s3://{BUCKET}/some/prefix"
    assert store.url("a/b.json") == f"s3://{BUCKET}/some/prefix/a/b.json"
    assert store.local_path("a/b.json") is None
    bare = open_store("s3://suti-bare", endpoint_url=s3_endpoint)  # creates the bucket
    bare.put_bytes("k", b"v")
    assert bare.url("k") == "s3://suti-bare/k" and bare.list() == ["k"]


def test_s3_prefixes_are_isolated(s3_endpoint):
    one = open_store(f"s3://{BUCKET}/iso/one", endpoint_url=s3_endpoint)
    ten = open_store(f"s3://{BUCKET}/iso/one0", endpoint_url=s3_endpoint)
    one.put_bytes("k", b"1")
    ten.put_bytes("k", b"10")
    assert one.list() == ["k"] and ten.list() == ["k"]
    assert one.get_bytes("k") == b"1"


def test_s3_endpoint_from_environment(s3_endpoint, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.delenv("SUTI_S3_ENDPOINT_URL", raising=False)
    store = open_store(f"s3://{BUCKET}/env1")
    assert store.endpoint_url == s3_endpoint
    # SUTI_S3_ENDPOINT_URL wins over AWS_ENDPOINT_URL.
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("SUTI_S3_ENDPOINT_URL", s3_endpoint)
    store = open_store(f"s3://{BUCKET}/env2")
    store.put_json("x.json", [1])
    assert store.get_json("x.json") == [1]
    # ...and the argument wins over both.
    monkeypatch.setenv("SUTI_S3_ENDPOINT_URL", dead)
    assert open_store(f"s3://{BUCKET}/env2", endpoint_url=s3_endpoint).get_json("x.json") == [1]


def test_s3_pagination_in_list_and_delete(s3_endpoint):
    store = open_store(f"s3://{BUCKET}/pages", endpoint_url=s3_endpoint)
    store.page_size = 2  # force several pages/batches with a handful of keys
    keys = [f"p/{i:02d}" for i in range(7)]
    for k in keys:
        store.put_bytes(k, b"x")
    assert store.list() == keys
    store.delete("p")
    assert store.list() == []


def test_s3_store_pickles(s3_endpoint):
    store = open_store(f"s3://{BUCKET}/pick", endpoint_url=s3_endpoint)
    store.put_bytes("k", b"v")
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store and clone.get_bytes("k") == b"v"


def test_unreachable_endpoint_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(StoreError) as exc:
        open_store("s3://b/p", endpoint_url=endpoint, max_attempts=2, connect_timeout=1)
    assert time.monotonic() - start < 15
    assert _one_line(exc) == f"cannot reach S3 endpoint {endpoint}: connection refused"


def test_missing_credentials_is_one_line(s3_endpoint, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StoreError) as exc:
        open_store(f"s3://{BUCKET}/nocreds", endpoint_url=s3_endpoint)
    assert _one_line(exc).startswith(f"no AWS credentials for s3://{BUCKET}")
