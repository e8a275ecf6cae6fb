"""Stage programs, one module per stage kind; h2s_dist.registry lists them with their specs
(h2s_dist/specs/) and `h2s_dist.train.launch` runs them.

Worker stages (pretrain, finetune, spatial, temporal_flows, evaluate) have
`run(spec, session, tracker, output_uri)`, called on every rank; driver stages (ingest,
tvl1_flows, tune) have `run(spec, tracker, output_uri)`, called once in the job's process.
No stage module imports another: what two stages share lives in h2s_dist.train.task
(the training body), h2s_dist.train.builders (networks and losses from specs) or below."""
