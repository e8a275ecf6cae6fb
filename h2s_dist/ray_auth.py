"""Ray token authentication as h2s reads it: which mode a process runs in, and what a user
is told when a cluster refuses them.

Ray (>= 2.52) authenticates every dashboard, Jobs API and GCS request with one static token
when `RAY_AUTH_MODE=token`. The token comes from `RAY_AUTH_TOKEN`, else the file named by
`RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`; Ray's JobSubmissionClient sends it as an
`Authorization: Bearer` header. Imports nothing heavy: `h2s --help` reaches this module.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

TOKEN_VARS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def default_auth_mode(environ: MutableMapping[str, str] = os.environ) -> str:
    """Set RAY_AUTH_MODE where it is unset and return it: `token` when a token is given
    (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), else `disabled` (an embedded local Ray, which
    no one else can reach). A mode set by the user or the cluster's image always wins."""
    if "RAY_AUTH_MODE" not in environ:
        environ["RAY_AUTH_MODE"] = "token" if any(environ.get(name) for name in TOKEN_VARS) else "disabled"
    return environ["RAY_AUTH_MODE"]


def refused_message(address: str, detail: str) -> str:
    """What to do when the Jobs API at `address` answers 401 (no token) or 403 (a wrong one)."""
    return (
        f"the Ray cluster at {address} refused this request: {detail.splitlines()[0]}\n"
        "It requires Ray token authentication. Give h2s the cluster's token, e.g.\n"
        "  export RAY_AUTH_TOKEN=$(kubectl get secret h2s-ray-token -o jsonpath='{.data.auth_token}' | base64 -d)\n"
        "or RAY_AUTH_TOKEN_PATH=<file holding it> (RAY_AUTH_MODE=token is then implied; here it is "
        f"{os.environ.get('RAY_AUTH_MODE', 'unset')!r}). See cluster/README.md, 'Running securely'."
    )
