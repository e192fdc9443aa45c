"""The adapter folder on disk, as `agd train` writes it: `adapters.safetensors` (the weights) and
`adapters.json` (architecture, widths, the base's fingerprints, the weights' sha256, the size).

Metadata is checked, not trusted. Every field that changes what the adapters compute is required in
a file of the current format, and is also written into the weights file's own header, so an edited
or mixed-up adapters.json (say `heads` changed, which no weight shape shows) is refused with the
field named; the targets must be the modules the base has; the weights must fit the shapes the
fields imply. Files of format 1 (before the content path, the gate and these checks) load as they
did, their missing fields taking the values of that time.

Each file is written atomically: the old metadata is removed first, the weights written, the new
metadata last, and it records the weights' sha256. So a save interrupted at any moment leaves a
folder that loads as what it was or is refused on load (metadata missing, or not the weights'), never
new weights read with old metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.guidance import rules
from pipeline.run import files
from pipeline.run.errors import AGDError

FORMAT_VERSION = 2  # 2: behaviour fields required and mirrored in the weights' header; 1: before that
READS = (1, 2)
META, WEIGHTS = "adapters.json", "adapters.safetensors"
# The weights file's one header entry: the behaviour fields and targets (checked against adapters.json),
# and under "meta" the whole metadata, so the file alone is a complete adapter set (an exported or
# Hub-downloaded one; adapters.json beside it, where `agd train` writes one, is read first). One entry,
# not several: safetensors keeps its header in a hash map, so several would be written in any order
# and the file's bytes would differ from run to run.
HEADER_KEY = "agd_adapters"
# what the adapters compute depends on these (and their types); format 1 files may lack the last two
BEHAVIOUR = {"architecture": str, "width": int, "heads": int, "fourier_features": int, "seed": int, "mlp": int,
             "w_gate": bool}
FORMAT_1_DEFAULTS = {"mlp": 0, "w_gate": False}
# behaviour fields written only when set (their absence is their default): sets trained with negative
# conditions record `negatives`, every other file stays as files were before negatives existed
OPTIONAL = {"negatives": (bool, False)}
RETRAIN = "re-run `agd train` to write both files again (or restore the file as `agd train` wrote it)"


def write(out_dir: Path, state: dict, meta: dict) -> None:
    """The weights (a state dict of CPU tensors, their header holding the behaviour fields and the
    targets), then the metadata with the weights' sha256."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files.remove_parts(out_dir)
    (out_dir / META).unlink(missing_ok=True)
    header = {k: meta[k] for k in (*BEHAVIOUR, *[o for o in OPTIONAL if o in meta], "targets")}
    header["meta"] = {"format_version": FORMAT_VERSION, **meta}
    # as bytes written by Python: a full disk is an OSError naming the cause
    files.write_bytes(out_dir / WEIGHTS, save(state, metadata={HEADER_KEY: json.dumps(header, sort_keys=True)}))
    meta = {"format_version": FORMAT_VERSION, **meta, "weights_sha256": files.sha256_of(out_dir / WEIGHTS)}
    files.write_json(out_dir / META, meta)


def _header(weights: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, RuntimeError, OSError) as err:
        raise AGDError(str(weights), f"unreadable ({str(err).splitlines()[0][:120]})",
                       "re-run `agd train` to write it again") from None


def header_meta(weights: Path) -> dict | None:
    """The whole metadata the weights file's header holds (None: a file written before one-file adapters)."""
    try:
        meta = json.loads(_header(weights).get(HEADER_KEY) or "null")
    except json.JSONDecodeError:
        return None
    meta = meta.get("meta") if isinstance(meta, dict) else None
    return meta if isinstance(meta, dict) else None


def read_meta(path: Path) -> dict:
    """The metadata of an adapter folder: adapters.json where there is one (the two-file layout `agd
    train` writes), else the weights file's own header (one file: `agd export`, a Hub download)."""
    meta_file, weights = Path(path) / META, Path(path) / WEIGHTS
    if weights.is_file() and not meta_file.exists():
        meta = header_meta(weights)
        if meta is not None:
            return meta
        raise AGDError(str(meta_file), "not found, and the weights file's header holds no metadata (a file "
                       "written before one-file adapters)", "put its adapters.json beside it, or re-run `agd train`")
    for f in (meta_file, weights):
        if not f.exists():
            raise AGDError(str(f), "not found", "run `agd train` (dvc repro) or point at a folder from `agd train`")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise AGDError(str(meta_file), "not an adapter config", "re-run `agd train` to write it again")
    return meta


def _version(where: str, meta: dict) -> int:
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise AGDError(f"{where}: format_version", f"must be an integer, got {version!r}",
                       f"write {FORMAT_VERSION}, as `agd train` does, or re-run `agd train`")
    if version not in READS:
        raise AGDError(f"{where}: format_version", f"adapter format {version} is not one this version reads "
                       f"({', '.join(map(str, READS))})", "re-train the adapters with this version")
    return version


def config(path: Path, meta: dict) -> dict:
    """The AdapterSet arguments the metadata records, each field present (format 1: the two it
    predates default to their values of that time) and of its type."""
    where = str(Path(path) / META)
    version = _version(where, meta)
    found = {}
    for key, kind in BEHAVIOUR.items():
        if key not in meta:
            if version == 1 and key in FORMAT_1_DEFAULTS:
                found[key] = FORMAT_1_DEFAULTS[key]
                continue
            raise AGDError(f"{where}: {key}", "missing (a file of this format records it)", RETRAIN)
        value = meta[key]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise AGDError(f"{where}: {key}", f"expected {kind.__name__}, got {value!r}", RETRAIN)
        found[key] = value
    for key, (kind, default) in OPTIONAL.items():
        value = meta.get(key, default)
        if not isinstance(value, kind):
            raise AGDError(f"{where}: {key}", f"expected {kind.__name__}, got {value!r}", RETRAIN)
        found[key] = value
    return found


def teacher(path: Path, meta: dict) -> rules.Rule:
    """The teacher rule the adapters were trained from (files written before it was a choice: plain CFG)."""
    recorded = meta.get("teacher")
    try:
        return rules.from_identity(recorded)
    except (KeyError, TypeError, ValueError):
        raise AGDError(f"{Path(path) / META}: teacher", f"{recorded!r} is not a teacher rule of this version "
                       f"({', '.join(rules.RULES)})", RETRAIN) from None


def check_base(path: Path, meta: dict, fingerprint: str, dtype: str, identity: dict, fingerprint_as=None) -> None:
    """Refuse adapters made for another base (its fingerprint in the dtype the base is loaded in).

    fingerprint_as(dtype name): the base's fingerprint with its weights cast to that dtype. A base saved
    in half precision and read back in float32 is the training base when its weights, cast back, are the
    training base's in that half dtype (a checkpoint saved from a bfloat16 pipeline, say)."""
    base = meta.get("base", {})
    recorded = base.get("fingerprint") if dtype == "float32" else base.get("fingerprints", {}).get(dtype)
    if recorded is None:
        raise AGDError(str(Path(path) / META), f"records no fingerprint of the base in {dtype} (written before "
                       "adapter files recorded half-precision fingerprints)",
                       "load the base in float32, or re-save the adapters with this version (`agd train`)")
    if recorded != fingerprint and dtype == "float32" and fingerprint_as is not None:
        halves = base.get("fingerprints", {})
        if any(isinstance(v, str) and fingerprint_as(name) == v for name, v in halves.items()):
            return
    if recorded != fingerprint:
        shown = {k: v for k, v in base.items() if k != "fingerprints"}
        raise AGDError(str(Path(path) / META), f"made for base {shown}, not {identity} ({dtype} weights)",
                       "load the base model these adapters were trained on, or re-train them")


def check_targets(path: Path, meta: dict, targets: list[str]) -> None:
    """The modules the file's adapters wrap are the ones the base has them on."""
    saved = meta.get("targets")
    if saved is None and meta.get("format_version") == 1:
        return  # format 1 recorded them, but did not require them
    if saved != targets:
        missing = [t for t in (saved or []) if t not in targets][:2]
        raise AGDError(f"{Path(path) / META}: targets", f"names other modules than the base's adapter targets "
                       f"({len(saved or [])} saved, {len(targets)} expected" + (f"; e.g. {missing}" if missing else "")
                       + ")", "load the base these adapters were trained on, or " + RETRAIN)


def read_weights(path: Path, meta: dict) -> dict:
    """The state dict, refused when it is not the file the metadata was written with: its sha256, and
    (format 2) the behaviour fields its header mirrors."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    weights = Path(path) / WEIGHTS
    try:
        state = load_file(str(weights))
        with safe_open(str(weights), framework="pt") as f:
            header = (f.metadata() or {}).get(HEADER_KEY)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise AGDError(str(weights), f"unreadable or wrong shapes ({str(err).splitlines()[0][:120]})",
                       "re-run `agd train` to write it again") from None
    recorded = meta.get("weights_sha256")
    if recorded is not None and recorded != files.sha256_of(weights):
        raise AGDError(str(weights), f"is not the file {META} was written with (another run's weights, or a "
                       "save that was interrupted)", RETRAIN)
    if meta.get("format_version") == FORMAT_VERSION:
        try:
            written = json.loads(header) if header is not None else None
        except json.JSONDecodeError:
            written = None
        if not isinstance(written, dict):
            raise AGDError(str(weights), f"has no {HEADER_KEY} header (not written by `agd train` of this format)",
                           RETRAIN)
        def recorded(doc: dict, key: str):  # an optional field written out at its default is the same file
            return doc.get(key, OPTIONAL[key][1]) if key in OPTIONAL else doc.get(key)

        for key in (*BEHAVIOUR, *OPTIONAL, "targets"):
            if recorded(written, key) != recorded(meta, key):
                raise AGDError(f"{Path(path) / META}: {key}", f"is {meta.get(key)!r}, but the weights were written "
                               f"with {written.get(key)!r}", RETRAIN)
    return state
