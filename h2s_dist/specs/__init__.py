"""Typed specs of every stage kind: pure pydantic, importing no torch, Ray or MLflow.

    common.py     the parts (Strict base, data, optimiser, loop, scaling, networks, losses)
    training.py   pretrain_motionnet, finetune_stacked, train_spatial, train_temporal_flows
    evaluate.py   evaluate
    driver.py     ingest, tvl1_flows, tune (driver stages: no `scaling`)

h2s_dist.registry maps each kind to its spec and its entry point.
"""
