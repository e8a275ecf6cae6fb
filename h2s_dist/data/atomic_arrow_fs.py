"""A pyarrow filesystem over local files whose writes are atomic: each file is written under a
temporary name in its folder, then renamed over the target when the stream closes.

Ray Tune copies its experiment snapshot (experiment_state-*.json, the searcher's and the
tuner's pickles) from the driver's staging folder to the storage path with pyarrow
(`RunConfig(storage_filesystem=...)`). pyarrow's LocalFileSystem truncates a target as soon as
it opens it, so a driver killed mid-copy leaves a truncated snapshot, which `Tuner.restore`
then fails to read, and the search cannot resume. Through this filesystem a kill leaves the
previous file whole (and a stray temporary, named so that neither Tune's file patterns nor
`storage.list_uris` see it). Objects on S3 appear only when their upload completes, so remote
storage needs no such help.

    fs, path = storage.pyarrow_filesystem(uri)          # S3: as is
    fs = atomic_local_filesystem() if fs.type_name == "local" else fs
"""

from __future__ import annotations

import io
import os
import tempfile

import pyarrow as pa
import pyarrow.fs as pafs

from h2s_dist.data.storage import _TMP_PREFIX, _TMP_SUFFIX


class _RenamedOnClose(io.FileIO):
    """A file written under a temporary name, moved over `target` (fsynced) on close."""

    def __init__(self, target: str):
        folder = os.path.dirname(os.path.abspath(target))
        os.makedirs(folder, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=folder)
        os.close(fd)
        super().__init__(self._tmp, "wb")
        self._target = target

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        os.fsync(self.fileno())
        super().close()
        os.replace(self._tmp, self._target)


class AtomicLocalHandler(pafs.FileSystemHandler):
    """LocalFileSystem, except that `open_output_stream` writes through `_RenamedOnClose`."""

    def __init__(self) -> None:
        self._local = pafs.LocalFileSystem()

    def __eq__(self, other) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __ne__(self, other) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "h2s-atomic-local"

    def normalize_path(self, path: str) -> str:
        return self._local.normalize_path(path)

    def get_file_info(self, paths):
        return self._local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to empty the root folder")

    def delete_file(self, path: str) -> None:
        self._local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self._local.open_input_stream(src) as source, _RenamedOnClose(dest) as target:
            target.write(source.read())

    def open_input_stream(self, path: str):
        return self._local.open_input_stream(path)

    def open_input_file(self, path: str):
        return self._local.open_input_file(path)

    def open_output_stream(self, path: str, metadata):
        return pa.PythonFile(_RenamedOnClose(path), mode="w")  # close() renames

    def open_append_stream(self, path: str, metadata):
        return self._local.open_append_stream(path)


def atomic_local_filesystem() -> pafs.PyFileSystem:
    """The local filesystem for Ray's `storage_filesystem`, with atomic file writes."""
    return pafs.PyFileSystem(AtomicLocalHandler())
