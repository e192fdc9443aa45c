"""One module per DVC stage; each exposes `run(...)` and reads its own section of params.yaml."""
