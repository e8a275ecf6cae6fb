"""The dataset manifest (one Parquet row per ingested video) and the class list.

Layout at a dataset URI (plain path, file:// or s3://), see docs/data.md:
  URI/manifest.parquet   MANIFEST_SCHEMA, rows in shard order
  URI/classes.json       {"classes": [...]}, index = label

    table = read_manifest("s3://bucket/ucf101")
    train = select(table, split=1, subset="train")
    shards = sorted(set(train.column("shard").to_pylist()))
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from h2s_dist.data import storage

MANIFEST_NAME = "manifest.parquet"
CLASSES_NAME = "classes.json"
SPLIT_COLUMNS = ("split_1", "split_2", "split_3")
SUBSETS = ("train", "test")

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),  # full URI of the tar holding the sample
        ("label", pa.int32()),  # -1 = unlabeled
        ("class_name", pa.string()),
        ("split_1", pa.string()),  # "train" | "test" | "" (not in that split)
        ("split_2", pa.string()),
        ("split_3", pa.string()),
        ("num_frames", pa.int32()),
        ("fps", pa.float32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("stored_bytes", pa.int64()),  # size of the encoded video member
        ("source", pa.string()),
        ("sha256", pa.string()),  # of the source file (of the frames for synthetic videos)
        ("encoding", pa.string()),  # "mp4" | "jpeg"
    ]
)


def manifest_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts with every MANIFEST_SCHEMA field) -> a table with exactly that schema."""
    missing = [n for n in MANIFEST_SCHEMA.names if rows and n not in rows[0]]
    if missing:
        raise ValueError(f"manifest rows lack fields {missing}")
    columns = {name: [row[name] for row in rows] for name in MANIFEST_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)


def write_manifest(dataset_uri: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """Write URI/manifest.parquet atomically; returns its URI."""
    buffer = io.BytesIO()
    pq.write_table(manifest_table(rows), buffer)
    uri = storage.join(dataset_uri, MANIFEST_NAME)
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def read_manifest(dataset_uri: str) -> pa.Table:
    """URI/manifest.parquet -> pyarrow.Table (MANIFEST_SCHEMA)."""
    uri = storage.join(dataset_uri, MANIFEST_NAME)
    if not storage.exists(uri):
        raise ValueError(f"{uri} not found: is {dataset_uri} an ingested dataset? (run `h2s ingest`)")
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)))


def write_classes(dataset_uri: str, classes: Sequence[str]) -> str:
    uri = storage.join(dataset_uri, CLASSES_NAME)
    storage.write_bytes(uri, json.dumps({"classes": list(classes)}, indent=1).encode())
    return uri


def read_classes(dataset_uri: str) -> list[str]:
    """URI/classes.json -> class names, index = label (empty for unlabeled datasets)."""
    uri = storage.join(dataset_uri, CLASSES_NAME)
    if not storage.exists(uri):
        raise ValueError(f"{uri} not found: is {dataset_uri} an ingested dataset? (run `h2s ingest`)")
    return list(json.loads(storage.read_bytes(uri))["classes"])


def select(table: pa.Table, split: int | None = None, subset: str | None = None) -> pa.Table:
    """Rows of `subset` ("train" | "test") in split `split` (1..3), order kept.

    split None -> every row (subset must be None); subset None -> every row of the split
    (train and test, not the unused ones).
    """
    if split is None:
        if subset is not None:
            raise ValueError(f"subset={subset!r} needs a split (1, 2 or 3)")
        return table
    if split not in (1, 2, 3):
        raise ValueError(f"split must be 1, 2 or 3, got {split!r}")
    if subset is not None and subset not in SUBSETS:
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    column = table.column(f"split_{split}")
    wanted = [subset] if subset is not None else list(SUBSETS)
    return table.filter(pc.is_in(column, value_set=pa.array(wanted)))
