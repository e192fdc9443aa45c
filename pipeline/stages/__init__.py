"""One module per `agd` command: the DVC stages and the tools (pretrain, verify, stores, sample, preset,
keys). Each exposes `run(params, ...)`; stages are leaves: no stage imports another."""
