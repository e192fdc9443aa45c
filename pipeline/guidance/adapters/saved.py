"""The adapter folder on disk, as `agd train` writes it: `adapters.safetensors` (the weights) and
`adapters.json` (architecture, widths, the base's fingerprints, the weights' sha256, the size).

Each file is written atomically: the old metadata is removed first, the weights written, the new
metadata last, and it records the weights' sha256. So a save interrupted at any moment leaves a
folder that loads as what it was or is refused on load (metadata missing, or not the weights'), never
new weights read with old metadata.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.run import files
from pipeline.run.errors import AGDError

FORMAT_VERSION = 1
META, WEIGHTS = "adapters.json", "adapters.safetensors"
CONFIG_KEYS = ("architecture", "width", "heads", "fourier_features", "seed")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(out_dir: Path, state: dict, meta: dict) -> None:
    """The weights (a state dict of CPU tensors), then the metadata with the weights' sha256."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files.remove_parts(out_dir)
    (out_dir / META).unlink(missing_ok=True)
    with files.atomic(out_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    meta = {"format_version": FORMAT_VERSION, **meta, "weights_sha256": _sha256(out_dir / WEIGHTS)}
    files.write_json(out_dir / META, meta)


def read_meta(path: Path) -> dict:
    """adapters.json of an adapter folder, refused unless both of its files are there and it is a JSON object."""
    meta_file = Path(path) / META
    for f in (meta_file, Path(path) / WEIGHTS):
        if not f.exists():
            raise AGDError(str(f), "not found", "run `agd train` (dvc repro) or point at a folder from `agd train`")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise AGDError(str(meta_file), "not an adapter config", "re-run `agd train` to write it again")
    return meta


def config(path: Path, meta: dict) -> dict:
    """The AdapterSet arguments a metadata file records (files from before the content path and the
    gate have neither: the paper's adapter, no gate)."""
    if meta.get("format_version") != FORMAT_VERSION:
        raise AGDError(str(Path(path) / META), f"adapter format {meta.get('format_version')} is not "
                       f"{FORMAT_VERSION}", "re-train the adapters with this version")
    try:
        found = {k: meta[k] for k in CONFIG_KEYS}
        found.update(mlp=int(meta.get("mlp", 0)), w_gate=bool(meta.get("w_gate", False)))
    except (KeyError, TypeError, ValueError):
        raise AGDError(str(Path(path) / META), "not an adapter config", "re-run `agd train` to write it again") from None
    return found


def check_base(path: Path, meta: dict, fingerprint: str, dtype: str, identity: dict) -> None:
    """Refuse adapters made for another base (its fingerprint in the dtype the base is loaded in)."""
    base = meta.get("base", {})
    recorded = base.get("fingerprint") if dtype == "float32" else base.get("fingerprints", {}).get(dtype)
    if recorded is None:
        raise AGDError(str(Path(path) / META), f"records no fingerprint of the base in {dtype} (written before "
                       "adapter files recorded half-precision fingerprints)",
                       "load the base in float32, or re-save the adapters with this version (`agd train`)")
    if recorded != fingerprint:
        shown = {k: v for k, v in base.items() if k != "fingerprints"}
        raise AGDError(str(Path(path) / META), f"made for base {shown}, not {identity} ({dtype} weights)",
                       "load the base model these adapters were trained on, or re-train them")


def read_weights(path: Path, meta: dict) -> dict:
    """The state dict, refused when it is not the file the metadata was written with."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = Path(path) / WEIGHTS
    try:
        state = load_file(str(weights))
    except (SafetensorError, RuntimeError, OSError) as err:
        raise AGDError(str(weights), f"unreadable or wrong shapes ({str(err).splitlines()[0][:120]})",
                       "re-run `agd train` to write it again") from None
    recorded = meta.get("weights_sha256")
    if recorded is not None and recorded != _sha256(weights):
        raise AGDError(str(weights), f"is not the file {META} was written with (another run's weights, or a "
                       "save that was interrupted)", "re-run `agd train` to write both again")
    return state
