"""Process set-up before torch work: threads (AGD_THREADS), offline hub, quiet library logging."""

from __future__ import annotations

import os


def setup() -> None:
    """Idempotent; every `agd` command runs it before its first model (the experiment stages only once
    they are on, so that when off they return without importing torch)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here; without it a hub id retries ~24 s
    import torch

    threads = os.environ.get("AGD_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    from diffusers.utils import logging as dlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
