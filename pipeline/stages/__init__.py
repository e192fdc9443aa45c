"""One module per `agd` command: the DVC stages and the tools (pretrain, verify, stores, sample, preset,
keys). Each exposes `run(...)`, which the CLI calls with params.yaml loaded (`run(params, ...)`; preset and
keys, which write or describe params.yaml, take their arguments alone). Stages are leaves: no stage
imports another."""
