"""Set-aside trajectory stores: a store made with other settings is moved here, never deleted.

A store can be hours of GPU time. When params change what a store must contain (base weights,
sampler, step count, conditions), `agd trajectories` moves the old store to
`<output>.stale/<what it was made with>` and builds a new one; when params change back, the
matching store is moved into place again instead of being rebuilt. `agd stores` lists them with
their disk use, and `agd stores --prune` deletes them when the user decides to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.data.store import TrajectoryStore


def shelf_dir(output: Path) -> Path:
    return Path(str(output) + ".stale")


def describe(attrs: dict) -> str:
    """A folder name that says what a store was made with: sampler, steps, base and conditions."""
    base = attrs.get("base", {}) or {}
    return (f"{base.get('backend', 'unknown')}-base{str(base.get('fingerprint', ''))[:8]}-"
            f"{attrs.get('scheduler', 'unknown')}-{attrs.get('num_steps', '?')}steps-"
            f"cond{str(attrs.get('conditions_sha256', ''))[:8]}")


def raw_attrs(output: Path) -> dict:
    """A store's attributes read straight from its zarr.json (for stores zarr cannot open)."""
    try:
        return dict(json.loads((output / "zarr.json").read_text()).get("attributes", {}))
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def set_aside(output: Path, attrs: dict, note: str = "") -> Path:
    """Move the store at `output` onto the shelf (a rename: instant, nothing copied)."""
    shelf = shelf_dir(output)
    shelf.mkdir(parents=True, exist_ok=True)
    name = describe(attrs) + (f"-{note}" if note else "")
    target, n = shelf / name, 1
    while target.exists():
        n += 1
        target = shelf / f"{name}-{n}"
    output.rename(target)
    return target


def disk_use(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def stores(output: Path) -> list[tuple[Path, TrajectoryStore | None]]:
    """Every folder on the shelf, with the store in it (None where it cannot be opened)."""
    shelf = shelf_dir(output)
    folders = sorted(p for p in shelf.iterdir() if p.is_dir()) if shelf.is_dir() else []
    found = []
    for folder in folders:
        try:
            found.append((folder, TrajectoryStore.open(folder)))
        except Exception:  # a damaged store is still listed (and can be pruned)
            found.append((folder, None))
    return found


def take_back(output: Path, matches) -> Path | None:
    """Move the set-aside store for which `matches(attrs)` holds (the most finished one) back to
    `output`; None when there is none."""
    candidates = [(int(s.done().sum()), folder) for folder, s in stores(output) if s is not None and matches(s.attrs)]
    if not candidates:
        return None
    _, folder = max(candidates)
    folder.rename(output)  # the caller has moved whatever stood at `output` aside
    return folder


def prune(output: Path) -> tuple[int, int]:
    """Delete every set-aside store; returns (count, bytes freed)."""
    count, freed = 0, 0
    for folder, _ in stores(output):
        freed += disk_use(folder)
        shutil.rmtree(folder)
        count += 1
    shelf = shelf_dir(output)
    if shelf.is_dir() and not any(shelf.iterdir()):
        shelf.rmdir()
    return count, freed


def human_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"
