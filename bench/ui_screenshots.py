"""Screenshots of `h2s ui` in headless chromium: what a user sees when opening the MLflow UI.

    python bench/ui_screenshots.py                      # runs a tiny job first (5-7 min on 2 busy CPUs)
    python bench/ui_screenshots.py --tracking-uri sqlite:////data/h2s/mlflow.db --out /tmp/shots

It starts `h2s ui` over the store (an `mlflow server` on 127.0.0.1), takes the pages `h2s ui`
prints, and writes to --out (default docs/):
    ui_runs.png        the newest job's experiment in the model-training view: job runs, stage runs nested
    ui_run_charts.png  a training stage's metric charts (run page, "Model metrics")
    ui_flow_picture.png  its last flow picture (artifact page)
The assistant panel MLflow opens by itself on a first visit is closed first (as a user would, once).
Needs Debian's `chromium` (apt-get install -y chromium).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_PNG_BYTES = 500_000

TINY_JOB = textwrap.dedent("""\
    # bench/ui_screenshots.py: a job small enough to make the UI's pages in a minute or two
    name: ui_demo
    workspace: {workspace}
    stages:
      - name: data
        kind: ingest
        source: synthetic
        synthetic: {{num_videos: 16, num_frames: 12, height: 64, width: 80, shared_scenes: true}}
        num_tasks: 0
      - name: pretrain
        kind: pretrain_motionnet
        needs: [data]
        motionnet: {{flavour: tiny}}
        data: {{dataset: "${{data.dataset}}", split: 1, subset: train, clip_len_frames: 5, crop_size: 64,
                flip: false, batch_size: 2, loader_workers: 0, shuffle_buffer: 8, epoch_length_samples: 16}}
        loss: {{smoothness_weight: 0.1}}
        validation: {{every_steps: 10, synthetic_pairs: 4}}
        optim: {{name: adam, lr: 1.0e-3, weight_decay: 4.0e-4}}
        loop: {{max_steps: 40, log_every_steps: 2, picture_every_steps: 20, checkpoint_every_steps: 20}}
    """)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1400,900"]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_tiny_job(root: pathlib.Path) -> str:
    """Run TINY_JOB into a fresh sqlite store under `root`; return the store's URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    job = root / "ui_demo.yaml"
    job.write_text(TINY_JOB.format(workspace=root / "workspace"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "h2s_dist", "run", str(job)], env=env, check=True)
    return uri


def start_ui(tracking_uri: str, port: int, log: pathlib.Path) -> subprocess.Popen:
    """`h2s ui` over the store, its output in `log`; returns once the server answers."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "h2s_dist", "ui", "--tracking-uri", tracking_uri,
                                   "--port", str(port)], env=env, start_new_session=True, stdout=sink,
                                  stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"h2s ui exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(1)
    stop(server)
    raise RuntimeError("h2s ui did not answer within 180 s")


def stop(server: subprocess.Popen) -> None:
    """Stop `h2s ui` and the mlflow server it started (its own process group)."""
    os.killpg(server.pid, 15)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)


class Browser:
    """Headless chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    JSON messages ended by NUL on fds 3 and 4), so no websocket client is needed."""

    def __init__(self, chromium: str, profile: str):
        self._to_chrome_r, self._to_chrome_w = os.pipe()
        self._from_chrome_r, self._from_chrome_w = os.pipe()

        def wire_fds() -> None:  # in the child, before exec: its fd 3 reads, fd 4 writes
            os.dup2(self._to_chrome_r, 3)
            os.dup2(self._from_chrome_w, 4)

        self.proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}",
                                      "about:blank"], preexec_fn=wire_fds, pass_fds=(3, 4),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(self._to_chrome_r)
        os.close(self._from_chrome_w)
        self._next_id, self._buffer = 0, b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False,
                  session=True)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome_w, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_chrome_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def open(self, url: str, settle_s: float) -> None:
        """Load `url` afresh (a change of the #fragment alone would keep the app's state)."""
        self.call("Page.navigate", session=True, url="about:blank")
        self.call("Page.navigate", session=True, url=url)
        time.sleep(settle_s)  # a JS app: its requests come after the load event

    def screenshot(self, out: pathlib.Path) -> pathlib.Path:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        out.write_bytes(base64.b64decode(data))
        shrink_png(out)
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome_w)
        os.close(self._from_chrome_r)


def shrink_png(path: pathlib.Path) -> None:
    """Keep a screenshot under MAX_PNG_BYTES: a 256-colour palette is plenty for a web page."""
    if path.stat().st_size <= MAX_PNG_BYTES:
        return
    from PIL import Image

    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=256).save(path, optimize=True)


def pages(tracking_uri: str, base_url: str) -> dict[str, str]:
    """File name -> URL: the links `h2s ui` prints, a training stage's charts and its last flow picture."""
    from mlflow.tracking import MlflowClient

    from h2s_dist.cli import ui_links
    from h2s_dist.tracking import ui_run_url

    links = ui_links(tracking_uri, base_url)
    shots = {"ui_runs.png": links[0][1]}
    client = MlflowClient(tracking_uri)
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()], filter_string="tags.`h2s.reused` = 'false'", order_by=["attributes.start_time DESC"]):
        flows = [f.path for f in client.list_artifacts(run.info.run_id, "flows")]
        if flows:
            experiment_id, run_id = run.info.experiment_id, run.info.run_id
            shots["ui_run_charts.png"] = ui_run_url(base_url, experiment_id, run_id, "model-metrics")
            shots["ui_flow_picture.png"] = ui_run_url(base_url, experiment_id, run_id, f"artifacts/{sorted(flows)[-1]}")
            break
    return shots


# MLflow keeps UI state in the browser's localStorage (hook useLocalStorage: key + "_v1"). On
# 127.0.0.1 its assistant panel opens itself on a browser's first visit and stays open until
# closed; a user closes it once, the script does it for its fresh profile.
CLOSE_ASSISTANT_JS = ("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                      "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')")
# The expander of each parent (job) run in the runs table, so its stage runs show.
EXPAND_RUNS_JS = ("[...document.querySelectorAll('.ag-row button[data-component-id*=runnamecellrenderer]')]"
                  ".map(button => button.click()).length")


def take_screenshots(chromium: str, shots: dict[str, str], base_url: str, out: pathlib.Path,
                     settle_s: float) -> list[pathlib.Path]:
    """Open each page of `shots` (file name -> URL) in one browser profile and save it under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(chromium, profile)
        try:
            browser.open(f"{base_url}/", settle_s)
            browser.evaluate(CLOSE_ASSISTANT_JS)
            for name, url in shots.items():
                browser.open(url, settle_s)
                if name == "ui_runs.png" and browser.evaluate(EXPAND_RUNS_JS):
                    time.sleep(3)
                written.append(browser.screenshot(out / name))
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", help="an existing store (default: run a tiny job into a fresh one)")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "docs")
    parser.add_argument("--port", type=int, default=5057)
    parser.add_argument("--settle-s", type=float, default=15.0, help="seconds each page gets to load its data")
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("no chromium: apt-get install -y chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="h2s_ui_") as tmp:
        uri = args.tracking_uri or run_tiny_job(pathlib.Path(tmp))
        base_url = f"http://127.0.0.1:{args.port}"
        server = start_ui(uri, args.port, pathlib.Path(tmp) / "ui.log")
        try:
            shots = pages(uri, base_url)
            for path in take_screenshots(chromium, shots, base_url, args.out, args.settle_s):
                print(f"{path} ({path.stat().st_size // 1000} KB): {shots[path.name]}")
        finally:
            stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
