"""One module per `agd` command: the DVC stages and the tools (pretrain, verify, stores, sample, preset,
keys, plan). Each exposes `run(...)`, which the CLI calls with params.yaml loaded (`run(params, ...)`; preset,
keys and plan, which write, describe or read params.yaml themselves, take their arguments alone). Stages are
leaves: no stage imports another."""
