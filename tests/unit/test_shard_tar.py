"""Shard tars: members named <key>.<ext> in PAX format, read back by the shard readers."""

from __future__ import annotations

import io
import tarfile

import pytest
from webdataset.tariterators import group_by_keys, tar_file_expander

from h2s_dist.data import shard_tar

LONG_KEY = "Bruno_Walks_up_Stairs_-_Chicago_Dog_Training_-_We_can_teach_ANYTHING_to_a_dog_climb_stairs_f_cm_np1_fr_med_2"


def _tar(samples: list[tuple[str, str, bytes]], fmt: int | None = None) -> bytes:
    buffer = io.BytesIO()
    with (shard_tar.open_writer(buffer) if fmt is None else tarfile.open(fileobj=buffer, mode="w", format=fmt)) as tar:
        for key, ext, payload in samples:
            shard_tar.add_member(tar, key, ext, payload)
    return buffer.getvalue()


def test_short_names_give_the_bytes_of_a_ustar_tar():
    samples = [("v_ApplyEyeMakeup_g01_c01", "jpgs", b"x" * 700), ("v_ApplyEyeMakeup_g01_c01", "json", b"{}")]
    assert _tar(samples) == _tar(samples, tarfile.USTAR_FORMAT)


def test_a_key_longer_than_ustar_allows_reads_back_whole_as_one_sample():
    assert len(LONG_KEY) + len(".jpgs") > 100
    with pytest.raises(ValueError, match="name is too long"):
        _tar([(LONG_KEY, "jpgs", b"a")], tarfile.USTAR_FORMAT)
    data = _tar([(LONG_KEY, "jpgs", b"frames"), (LONG_KEY, "json", b"{}"), ("short", "json", b"[]")])
    samples = list(group_by_keys(tar_file_expander([{"url": "mem", "stream": io.BytesIO(data)}])))
    assert [(s["__key__"], s.get("jpgs"), s["json"]) for s in samples] == [(LONG_KEY, b"frames", b"{}"), ("short", None, b"[]")]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:  # plain tarfile too (evaluate reads so)
        assert [m.name for m in tar][0] == f"{LONG_KEY}.jpgs"


@pytest.mark.parametrize("key", ["a.b", "a/b", "", "clip v2", "é"])
def test_keys_that_would_split_or_nest_a_sample_are_not_safe(key):
    assert not shard_tar.is_safe_key(key)
    with pytest.raises(AssertionError):
        _tar([(key, "json", b"{}")])
