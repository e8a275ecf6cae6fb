"""Object storage behind one small API: plain paths, `file://` URIs and `s3://bucket/key` URIs.

The only module of the project that knows fsspec, s3fs and boto3; everything else passes URIs
(strings) around and calls the functions here.

S3 settings come from the environment, read at each call (so a test or a Ray worker that sets
them later is honoured):
- endpoint: `H2S_S3_ENDPOINT_URL`, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`, else AWS;
- region: `AWS_REGION`, else `AWS_DEFAULT_REGION` (else us-east-1 for a custom endpoint);
- credentials: the standard AWS chain (env vars, `AWS_PROFILE`, config files). They are never
  passed around, printed or logged by this module.
- retries of transient S3 errors: `H2S_S3_RETRY_TRIES` (default 5), `H2S_S3_RETRY_MAX_S`
  (default 10 s of total back-off).

Writes are atomic: a reader sees the old object/file or the new one, never a partial one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import os
import tempfile
import threading
import time
from typing import IO, Any, Callable, Iterator, TypeVar

import fsspec

T = TypeVar("T")

_LOCAL_SCHEMES = ("", "file")
_S3_SCHEMES = ("s3", "s3a")
# Prefix/suffix of atomic_write's temporary files: listings skip them (a half-written file).
_TMP_PREFIX, _TMP_SUFFIX = ".h2s-tmp-", ".part"

# Read once: mkstemp creates 0600 files, we give the final file the usual 0666 & ~umask.
_UMASK = os.umask(0)
os.umask(_UMASK)


class StorageError(OSError):
    """A storage operation failed for a reason that retrying did not fix (or cannot fix)."""


# ----------------------------------------------------------------------------- URIs


def _split(uri: str | os.PathLike) -> tuple[str, str]:
    """`uri` -> (scheme, path): ("", "/a/b") for a plain path, ("file", "/a/b"), ("s3", "bucket/key")."""
    text = os.fspath(uri)
    if "://" not in text:
        return "", text
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        return "file", rest
    if scheme in _S3_SCHEMES:
        if not rest.split("/", 1)[0]:
            raise ValueError(f"{text!r} has no bucket: write s3://BUCKET/KEY")
        return "s3", rest.rstrip("/")
    raise ValueError(f"unsupported URI scheme {scheme!r} in {text!r}: use a plain path, file:// or s3://")


def _unsplit(scheme: str, path: str) -> str:
    return f"{scheme}://{path}" if scheme else path


def is_remote(uri: str | os.PathLike) -> bool:
    """True for s3:// URIs, False for plain paths and file:// URIs."""
    return _split(uri)[0] not in _LOCAL_SCHEMES


def local_path_or_none(uri: str | os.PathLike) -> str | None:
    """The local filesystem path of a plain path or file:// URI; None for a remote URI."""
    scheme, path = _split(uri)
    return path if scheme in _LOCAL_SCHEMES else None


def join(uri: str | os.PathLike, *parts: str) -> str:
    """`uri` with `parts` appended, '/'-separated for URIs (a leading '/' in a part does not
    restart from the root, unlike os.path.join)."""
    scheme, path = _split(uri)
    if not scheme:
        return os.path.join(path, *(os.fspath(p).lstrip("/") for p in parts))
    pieces = [path.rstrip("/")] + [os.fspath(p).strip("/") for p in parts if os.fspath(p).strip("/")]
    return _unsplit(scheme, "/".join(pieces))


def _not_found(uri: str | os.PathLike) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "No such file or object", os.fspath(uri))


# ----------------------------------------------------------------------------- retries


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential back-off for transient remote errors."""

    tries: int = 5
    """Attempts in all, the first included."""
    first_delay_s: float = 0.2
    """Sleep before the 2nd attempt; doubled for each further one."""
    max_delay_s: float = 4.0
    """Cap on one sleep."""
    max_total_s: float = 10.0
    """No new attempt starts once the sleeps would pass this budget."""

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(
            tries=max(1, int(os.environ.get("H2S_S3_RETRY_TRIES", cls.tries))),
            max_total_s=float(os.environ.get("H2S_S3_RETRY_MAX_S", cls.max_total_s)),
        )


_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                   "TooManyRequestsException", "RequestTimeout", "RequestTimeTooSkewed",
                   "InternalError", "ServiceUnavailable"}
# s3fs turns 5xx/SlowDown into OSError with these errnos (s3fs/errors.py).
_TRANSIENT_ERRNOS = {errno.EBUSY, getattr(errno, "EREMOTEIO", 121), errno.ETIMEDOUT, errno.ECONNRESET,
                     errno.ECONNREFUSED, errno.ECONNABORTED, errno.EAGAIN}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """Connection errors, timeouts, 5xx and throttling: worth another try. Missing objects,
    access denied and bad requests are not."""
    for err in _chain(exc):
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        if isinstance(err, (ConnectionError, TimeoutError)):
            return True
        if isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS:
            return True
        module = type(err).__module__ or ""
        if module.startswith(("botocore", "aiohttp", "urllib3")):
            response = getattr(err, "response", None)
            if isinstance(response, dict):  # a ClientError: the server answered
                status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
                code = response.get("Error", {}).get("Code", "")
                return status >= 500 or status == 429 or code in _THROTTLE_CODES
            names = {cls.__name__ for cls in type(err).__mro__}
            if names & {"HTTPClientError", "ConnectionError", "ClientConnectionError", "ServerDisconnectedError",
                        "ClientPayloadError", "ProtocolError", "ReadTimeoutError"}:
                return True
    return False


def retry_call(fn: Callable[[], T], uri: str | os.PathLike, what: str = "access",
               policy: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep) -> T:
    """`fn()`, retried on transient errors (`is_transient`) with bounded exponential back-off;
    then `StorageError` naming `uri`, the operation and the last cause. Other errors pass through."""
    policy = policy or RetryPolicy.from_env()
    delay, slept = policy.first_delay_s, 0.0
    for attempt in range(1, policy.tries + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified right below
            if not is_transient(exc):
                raise
            last = exc
        if attempt == policy.tries or slept + delay > policy.max_total_s:
            break
        sleep(delay)
        slept += delay
        delay = min(delay * 2, policy.max_delay_s)
    raise StorageError(
        f"{what} {os.fspath(uri)} failed after {attempt} attempt(s) over {slept:.1f}s of back-off: "
        f"{type(last).__name__}: {last}. Check that the S3 endpoint is up and reachable "
        f"(H2S_S3_ENDPOINT_URL / AWS_ENDPOINT_URL)") from last


# ----------------------------------------------------------------------------- S3 settings


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """Where and as whom to talk S3, from the environment. The credential fingerprint only
    keys the client cache (a new secret -> a new client); it is not shown by repr."""

    endpoint_url: str | None
    region: str | None
    profile: str | None
    credential_fingerprint: str = dataclasses.field(default="", repr=False)

    @classmethod
    def from_env(cls) -> S3Settings:
        env = os.environ
        endpoint = env.get("H2S_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ("us-east-1" if endpoint else None)
        secrets = "\0".join(env.get(k, "") for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
        return cls(endpoint or None, region, env.get("AWS_PROFILE") or None,
                   hashlib.sha256(secrets.encode()).hexdigest())


_S3FS_CACHE: dict[tuple[S3Settings, int], Any] = {}
_S3FS_LOCK = threading.Lock()


def _s3fs(settings: S3Settings | None = None) -> fsspec.AbstractFileSystem:
    """One s3fs filesystem per (settings, process); credentials come from the AWS chain."""
    settings = settings or S3Settings.from_env()
    key = (settings, os.getpid())  # s3fs clients hold an event loop: never share across fork
    with _S3FS_LOCK:
        if key not in _S3FS_CACHE:
            import s3fs

            config: dict[str, Any] = {
                # Our retry_call does the retrying, with a bounded budget; botocore's own
                # retries would multiply it. Connect fast, fail fast on a dead endpoint.
                "retries": {"total_max_attempts": 1},
                "connect_timeout": 5,
                "read_timeout": 60,
            }
            if settings.endpoint_url:
                config["s3"] = {"addressing_style": "path"}  # S3-compatible servers (rclone, MinIO)
            fs = s3fs.S3FileSystem(
                skip_instance_cache=True,
                use_listings_cache=False,  # other processes write: never trust a stale listing
                endpoint_url=settings.endpoint_url,
                client_kwargs={"region_name": settings.region} if settings.region else {},
                config_kwargs=config,
            )
            fs.retries = 2  # s3fs' own (a class attribute), e.g. for a range read dropped mid-stream
            _S3FS_CACHE[key] = fs
        return _S3FS_CACHE[key]


def _remote(uri: str | os.PathLike, what: str, fn: Callable[[], T]) -> T:
    """retry_call plus errors that name the full URI (s3fs names only bucket/key)."""
    try:
        return retry_call(fn, uri, what)
    except FileNotFoundError as exc:
        raise _not_found(uri) from exc
    except PermissionError as exc:
        raise PermissionError(errno.EACCES, f"{what} refused (check the S3 credentials and bucket policy): {exc}",
                              os.fspath(uri)) from exc
    except StorageError:
        raise
    except Exception as exc:
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            raise StorageError(f"{what} {os.fspath(uri)}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY or AWS_PROFILE") from exc
        raise


# ----------------------------------------------------------------------------- API


def filesystem(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for `uri`: LocalFileSystem + local path, or s3fs + "bucket/key"."""
    scheme, path = _split(uri)
    if scheme in _LOCAL_SCHEMES:
        return fsspec.filesystem("file"), path
    return _s3fs(), path


def pyarrow_filesystem(uri: str | os.PathLike) -> tuple[Any, str]:
    """(pyarrow.fs.FileSystem, path) for `uri`, e.g. for Ray's RunConfig(storage_filesystem=...).
    S3 goes through s3fs (PyFileSystem(FSSpecHandler)) rather than pyarrow's own S3 client,
    whose directory markers S3 gateways such as rclone's refuse."""
    import pyarrow.fs as pafs

    scheme, path = _split(uri)
    if scheme in _LOCAL_SCHEMES:
        return pafs.LocalFileSystem(), os.path.abspath(path)
    return pafs.PyFileSystem(pafs.FSSpecHandler(_s3fs())), path


def open_uri(uri: str | os.PathLike, mode: str = "rb") -> IO:
    """Open `uri` for reading ("rb" or "r"). For writing use `atomic_write`."""
    if mode not in ("rb", "r"):
        raise ValueError(f"open_uri mode {mode!r}: only 'rb' and 'r'; write with atomic_write(uri)")
    scheme, path = _split(uri)
    if scheme in _LOCAL_SCHEMES:
        try:
            return open(path, mode, **({"encoding": "utf-8"} if mode == "r" else {}))
        except FileNotFoundError as exc:
            raise _not_found(uri) from exc
    fs = _s3fs()
    return _remote(uri, "open", lambda: fs.open(path, mode))


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The whole content of `uri`."""
    scheme, path = _split(uri)
    if scheme in _LOCAL_SCHEMES:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError as exc:
            raise _not_found(uri) from exc
    fs = _s3fs()
    return _remote(uri, "read", lambda: fs.cat_file(path))


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `uri` atomically (a single PUT on S3, temp file + rename locally)."""
    scheme, path = _split(uri)
    if scheme in _LOCAL_SCHEMES:
        with atomic_write(uri) as f:
            f.write(data)
        return
    fs = _s3fs()
    _remote(uri, "write", lambda: fs.pipe_file(path, bytes(data)))


@contextlib.contextmanager
def atomic_write(uri: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A file to write `uri` through; the content appears at `uri` only if the block exits
    without an exception, and nothing (no partial file, no object) is left if it raises.

    Local: a temp file in the target folder, fsync, os.replace. S3: spooled to a local temp
    file, uploaded to the final key on exit (an S3 object appears only once its upload
    completes; a failed multipart upload is aborted), so the upload can also be retried."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode {mode!r}: use 'wb' or 'w'")
    scheme, path = _split(uri)
    folder = os.path.dirname(os.path.abspath(path)) if scheme in _LOCAL_SCHEMES else None
    if folder is not None:
        os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8") if mode == "w" else None
            try:
                yield text or raw
            finally:
                if text is not None:
                    text.detach()  # flushes into `raw` and leaves it to the `with` to close
            raw.flush()
            if folder is not None:
                os.fsync(raw.fileno())
        if folder is not None:
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
            _fsync_dir(folder)
        else:
            fs = _s3fs()
            _remote(uri, "upload", lambda: fs.put_file(tmp, path))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_dir(folder: str) -> None:
    """Make the rename durable; best effort (not every filesystem allows opening a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def exists(uri: str | os.PathLike) -> bool:
    """True if `uri` is a file/object (or a folder/prefix holding some)."""
    scheme, path = _split(uri)
    if scheme in _LOCAL_SCHEMES:
        return os.path.exists(path)
    fs = _s3fs()
    return _remote(uri, "exists", lambda: fs.exists(path))


def size(uri: str | os.PathLike) -> int:
    """Size of the file/object `uri` in bytes."""
    scheme, path = _split(uri)
    if scheme in _LOCAL_SCHEMES:
        try:
            return os.path.getsize(path)
        except FileNotFoundError as exc:
            raise _not_found(uri) from exc
    fs = _s3fs()
    return int(_remote(uri, "size", lambda: fs.info(path))["size"])


def list_uris(prefix: str | os.PathLike, suffix: str | None = None) -> list[str]:
    """Sorted URIs of every file under the folder `prefix` (recursively), in the scheme of
    `prefix`, optionally only those ending in `suffix`. A missing folder lists as []; in-flight
    atomic_write temp files are skipped."""
    scheme, path = _split(prefix)
    if scheme in _LOCAL_SCHEMES:
        found = []
        for folder, _, files in os.walk(path):
            found += [os.path.join(folder, name) for name in files]
    else:
        fs = _s3fs()
        base = path.rstrip("/") + "/"
        found = [p for p in _remote(prefix, "list", lambda: fs.find(path)) if p.startswith(base)]
    keep = [p for p in found if not _is_tmp(p) and (suffix is None or p.endswith(suffix))]
    return sorted(_unsplit(scheme, p) for p in keep)


def _is_tmp(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX)


def delete(uri: str | os.PathLike, missing_ok: bool = False, prune_empty_folder: bool = False) -> None:
    """Delete the file/object `uri` (not a folder: list_uris then delete each). With
    `prune_empty_folder`, a local file's folder goes too once it is empty (object stores
    have no folders to leave behind)."""
    scheme, path = _split(uri)
    if scheme in _LOCAL_SCHEMES:
        try:
            os.remove(path)
        except FileNotFoundError as exc:
            if not missing_ok:
                raise _not_found(uri) from exc
        if prune_empty_folder:
            try:
                os.rmdir(os.path.dirname(path))
            except OSError:  # not empty (or already gone): keep what else is there
                pass
        return
    fs = _s3fs()
    # S3 DeleteObject succeeds on a missing key, so ask first to keep the local semantics.
    if not missing_ok and not exists(uri):
        raise _not_found(uri)
    _remote(uri, "delete", lambda: fs.rm_file(path))


_GLOB_CHARS = ("*", "?", "[")


def glob(pattern: str | os.PathLike) -> list[tuple[str, int]]:
    """(URI, size in bytes) of every file matching `pattern`, sorted by URI, in the scheme of
    `pattern`. `**` crosses folders (`s3://bucket/corpus/**/*.mp4`); a pattern without glob
    characters names a folder, listed recursively (or a single file). One listing call on S3:
    sizes come with it, so planning a million videos costs no request per video."""
    scheme, path = _split(pattern)
    if scheme in _LOCAL_SCHEMES:
        import glob as globbing

        if not any(c in path for c in _GLOB_CHARS):
            path = path if os.path.isfile(path) else os.path.join(path, "**", "*")
        found = [(p, os.path.getsize(p)) for p in globbing.glob(path, recursive=True) if os.path.isfile(p)]
    else:
        fs = _s3fs()
        if any(c in path for c in _GLOB_CHARS):
            infos = _remote(pattern, "list", lambda: fs.glob(path, detail=True))
        else:
            infos = _remote(pattern, "list", lambda: fs.find(path, detail=True))
        found = [(p, int(info.get("size") or 0)) for p, info in infos.items() if info.get("type") == "file"]
    return sorted((_unsplit(scheme, p), n) for p, n in found if not _is_tmp(p))


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike, chunk_bytes: int = 1 << 20) -> Iterator[tuple[str, str, int]]:
    """(local path, sha256 hex, size) of `uri`'s content, read once in chunks (memory bounded
    by `chunk_bytes`, whatever the file's size). A local file is used in place; a remote
    object is downloaded to a temp file that is deleted when the block exits, so a decoder
    can seek in it without a request per seek."""
    scheme, path = _split(uri)
    digest, total = hashlib.sha256(), 0
    if scheme in _LOCAL_SCHEMES:
        with open(path, "rb") as src:  # FileNotFoundError names the path
            while chunk := src.read(chunk_bytes):
                digest.update(chunk)
                total += len(chunk)
        yield path, digest.hexdigest(), total
        return
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as dst:
            def download() -> None:
                nonlocal digest, total
                dst.seek(0)
                dst.truncate()
                digest, total = hashlib.sha256(), 0
                with _s3fs().open(path, "rb") as src:
                    while chunk := src.read(chunk_bytes):
                        digest.update(chunk)
                        dst.write(chunk)
                        total += len(chunk)

            _remote(uri, "download", download)
        yield tmp, digest.hexdigest(), total
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
