"""`python -m h2s_dist ...` is the `h2s` command (used as the Ray Jobs entrypoint)."""

from h2s_dist.cli import main

raise SystemExit(main())
