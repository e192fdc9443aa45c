"""The trajectory store: a Zarr v3 group of CFG-guided sampling trajectories.

Layout (N trajectories of S steps, latent shape C x H x W, model output channels C_out):

    x        (N, S, C, H, W)      float32  model inputs x_t            one chunk per trajectory
    target   (N, S, C_out, H, W)  float32  CFG output (model's own parameterisation), same chunks
    t        (S,)                 int64    the sampler's timesteps (the same for every trajectory)
    w        (N,)                 float32  guidance scale per trajectory
    seed     (N,)                 int64    noise seed per trajectory
    cond/*   (N, ...)             condition arrays (class label; prompt embeddings for text models)
    done     (N,)                 bool     completion mask, written after a batch's chunks (a chunk each)

Crash safety: a new store is built under `<path>.creating` and renamed into place; chunk files
are replaced atomically by zarr's local store; `done[i]` is set only after trajectory i's chunks
are on disk, and finished trajectories are never written again. Blosc (zstd) compresses and
CRC32C checks every chunk, so a corrupted chunk fails loudly instead of decoding into noise.

Integrity on read: zarr returns the fill value (zeros) for a chunk file that is missing, so
`read` checks that a finished trajectory's chunk files exist, and that what they hold is finite,
before anything trains on it. `damaged()` finds every such trajectory; `agd trajectories` marks
them unfinished and writes only those again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec

from pipeline import __version__
from pipeline.run import files
from pipeline.run.errors import AGDError

FORMAT_VERSION = 1
TRAJECTORY_ARRAYS = ("x", "target")
SET_ASIDE_FIX = "run `agd trajectories`: it sets this store aside (nothing is deleted) and makes a new one"


def _compressors():
    return [BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle), Crc32cCodec()]


class StoreLock:
    """Exclusive writer lock: a second writer of the same store is refused, not interleaved."""

    def __init__(self, path: Path, rank: int = 0):
        # one lock per rank of a multi-process collection: a second run's rank r meets the first's
        self.path = Path(path)
        self.file = Path(str(path) + (".lock" if rank == 0 else f".rank{rank}.lock"))
        self._held = None

    def __enter__(self):
        self._held = files.exclusive(self.file, str(self.path), "another process is writing this store")
        self._held.__enter__()
        return self

    def __exit__(self, *exc):
        return self._held.__exit__(*exc)


class TrajectoryStore:
    def __init__(self, path: Path, group: zarr.Group):
        self.path, self.group = Path(path), group

    # --- creating and opening ----------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, attrs: dict, num_steps: int, x_shape: tuple, target_shape: tuple,
               timesteps: np.ndarray, w: np.ndarray, seeds: np.ndarray, cond: dict[str, np.ndarray]) -> "TrajectoryStore":
        """Build a complete empty store under a temporary name, then move it into place."""
        path = Path(path)
        tmp = Path(str(path) + ".creating")
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a run killed while creating: nothing in it was finished
        n = len(w)
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.attrs.update({**attrs, "format_version": FORMAT_VERSION, "package_version": __version__,
                            "num_trajectories": n, "num_steps": num_steps})
        for name, shape in (("x", x_shape), ("target", target_shape)):
            group.create_array(name, shape=(n, num_steps, *shape), chunks=(1, num_steps, *shape),
                               dtype="float32", compressors=_compressors(), fill_value=0.0)
        small = {"t": np.asarray(timesteps, np.int64), "w": np.asarray(w, np.float32),
                 "seed": np.asarray(seeds, np.int64), "done": np.zeros(n, bool)}
        small.update({f"cond/{k}": v for k, v in cond.items()})
        for name, values in small.items():
            row_bytes = max(values[0].nbytes, 1) if len(values) else 1
            rows = int(min(len(values), max(1, (4 << 20) // row_bytes)))  # ~4 MB chunks at most
            if name == "done":  # one chunk per trajectory: processes writing disjoint trajectories never
                rows = 1        # write the same mask file (pipeline.run.distributed)
            arr = group.create_array(name, shape=values.shape, chunks=(rows, *values.shape[1:]),
                                     dtype=values.dtype, compressors=_compressors(),
                                     fill_value=False if values.dtype == bool else 0)
            arr[...] = values
        if path.exists():  # callers set an old store aside first: never delete one here
            raise FileExistsError(f"{path} exists; set it aside before creating a new store")
        tmp.rename(path)
        return cls.open(path, mode="r+")

    @classmethod
    def open(cls, path: Path, mode: str = "r") -> "TrajectoryStore":
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise AGDError(str(path), "not a trajectory store (no zarr.json)", "run `agd trajectories` (dvc repro) to make it")
        try:
            group = zarr.open_group(str(path), mode=mode)
            attrs = dict(group.attrs)
        except Exception as err:  # zarr raises many types for damaged metadata
            raise AGDError(str(path), f"unreadable store metadata ({type(err).__name__})",
                           SET_ASIDE_FIX) from None
        if attrs.get("format_version") != FORMAT_VERSION:
            raise AGDError(str(path), f"store format {attrs.get('format_version')!r}, this version reads "
                           f"{FORMAT_VERSION}", SET_ASIDE_FIX)
        store = cls(path, group)
        for name in ("x", "target", "t", "w", "seed", "done"):
            if name not in group:
                raise AGDError(str(path / name), "array missing (truncated store)",
                               SET_ASIDE_FIX)
        return store

    # --- reading -----------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    def __len__(self) -> int:
        return self.group["w"].shape[0]

    @property
    def cond_names(self) -> list[str]:
        return sorted(self.group["cond"].array_keys()) if "cond" in self.group else []

    def done(self) -> np.ndarray:
        return self.group["done"][...]

    def remove_partial_writes(self) -> int:
        """Delete the temporary files of chunk writes a kill interrupted (zarr writes a chunk to
        `<chunk>.<uuid>.partial` and renames it): readers ignore them, but they would make an
        interrupted-and-resumed store differ from an uninterrupted one, and DVC hash them."""
        orphans = [p for p in self.path.rglob("*.partial") if p.is_file()]
        for p in orphans:
            p.unlink()
        return len(orphans)

    def mask_per_trajectory(self) -> bool:
        """Is the completion mask one chunk per trajectory (stores made since multi-process collection)?"""
        return self.group["done"].chunks[0] == 1 or len(self) == 1

    def is_complete(self) -> bool:
        return bool(self.done().all())

    def meta(self) -> dict[str, np.ndarray]:
        """Per-trajectory small arrays: w, seed and the condition arrays (prefixed cond/)."""
        out = {"w": self.group["w"][...], "seed": self.group["seed"][...], "t": self.group["t"][...]}
        for name in self.cond_names:
            out[f"cond/{name}"] = self.group[f"cond/{name}"][...]
        return out

    def chunk_file(self, name: str, i: int) -> Path:
        """The file holding trajectory i of array `name` (one chunk per trajectory)."""
        array = self.group[name]
        return self.path / name / array.metadata.encode_chunk_key((i,) + (0,) * (array.ndim - 1))

    def missing_chunks(self, i: int) -> list[str]:
        return [name for name in TRAJECTORY_ARRAYS if not self.chunk_file(name, i).exists()]

    def read(self, i: int) -> dict[str, np.ndarray]:
        """One whole finished trajectory (one chunk per array: the fast way to read this store),
        refused unless its chunk files exist, decode and hold only finite values."""
        problem = self.problem_with(i)
        if isinstance(problem, str):
            raise AGDError(f"{self.path} trajectory {i}", problem,
                           "run `agd trajectories` (or dvc repro): it rewrites only the damaged trajectories; "
                           "`agd verify` lists them")
        return problem

    def problem_with(self, i: int) -> dict[str, np.ndarray] | str:
        """Trajectory i's arrays, or what is wrong with them (a missing, unreadable or non-finite chunk)."""
        missing = self.missing_chunks(i)
        if missing:
            return f"chunk file {self.chunk_file(missing[0], i).relative_to(self.path)} is missing"
        try:
            arrays = {name: self.group[name][i] for name in TRAJECTORY_ARRAYS}
        except Exception as err:  # zarr and the codecs raise many types for a damaged chunk
            return f"chunk unreadable ({type(err).__name__}: {str(err)[:100]})"
        for name, values in arrays.items():
            if not np.isfinite(values).all():
                return f"{name} holds {int((~np.isfinite(values)).sum())} non-finite values"
        return arrays

    def damaged(self, progress=None) -> dict[int, str]:
        """Every finished trajectory that cannot be trained on, with the reason (reads the whole store)."""
        found = {}
        for i in np.flatnonzero(self.done()):
            problem = self.problem_with(int(i))
            if isinstance(problem, str):
                found[int(i)] = problem
            if progress is not None:
                progress(1)
        return found

    # --- writing -----------------------------------------------------------------------------
    def write(self, indices, arrays: dict[str, np.ndarray]) -> None:
        """Write finished trajectories' chunks, then mark them done (in that order)."""
        indices = [int(i) for i in indices]
        done = self.group["done"].oindex[indices]  # only these entries: other processes write the rest
        if done.any():
            raise RuntimeError(f"trajectories {[i for i, d in zip(indices, done) if d]} are finished already")
        for name in TRAJECTORY_ARRAYS:  # never store what no one could train on
            bad = [int(indices[r]) for r in range(len(indices)) if not np.isfinite(arrays[name][r]).all()]
            if bad:
                w, seed = self.group["w"][bad[0]], self.group["seed"][bad[0]]
                raise AGDError(f"{self.path} trajectory {bad[0]}", f"CFG sampling produced non-finite {name} "
                               f"(w = {w:g}, seed {seed}; {len(bad)} trajectories in this batch)",
                               "a half-precision base can overflow: use base.dtype bfloat16 or float32, "
                               "or lower conditions.w_max")
        for row, i in enumerate(indices):
            for name in TRAJECTORY_ARRAYS:
                self.group[name][i] = arrays[name][row]
        self.group["done"].oindex[indices] = True  # mask chunks are replaced atomically

    def unmark(self, indices) -> None:
        """Mark damaged trajectories unfinished, so that the next write replaces them."""
        self.group["done"].oindex[[int(i) for i in indices]] = False

