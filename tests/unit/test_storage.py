"""storage on plain paths and file:// URIs, URI helpers, and the retry policy (with injected failures)."""

from __future__ import annotations

import os

import pytest

from h2s_dist.data import storage
from h2s_dist.data.storage import RetryPolicy, StorageError, retry_call


@pytest.fixture(params=["path", "file-uri"])
def base(request, tmp_path) -> str:
    """The same temp folder as a plain path and as a file:// URI."""
    return str(tmp_path) if request.param == "path" else f"file://{tmp_path}"


def test_write_then_read_roundtrips_bytes_and_size(base):
    uri = storage.join(base, "sub", "deeper", "a.bin")
    storage.write_bytes(uri, b"\x00hello\xff")
    assert storage.read_bytes(uri) == b"\x00hello\xff"
    assert storage.size(uri) == 7
    assert storage.exists(uri)
    with storage.open_uri(uri) as f:
        assert f.read() == b"\x00hello\xff"


def test_atomic_write_text_mode_writes_utf8(base):
    uri = storage.join(base, "t.txt")
    with storage.atomic_write(uri, "w") as f:
        f.write("flow ±20 px\n")
    assert storage.read_bytes(uri).decode("utf-8") == "flow ±20 px\n"


def test_atomic_write_failure_leaves_no_file_and_keeps_old_content(base, tmp_path):
    uri = storage.join(base, "ckpt.pt")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_write(uri) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert not storage.exists(uri)
    assert os.listdir(tmp_path) == []  # no temp file left behind either

    storage.write_bytes(uri, b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_write(uri) as f:
            f.write(b"new but broken")
            raise RuntimeError("boom")
    assert storage.read_bytes(uri) == b"old"
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_atomic_write_gives_usual_permissions(tmp_path):
    target = tmp_path / "w.bin"
    storage.write_bytes(str(target), b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_list_uris_is_recursive_sorted_filtered_and_keeps_the_scheme(base):
    for name in ["b/2.tar", "a.tar", "b/1.json", "b/c/3.tar"]:
        storage.write_bytes(storage.join(base, "shards", name), b"x")
    assert storage.list_uris(storage.join(base, "shards"), suffix=".tar") == [
        storage.join(base, "shards", "a.tar"),
        storage.join(base, "shards", "b", "2.tar"),
        storage.join(base, "shards", "b", "c", "3.tar"),
    ]
    assert len(storage.list_uris(storage.join(base, "shards"))) == 4
    assert storage.list_uris(storage.join(base, "nothing-here")) == []


def test_list_uris_skips_in_flight_atomic_writes(base):
    storage.write_bytes(storage.join(base, "done.bin"), b"x")
    with storage.atomic_write(storage.join(base, "busy.bin")) as f:
        f.write(b"half")
        assert storage.list_uris(base) == [storage.join(base, "done.bin")]


@pytest.mark.parametrize("call", [storage.read_bytes, storage.size, storage.open_uri, storage.delete])
def test_missing_file_error_names_the_uri(base, call):
    uri = storage.join(base, "missing.bin")
    with pytest.raises(FileNotFoundError) as info:
        call(uri)
    assert uri in str(info.value)


def test_delete_removes_and_missing_ok_is_quiet(base):
    uri = storage.join(base, "x.bin")
    storage.write_bytes(uri, b"x")
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri, missing_ok=True)


def test_delete_can_prune_the_emptied_folder_but_keeps_a_busy_one(base, tmp_path):
    lone, busy, neighbour = (storage.join(base, *p) for p in (("a", "x.bin"), ("b", "x.bin"), ("b", "y.bin")))
    for uri in (lone, busy, neighbour):
        storage.write_bytes(uri, b"x")
    storage.delete(lone, prune_empty_folder=True)
    storage.delete(busy, prune_empty_folder=True)
    assert not (tmp_path / "a").exists() and (tmp_path / "b" / "y.bin").is_file()


def test_open_uri_refuses_write_modes(tmp_path):
    with pytest.raises(ValueError, match="atomic_write"):
        storage.open_uri(str(tmp_path / "x"), "wb")


def test_uri_helpers():
    assert storage.join("s3://b/run/", "/ckpt", "step_1/") == "s3://b/run/ckpt/step_1"
    assert storage.join("file:///tmp/a", "b") == "file:///tmp/a/b"
    assert storage.join("/tmp/a", "b", "c") == os.path.join("/tmp/a", "b", "c")
    assert storage.is_remote("s3://b/k") and not storage.is_remote("/x") and not storage.is_remote("file:///x")
    assert storage.local_path_or_none("file:///tmp/x") == "/tmp/x"
    assert storage.local_path_or_none("rel/x") == "rel/x"
    assert storage.local_path_or_none("s3://b/x") is None
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage.read_bytes("gs://b/k")
    with pytest.raises(ValueError, match="no bucket"):
        storage.exists("s3:///k")


def test_filesystem_and_pyarrow_filesystem_for_local_paths(tmp_path):
    fs, path = storage.filesystem(f"file://{tmp_path}/a.bin")
    with fs.open(path, "wb") as f:
        f.write(b"abc")
    pa_fs, pa_path = storage.pyarrow_filesystem(str(tmp_path / "a.bin"))
    with pa_fs.open_input_stream(pa_path) as f:
        assert f.read() == b"abc"


# ----------------------------------------------------------------------------- retries

class _Flaky:
    """Raises `errors` one after the other, then returns "ok"."""

    def __init__(self, *errors: BaseException):
        self.errors, self.calls = list(errors), 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _no_sleep(sleeps):
    return sleeps.append


def test_transient_failure_succeeds_on_second_try():
    sleeps: list[float] = []
    fn = _Flaky(ConnectionResetError("reset by peer"))
    assert retry_call(fn, "s3://b/k", sleep=_no_sleep(sleeps)) == "ok"
    assert fn.calls == 2 and sleeps == [0.2]


def test_permanent_transient_failure_raises_storage_error_naming_uri_with_bounded_backoff():
    sleeps: list[float] = []
    fn = _Flaky(*[TimeoutError("endpoint down")] * 10)
    policy = RetryPolicy(tries=5, first_delay_s=0.2, max_delay_s=4.0, max_total_s=10.0)
    with pytest.raises(StorageError) as info:
        retry_call(fn, "s3://bucket/key.bin", "read", policy=policy, sleep=_no_sleep(sleeps))
    assert "s3://bucket/key.bin" in str(info.value) and "endpoint down" in str(info.value)
    assert fn.calls == 5 and sleeps == [0.2, 0.4, 0.8, 1.6]


def test_total_backoff_budget_stops_retrying_early():
    sleeps: list[float] = []
    fn = _Flaky(*[ConnectionError("x")] * 10)
    with pytest.raises(StorageError):
        retry_call(fn, "s3://b/k", policy=RetryPolicy(tries=10, first_delay_s=1, max_total_s=3),
                   sleep=_no_sleep(sleeps))
    assert sum(sleeps) <= 3 and fn.calls == 3


def test_non_transient_errors_are_not_retried():
    fn = _Flaky(FileNotFoundError("b/k"))
    with pytest.raises(FileNotFoundError):
        retry_call(fn, "s3://b/k", sleep=lambda s: pytest.fail("slept"))
    assert fn.calls == 1


def test_server_errors_and_throttling_are_transient_but_client_errors_are_not():
    from botocore.exceptions import ClientError, EndpointConnectionError

    def client_error(status, code):
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    assert storage.is_transient(client_error(503, "SlowDown"))
    assert storage.is_transient(client_error(500, "InternalError"))
    assert storage.is_transient(client_error(400, "Throttling"))
    assert not storage.is_transient(client_error(403, "AccessDenied"))
    assert storage.is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    wrapped = OSError("s3fs says so")
    wrapped.__cause__ = client_error(503, "ServiceUnavailable")
    assert storage.is_transient(wrapped)


def test_s3_settings_repr_hides_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topsecret-value")
    monkeypatch.setenv("H2S_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    settings = storage.S3Settings.from_env()
    assert settings.endpoint_url == "http://127.0.0.1:9" and settings.region
    assert "topsecret" not in repr(settings) and settings.credential_fingerprint not in repr(settings)


def test_glob_lists_sizes_and_crosses_folders_with_double_star(tmp_path):
    for rel, size in (("a/x.mp4", 3), ("a/b/y.mp4", 5), ("a/b/z.txt", 1), ("top.mp4", 2)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"v" * size)
    found = storage.glob(str(tmp_path / "**" / "*.mp4"))
    assert found == sorted([(str(tmp_path / "a/x.mp4"), 3), (str(tmp_path / "a/b/y.mp4"), 5), (str(tmp_path / "top.mp4"), 2)])
    assert [n for _, n in storage.glob(str(tmp_path / "a"))] == [5, 1, 3]  # a folder: everything under it
    assert storage.glob(str(tmp_path / "nothing" / "*.mp4")) == []


def test_local_copy_hashes_a_file_in_chunks(tmp_path):
    import hashlib

    data = bytes(range(256)) * 1000
    (tmp_path / "f.bin").write_bytes(data)
    with storage.local_copy(str(tmp_path / "f.bin"), chunk_bytes=1000) as (path, digest, size):
        assert (path, digest, size) == (str(tmp_path / "f.bin"), hashlib.sha256(data).hexdigest(), len(data))
