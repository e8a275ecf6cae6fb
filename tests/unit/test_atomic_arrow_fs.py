"""The filesystem Tune's snapshot is copied through: a write cut short leaves the previous
file whole, where pyarrow's LocalFileSystem leaves it truncated."""

from __future__ import annotations

import pyarrow.fs as pafs

from h2s_dist.data import storage
from h2s_dist.data.atomic_arrow_fs import atomic_local_filesystem

OLD, NEW = b'{"trials": "old snapshot"}', b'{"trials": "new snapshot, longer than the old one"}'


def _cut_short(fs: pafs.FileSystem, path: str) -> None:
    """Start overwriting `path` and stop half-way, as a driver killed mid-copy does (the
    stream is never closed)."""
    stream = fs.open_output_stream(path)
    stream.write(NEW[:10])
    stream.flush()
    return stream


def test_a_write_cut_short_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "experiment_state-2026.json"
    target.write_bytes(OLD)
    stream = _cut_short(atomic_local_filesystem(), str(target))
    assert target.read_bytes() == OLD
    # The stray temporary is invisible to Tune's patterns and to storage.list_uris.
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".json")] == [target.name]
    assert storage.list_uris(str(tmp_path)) == [str(target)]
    del stream


def test_plain_local_filesystem_would_leave_it_truncated(tmp_path):
    # The failure the atomic filesystem exists for (if pyarrow ever changes this, the
    # wrapper may go).
    target = tmp_path / "experiment_state-2026.json"
    target.write_bytes(OLD)
    stream = _cut_short(pafs.LocalFileSystem(), str(target))
    assert target.read_bytes() != OLD
    stream.close()


def test_copy_files_through_it_lands_whole_and_reads_back(tmp_path):
    source = tmp_path / "staging"
    source.mkdir()
    (source / "experiment_state-1.json").write_bytes(NEW)
    (source / "sub").mkdir()
    (source / "sub" / "searcher-state.pkl").write_bytes(b"\x80\x04pickle")
    dest = tmp_path / "storage"
    fs = atomic_local_filesystem()
    pafs.copy_files(str(source), str(dest), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    assert (dest / "experiment_state-1.json").read_bytes() == NEW
    assert (dest / "sub" / "searcher-state.pkl").read_bytes() == b"\x80\x04pickle"
    with fs.open_input_stream(str(dest / "experiment_state-1.json")) as f:
        assert f.read() == NEW
    assert sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(str(dest)))) == ["experiment_state-1.json", "sub"]
    assert sorted(p.name for p in dest.rglob("*")) == ["experiment_state-1.json", "searcher-state.pkl", "sub"]
