"""storage and weights against a real S3 server (rclone serve s3 on loopback, over HTTP)."""

from __future__ import annotations

import os
import time

import pytest
import torch

from h2s_dist.data import storage
from h2s_dist.data.s3server import LocalS3Server, find_rclone
from h2s_dist.weights import load_weights, save_state_dict

pytestmark = pytest.mark.integration


def _boto3_keys(server: LocalS3Server, prefix_uri: str) -> list[str]:
    import boto3

    bucket, prefix = prefix_uri[len("s3://"):].split("/", 1)
    client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name=server.region,
                          aws_access_key_id=server.env()["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=server.env()["AWS_SECRET_ACCESS_KEY"])
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_put_get_list_exists_delete_roundtrip(s3_env, s3_server):
    a, b = storage.join(s3_env, "shards", "a.tar"), storage.join(s3_env, "shards", "sub", "b.tar")
    storage.write_bytes(a, b"A" * 10)
    with storage.atomic_write(b) as f:
        f.write(b"B" * 3)
    storage.write_bytes(storage.join(s3_env, "meta.json"), b"{}")

    assert storage.read_bytes(a) == b"A" * 10 and storage.size(b) == 3
    with storage.open_uri(b) as f:
        assert f.read() == b"BBB"
    assert storage.exists(a) and not storage.exists(storage.join(s3_env, "nope"))
    assert storage.list_uris(storage.join(s3_env, "shards"), suffix=".tar") == [a, b]
    assert len(storage.list_uris(s3_env)) == 3

    storage.delete(a)
    assert not storage.exists(a) and storage.list_uris(storage.join(s3_env, "shards")) == [b]
    storage.delete(a, missing_ok=True)
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        storage.delete(storage.join(s3_env, "nope.bin"))


def test_missing_object_error_names_the_full_uri(s3_env):
    uri = storage.join(s3_env, "missing.pt")
    with pytest.raises(FileNotFoundError) as info:
        storage.read_bytes(uri)
    assert uri in str(info.value)


def test_failed_atomic_write_leaves_no_object_and_keeps_old_one(s3_env, s3_server):
    uri = storage.join(s3_env, "ckpt.pt")
    with pytest.raises(RuntimeError):
        with storage.atomic_write(uri) as f:
            f.write(b"x" * (6 << 20))  # more than one multipart chunk's worth
            raise RuntimeError("crash mid-write")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_write(uri) as f:
            f.write(b"new")
            raise RuntimeError("crash mid-write")
    assert storage.read_bytes(uri) == b"old"
    # On disk too: nothing but the committed object (no temp upload left in the bucket folder).
    folder = s3_server.root_dir / uri[len("s3://"):].rsplit("/", 1)[0]
    assert sorted(os.listdir(folder)) == ["ckpt.pt"]


def test_weights_roundtrip_through_s3(s3_env):
    torch.manual_seed(0)
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    uri = storage.join(s3_env, "weights", "linear.pt")
    save_state_dict(source.state_dict(), uri)
    assert load_weights(target, uri) == []
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)
    with pytest.raises(ValueError, match=r"weight: file \(2, 3\) vs model \(4, 3\)"):
        load_weights(torch.nn.Linear(3, 4), uri)


def test_pyarrow_filesystem_writes_and_reads(s3_env):
    fs, path = storage.pyarrow_filesystem(storage.join(s3_env, "ray"))
    fs.create_dir(path + "/checkpoint_000000")  # what Ray does: must not trip on directory markers
    with fs.open_output_stream(path + "/checkpoint_000000/state.bin") as f:
        f.write(b"ray-state")
    with fs.open_input_stream(path + "/checkpoint_000000/state.bin") as f:
        assert f.read() == b"ray-state"
    assert storage.read_bytes(storage.join(s3_env, "ray", "checkpoint_000000", "state.bin")) == b"ray-state"


def test_boto3_with_the_endpoint_sees_the_objects(s3_env, s3_server):
    storage.write_bytes(storage.join(s3_env, "x", "1.bin"), b"1")
    storage.write_bytes(storage.join(s3_env, "2.bin"), b"2")
    prefix = s3_env[len("s3://h2s-test/"):]
    assert _boto3_keys(s3_server, s3_env) == [f"{prefix}/2.bin", f"{prefix}/x/1.bin"]


def test_unreachable_endpoint_raises_storage_error_after_bounded_retries(s3_env, monkeypatch):
    from h2s_dist.data.s3server import free_port

    monkeypatch.setenv("H2S_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("H2S_S3_RETRY_TRIES", "3")
    uri = storage.join(s3_env, "a.bin")
    start = time.monotonic()
    with pytest.raises(storage.StorageError) as info:
        storage.read_bytes(uri)
    assert uri in str(info.value) and "3 attempt" in str(info.value)
    assert time.monotonic() - start < 10
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(info.value)


def test_server_starts_fast_and_repr_hides_the_secret(tmp_path):
    find_rclone()
    with LocalS3Server(tmp_path / "root", secret_key="not-to-be-shown") as server:
        assert server.running and server.startup_s < 5
        assert "not-to-be-shown" not in repr(server)
        print(f"LocalS3Server started in {server.startup_s * 1000:.0f} ms")
    assert not server.running
