"""Manifests name shards relative to the dataset, and read older ones that held full URIs."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from h2s_dist.data import manifest, storage


def _row(key: str, shard: str) -> dict:
    return {"key": key, "shard": shard, "label": 0, "class_name": "x", "split_1": "train", "split_2": "",
            "split_3": "", "num_frames": 16, "fps": 25.0, "width": 64, "height": 48, "stored_bytes": 1,
            "source": "s", "sha256": "0", "encoding": "jpeg"}


@pytest.mark.parametrize(("stored", "relative"), [
    ("shards/shard-000003.tar", "shards/shard-000003.tar"),              # written now
    ("/home/me/ds/shards/shard-000003.tar", "shards/shard-000003.tar"),  # older manifests: full paths
    ("file:///home/me/ds/shards/shard-000003.tar", "shards/shard-000003.tar"),
    ("s3://bucket/ucf101/shards/shard-000003.tar", "shards/shard-000003.tar"),
])
def test_a_shard_resolves_under_the_uri_the_dataset_is_read_from(stored, relative):
    assert manifest.relative_shard(stored) == relative
    assert manifest.shard_uri("s3://other/place", stored) == "s3://other/place/shards/shard-000003.tar"
    assert manifest.shard_uri("/mnt/ds", stored) == "/mnt/ds/shards/shard-000003.tar"


def test_written_manifest_names_shards_relative_even_from_full_uris(tmp_path):
    rows = [_row("a", str(tmp_path / "shards" / "shard-000000.tar")), _row("b", "shards/shard-000001.tar")]
    manifest.write_manifest(str(tmp_path), rows)
    table = manifest.read_manifest(str(tmp_path))
    assert table.column("shard").to_pylist() == ["shards/shard-000000.tar", "shards/shard-000001.tar"]


def test_an_older_manifest_with_full_paths_still_reads(tmp_path):
    rows = [_row("a", "/gone/laptop/ds/shards/shard-000000.tar")]
    table = manifest.manifest_table(rows).set_column(1, "shard", [["/gone/laptop/ds/shards/shard-000000.tar"]])
    buffer = io.BytesIO()
    pq.write_table(table, buffer)  # as written before names were relative
    storage.write_bytes(storage.join(str(tmp_path), manifest.MANIFEST_NAME), buffer.getvalue())
    (shard,) = manifest.read_manifest(str(tmp_path)).column("shard").to_pylist()
    assert manifest.shard_uri(str(tmp_path), shard) == str(tmp_path / "shards" / "shard-000000.tar")


def test_a_manifest_written_before_segments_reads_as_whole_videos(tmp_path):
    table = manifest.manifest_table([_row("a", "shards/shard-000000.tar")]).drop_columns(["source_key", "start_frame"])
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(storage.join(str(tmp_path), manifest.MANIFEST_NAME), buffer.getvalue())
    read = manifest.read_manifest(str(tmp_path))
    assert read.schema.equals(manifest.MANIFEST_SCHEMA)
    assert read.select(["key", "source_key", "start_frame"]).to_pylist() == [{"key": "a", "source_key": "a", "start_frame": 0}]
