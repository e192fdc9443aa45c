"""Adapter Guidance Distillation (AGD): distil classifier-free guidance into small adapters.

The package is laid out as the pipeline runs: `stages/` holds one module per DVC stage, and
the modules beside it each hold one concept (trajectory store, adapters, backends, FID, ...).
"""

__version__ = "0.1.0"
