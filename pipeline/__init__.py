"""Adapter Guidance Distillation (AGD): distil classifier-free guidance into small adapters.

The package is laid out as the pipeline runs, in wings that build on the ones before them:

    run/         errors, devices, processes, threads, progress, checkpoints, safe writes
    backends/    the table of model families and each family's code
    data/        the trajectory store, conditions, batches, assets
    guidance/    adapters, the sampling loop, training, AGD inside diffusers
    evaluation/  FID, the judge, intervals, distillation figures, reports
    config/      params.yaml: one typed section per stage
    stages/      one module per `agd` command (leaves)
    cli.py       the `agd` command

A module imports only from its own wing or the wings above it in this list (tests/test_layout.py).
"""

__version__ = "0.1.0"
