"""Writing the members of a shard tar: the one place that knows the tar format and the
member naming every shard reader relies on (frame shards from ingest, flow shards from
tvl1_flows).

    with shard_tar.open_writer(fileobj) as tar:
        shard_tar.add_member(tar, "v_ApplyEyeMakeup_g01_c01", "jpgs", payload)
        shard_tar.add_member(tar, "v_ApplyEyeMakeup_g01_c01", "json", meta_bytes)

Members are named <key>.<ext>. Readers (webdataset's group_by_keys, shard_io.iter_samples,
evaluate) take everything before the first dot of the name as the sample key, so a key
holds no dot and no slash: only [A-Za-z0-9_-] (sources.sanitize_key makes one from a file
name).

Format: POSIX.1-2001 (PAX). A ustar header holds at most 100 characters of name, and real
corpora have longer keys (HMDB51 has 116-character file names); PAX stores such a name in an
extended header that every tar reader (Python's tarfile, GNU tar, webdataset) understands.
A name of at most 100 ASCII characters gets no extended header, so the bytes are exactly
those of the ustar tars written before.
"""

from __future__ import annotations

import io
import re
import tarfile
from typing import IO

KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
TAR_FORMAT = tarfile.PAX_FORMAT


def is_safe_key(key: str) -> bool:
    """Whether `key` can name samples: non-empty, only [A-Za-z0-9_-] (no dot, no slash)."""
    return bool(KEY_RE.match(key))


def open_writer(fileobj: IO[bytes]) -> tarfile.TarFile:
    """A tar writer on `fileobj` in the shard format (PAX)."""
    return tarfile.open(fileobj=fileobj, mode="w", format=TAR_FORMAT)


def add_member(tar: tarfile.TarFile, key: str, ext: str, payload: bytes) -> None:
    """Add member <key>.<ext> holding `payload`, read-only, mtime 0 (same input, same bytes)."""
    assert is_safe_key(key) and ext and "/" not in ext, (key, ext)
    info = tarfile.TarInfo(f"{key}.{ext}")
    info.size, info.mode, info.mtime = len(payload), 0o444, 0
    tar.addfile(info, io.BytesIO(payload))
