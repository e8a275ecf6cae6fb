"""h2s-dist: distributed training for Hidden Two-Stream networks for action recognition.

Layers, bottom up (each imports only the ones above it in this list):
  frames, warp, losses, models/   pure torch: the paper's networks and losses
  specs/, registry                pure pydantic: every stage kind's spec, entry point and shape
  data/                           storage (fsspec/boto3), video decode, shards, readers
  train/                          builders, one training loop for every stage, on one process or Ray Train
  config, pipeline/, cli          YAML job specs, the stage runner, the `h2s` command
"""

__version__ = "0.1.0"
