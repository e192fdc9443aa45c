"""The evaluation's sample stores: what the metrics need of every generated sample, written per batch.

An image set is never held whole (an SDXL evaluation is 10,000 images of 3 MB): each batch of
samples is turned into what scoring reads, and only that is kept, per sample:

    inception  (n_inception, 2048) float32  Inception pool features (FID, KID, precision/recall)
    judge      (n, 128)            float32  the digit judge's features (embedded default only)
    pred       (n,)                int64    the judge's class (accuracy)
    pixels     (n, h, w, c)        uint8    the image at most COMPARE_SIDE px a side, area-averaged
                                            (same-seed distances between methods; MNIST is kept whole)
    grid       (g, h, w, c)        uint8    the first GRID_COUNT images at most GRID_SIDE px a side
                                            (reports/samples.png)
    seconds    (batches,)          float64  sampling seconds of each batch
    done       (batches,)          bool     completion mask, written after the batch's chunks

A Zarr store holds one group ("set") per method and scale (`cfg/w3`, `unguided/w1`), each made in
fixed batches of `evaluate.batch_size` samples whose chunks are exactly one batch: a batch is
written whole or not at all (zarr replaces a chunk file atomically), `done[b]` is set after its
chunks, and a finished batch is never written again. A killed stage resumes with every finished
batch kept; a set whose settings changed (other adapters, steps, seeds) is rebuilt alone, and a
set the params no longer ask for is removed, so that the store's content is a function of the
params. Several processes write disjoint batches of the same set (pipeline.run.distributed).

`MemorySet` has the same interface in memory, for the experiment stages that do not resume.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec

from pipeline import __version__
from pipeline.run.errors import AGDError

FORMAT_VERSION = 1
COMPARE_SIDE = 64  # same-seed pixel distances at this size: 12 KB a sample instead of 3 MB (SDXL)
GRID_COUNT = 40  # images the sample grid shows per method
GRID_SIDE = 256  # px a side of the grid's images at most (40 SDXL images whole would be a 240 MB PNG)
INCEPTION_DIM = 2048


def _compressors():
    return [BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle), Crc32cCodec()]


def compare_shape(height: int, width: int, side: int = COMPARE_SIDE) -> tuple[int, int]:
    """Images kept at most `side` px a side: whole when they fit, else shrunk by a whole factor."""
    factor = max(1, -(-max(height, width) // side))
    return height // factor, width // factor


class Layout:
    """The shapes of one set: how many samples, in which batches, with which per-sample arrays."""

    def __init__(self, count: int, batch_size: int, inception: int, image_shape: tuple, judge_dim: int = 0):
        self.count, self.batch_size, self.inception = count, batch_size, inception
        self.image_shape, self.judge_dim = tuple(image_shape), judge_dim  # (H, W, C)
        self.grid = min(GRID_COUNT, count)

    @property
    def batches(self) -> int:
        return -(-self.count // self.batch_size)

    def rows(self, b: int) -> range:
        return range(b * self.batch_size, min((b + 1) * self.batch_size, self.count))

    def arrays(self) -> dict[str, tuple[tuple, tuple, str]]:
        """name -> (shape, chunks, dtype); per-sample chunks are one batch."""
        h, w, c = self.image_shape
        ph, pw = compare_shape(h, w)
        gh, gw = compare_shape(h, w, GRID_SIDE)
        bs = self.batch_size
        out = {"inception": ((self.inception, INCEPTION_DIM), (bs, INCEPTION_DIM), "float32"),
               "pixels": ((self.count, ph, pw, c), (bs, ph, pw, c), "uint8"),
               "grid": ((self.grid, gh, gw, c), (1, gh, gw, c), "uint8"),
               "seconds": ((self.batches,), (1,), "float64"),
               "done": ((self.batches,), (1,), "bool")}
        if self.judge_dim:
            out["judge"] = ((self.count, self.judge_dim), (bs, self.judge_dim), "float32")
            out["pred"] = ((self.count,), (bs,), "int64")
        return out

    def describe(self) -> dict:
        return {"count": self.count, "batch_size": self.batch_size, "inception": self.inception,
                "image_shape": list(self.image_shape), "judge_dim": self.judge_dim}


def batch_arrays(layout: Layout, b: int, images: np.ndarray, features: dict[str, np.ndarray],
                 seconds: float) -> dict[str, np.ndarray]:
    """What batch b keeps of its uint8 images (N, H, W, C) and their features (inception rows of this
    batch below the layout's Inception count; judge features and predictions when there is a judge)."""
    rows, shapes = layout.rows(b), layout.arrays()
    out = {"pixels": shrink(images, *shapes["pixels"][0][1:3]), "seconds": np.array([seconds])}
    out.update(features)
    grid_rows = [r for r in rows if r < layout.grid]
    if grid_rows:
        out["grid"] = shrink(images[: len(grid_rows)], *shapes["grid"][0][1:3])
    return out


def shrink(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (N, H, W, C) -> uint8 (N, height, width, C) by averaging whole blocks (exact when equal)."""
    n, h, w, c = images.shape
    if (h, w) == (height, width):
        return images
    fy, fx = h // height, w // width
    blocks = images[:, : height * fy, : width * fx].reshape(n, height, fy, width, fx, c)
    return np.round(blocks.mean(axis=(2, 4), dtype=np.float64)).astype(np.uint8)


class MemorySet:
    """A set in memory (experiment stages): the same writing and reading as a stored set."""

    def __init__(self, layout: Layout, attrs: dict | None = None):
        self.layout, self.attrs = layout, dict(attrs or {})
        self.data = {name: np.zeros(shape, dtype) for name, (shape, _, dtype) in layout.arrays().items()}

    def done(self) -> np.ndarray:
        return self.data["done"].copy()

    def write(self, b: int, arrays: dict[str, np.ndarray]) -> None:
        _write_rows(self.data, self.layout, b, arrays)
        self.data["done"][b] = True

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        return self.data[name] if rows is None else self.data[name][rows]


def _write_rows(target, layout: Layout, b: int, arrays: dict[str, np.ndarray]) -> None:
    rows = layout.rows(b)
    for name, values in arrays.items():
        if name == "seconds":
            target[name][b:b + 1] = values
        elif name == "grid":
            target[name][rows.start:rows.start + len(values)] = values
        elif name == "inception":
            stop = min(rows.stop, layout.inception)
            if stop > rows.start:
                target[name][rows.start:stop] = values[: stop - rows.start]
        else:
            target[name][rows.start:rows.stop] = values


class StoredSet:
    """One method and scale in a SampleStore."""

    def __init__(self, group: zarr.Group, layout: Layout, where: str):
        self.group, self.layout, self.where = group, layout, where

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    def done(self) -> np.ndarray:
        return self.group["done"][...]

    def write(self, b: int, arrays: dict[str, np.ndarray]) -> None:
        """Batch b's chunks, then its completion mark (in that order); never a finished batch twice."""
        if self.group["done"][b]:
            raise RuntimeError(f"{self.where}: batch {b} is finished already")
        for name, values in arrays.items():
            if not np.isfinite(values).all():
                raise AGDError(f"{self.where} batch {b}", f"sampling produced non-finite {name}",
                               "a half-precision base can overflow: use base.dtype bfloat16 or float32")
        # every chunk written, zeros too (write_empty_chunks is not kept in the metadata, so it is set for
        # each write): a missing chunk file then always means a lost write, never "all zeros"
        with zarr.config.set({"array.write_empty_chunks": True}):
            _write_rows({name: self.group[name] for name in arrays}, self.layout, b, arrays)
            self.group["done"][b] = True

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """A whole array (features, predictions: small) or a block of rows (pixels), checked: zarr reads
        a missing chunk file as zeros, which would score as a black image."""
        array = self.group[name]
        start, stop = (0, array.shape[0]) if rows is None else (rows.start or 0, min(rows.stop, array.shape[0]))
        chunk = array.chunks[0]
        for first in range(start - start % chunk, stop, chunk):
            key = array.metadata.encode_chunk_key((first // chunk,) + (0,) * (array.ndim - 1))
            if not (Path(self.group.store.root) / self.group.path / name / key).exists():
                raise AGDError(f"{self.where}/{name}", f"chunk of rows {first}.. is missing although its batch is "
                               "marked done", "delete this set's folder and run the stage again: it re-makes it")
        return array[start:stop]


class SampleStore:
    """A Zarr group of sets (one stage's samples: data/teacher.zarr, data/evaluation.zarr)."""

    def __init__(self, path: Path, create: bool = True, maker: str = ""):
        """Open the store at path, or make an empty one (create); maker: the stage that makes it."""
        self.path = Path(path)
        if not create and not (self.path / "zarr.json").exists():
            raise AGDError(str(self.path), "sample store not found", f"run `agd {maker}` (dvc repro) first")
        if (self.path / "zarr.json").exists():
            try:
                self.root = zarr.open_group(str(self.path), mode="r+")
                version = self.root.attrs.get("format_version")
            except Exception as err:  # zarr raises many types for damaged metadata
                raise AGDError(str(self.path), f"unreadable sample store ({type(err).__name__})",
                               f"delete {self.path} and run the stage again") from None
            if version != FORMAT_VERSION:
                raise AGDError(str(self.path), f"sample store format {version!r}, this version reads {FORMAT_VERSION}",
                               f"delete {self.path} and run the stage again")
        elif self.path.exists() and any(self.path.iterdir()):
            raise AGDError(str(self.path), "exists and is not a sample store", "move it away (nothing is overwritten)")
        else:
            self.root = zarr.open_group(str(self.path), mode="w", zarr_format=3)
            self.root.attrs.update({"format_version": FORMAT_VERSION, "created_by": f"agd {__version__}"})

    def names(self) -> list[str]:
        """Every set in the store, as 'method/scale'."""
        return sorted(f"{m}/{s}" for m in self.root.group_keys() for s in self.root[m].group_keys())

    def prepare(self, name: str, layout: Layout, attrs: dict) -> tuple[StoredSet, str]:
        """The set `name`, made with these settings: kept when it was, otherwise (re)created empty.
        Returns it and what happened ('kept', 'new' or why it was rebuilt)."""
        attrs = json.loads(json.dumps({**attrs, "layout": layout.describe()}))  # as stored: lists, not tuples
        what = "new"
        if name in self.names():
            old = dict(self.root[name].attrs)
            if old == attrs:
                return StoredSet(self.root[name], layout, f"{self.path}/{name}"), "kept"
            changed = sorted(k for k in set(old) | set(attrs) if old.get(k) != attrs.get(k))
            what = f"made with other {', '.join(changed)}: made again"
            self.remove(name)
        group = self.root.require_group(name)
        for array, (shape, chunks, dtype) in layout.arrays().items():
            group.create_array(array, shape=shape, chunks=chunks, dtype=dtype, compressors=_compressors(),
                               fill_value=False if dtype == "bool" else 0, config={"write_empty_chunks": True})
        group.attrs.update(attrs)  # last: a set without attrs (a kill while creating) is made again
        return StoredSet(group, layout, f"{self.path}/{name}"), what

    def open(self, name: str, layout: Layout) -> StoredSet:
        if name not in self.names():
            raise AGDError(f"{self.path}/{name}", "no such sample set", "run the stage that makes it (dvc repro)")
        return StoredSet(self.root[name], layout, f"{self.path}/{name}")

    def remove(self, name: str) -> None:
        shutil.rmtree(self.path / name, ignore_errors=True)
        method = name.split("/")[0]
        if (self.path / method).exists() and not any(p.name != "zarr.json" for p in (self.path / method).iterdir()):
            shutil.rmtree(self.path / method)
        self.root = zarr.open_group(str(self.path), mode="r+")

    def keep_only(self, wanted: list[str]) -> list[str]:
        """Remove the sets the params no longer ask for; returns their names."""
        gone = [n for n in self.names() if n not in wanted]
        for n in gone:
            self.remove(n)
        return gone

    def remove_partial_writes(self) -> int:
        """Temporary files of chunk writes a kill interrupted (see pipeline.data.store)."""
        orphans = [p for p in self.path.rglob("*.partial") if p.is_file()]
        for p in orphans:
            p.unlink()
        return len(orphans)


def blocks(a, b, name: str, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Aligned row blocks of the same array of two sets (bounded memory whatever the count)."""
    count = a.layout.count
    for start in range(0, count, size):
        yield a.read(name, slice(start, start + size)), b.read(name, slice(start, start + size))
