"""Job execution: run a validated JobSpec's stages in dependency order with MLflow
parent/child runs and a per-stage cache (`runner.run_job`)."""
