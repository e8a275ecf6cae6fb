"""Stage programs. Each module has `SPEC` (its pydantic spec) and
`run(spec, session, tracker, output_uri) -> outputs`; `h2s_dist.train.launch` runs them."""
