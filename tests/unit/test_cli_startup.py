"""`h2s --help` answers at once: building the parser imports nothing heavy.

The heavy imports (torch, numpy, pyarrow, ray, mlflow, ...) belong in the command functions;
one of them at a module top pulled in by the parser costs every `h2s` call a second or more.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from h2s_dist import cli

HEAVY = {"torch", "numpy", "pyarrow", "pandas", "ray", "mlflow", "fsspec", "av", "cv2", "PIL", "pydantic", "yaml"}


def imported_modules(*argv: str) -> set[str]:
    """Every module `python -X importtime -m h2s_dist ARGV` imports."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "h2s_dist", *argv],
                          capture_output=True, text=True, check=True)
    return {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("argv", [["--help"], ["ingest", "synthetic", "--help"], ["weights", "convert", "--help"],
                                  ["predict", "--help"], ["export", "--help"]])
def test_help_imports_no_heavy_package(argv):
    heavy = {name for name in imported_modules(*argv) if name.split(".")[0] in HEAVY}
    assert not heavy, f"h2s {' '.join(argv)} imports {sorted(heavy)[:8]}: move them into the command functions"


def test_user_errors_of_modules_never_loaded_are_still_plain_value_errors():
    message, code = cli._user_error(ValueError("--limit must be at least 1"))  # noqa: SLF001
    assert (message, code) == ("error: --limit must be at least 1", 2)
    assert cli._user_error(RuntimeError("a bug")) == (None, 0)  # noqa: SLF001
