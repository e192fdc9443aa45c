"""The table of per-pass times and memory that `agd plan` projects from, and GPU throughput scaling.

A table is JSON lines (`Table` says the shapes): `agd plan --table FILE`, else the newest
reports/gpu/*.jsonl (the project's GPU check, benchmarks/gpu_smoke.py), else the H200 anchor
../shared/data/gpu-anchor-h200.jsonl (`default_table`). From a table's rows for one backend,
`Table.curves` builds a `Curve` per kind of call (a sampler step's pass, AGD's pass, an adapter-training
step, VAE decode, text encoders, Inception): milliseconds and peak GiB against the batch, interpolated
between measured batches and bounded outside them (`Curve.at`). `scaling` turns a GPU table into
another listed GPU's by the ratio of their bf16 throughput: an estimate.

This module reads files and does arithmetic (numpy, no torch); timing the passes on this machine is
pipeline.plan.measure's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.backends import BACKENDS
from pipeline.run.errors import AGDError

ANCHOR = Path("../shared/data/gpu-anchor-h200.jsonl")  # relative to the project root
GPU_REPORTS = Path("reports/gpu")
GIB_TO_GB = 2**30 / 1e9

# bf16 dense tensor-core throughput (TFLOPS, without sparsity) and memory from the vendors' public
# specifications: the H100/H200 and A100 datasheets, the Ada Lovelace whitepaper (RTX 4090, with FP32
# accumulate as torch's bf16 matmuls use). Their ratio scales compute-bound passes; small batches that
# are bound by memory bandwidth or kernel launches scale differently: an estimate.
GPUS = {
    "h200": ("NVIDIA H200", 989.5, 141),
    "h100": ("NVIDIA H100 SXM", 989.5, 80),
    "a100": ("NVIDIA A100 80GB", 312.0, 80),
    "4090": ("NVIDIA GeForce RTX 4090", 165.2, 24),
}


@dataclass(frozen=True)
class Figure:
    ms: float
    peak_gib: float | None
    peak_bound: str  # "=", "<=" (measured at a larger batch) or ">=" (at a smaller one)
    how: str


class Curve:
    """Milliseconds (and peak GiB, where measured) of one kind of call against its batch, from table rows.

    Inside the measured batches: linear interpolation (repeated rows: their mean). Below them: the
    smallest batch's figure (an upper bound: a smaller batch is not slower). Above them: `wider` (the
    same pass in the other execution mode, eager or CUDA graphs) where it reaches larger batches, not
    below this curve's largest figure; else `scale_with` (the base pass's ms against batch) from this
    curve's largest batch; else in proportion to the batch (an upper bound: a larger batch is no slower
    per sample)."""

    def __init__(self, label: str):
        self.label = label
        self.ms: dict[int, list[float]] = {}
        self.peaks: dict[int, list[float]] = {}

    def add(self, batch: int, ms: float, peak: float | None = None) -> None:
        self.ms.setdefault(int(batch), []).append(float(ms))
        if peak is not None:
            self.peaks.setdefault(int(batch), []).append(float(peak))

    def __bool__(self) -> bool:
        return bool(self.ms)

    def covers(self, n: int) -> bool:
        return bool(self.ms) and min(self.ms) <= n <= max(self.ms)

    @staticmethod
    def _series(points: dict[int, list[float]]) -> tuple[list[int], list[float]]:
        xs = sorted(points)
        return xs, [sum(points[x]) / len(points[x]) for x in xs]

    def at(self, n: int, wider: Curve | None = None, scale_with: Callable[[int], float] | None = None) -> Figure:
        xs, ys = self._series(self.ms)
        lo, hi = xs[0], xs[-1]
        if lo <= n <= hi:
            ms = float(np.interp(n, xs, ys))
            how = f"{self.label}, {n} a call" if n in xs else \
                f"{self.label}, {n} a call, between {max(x for x in xs if x < n)} and {min(x for x in xs if x > n)}"
        elif n < lo:
            ms, how = ys[0], f"{self.label}, {n} a call, as {lo} (the smallest measured: an upper bound)"
        elif wider and max(wider.ms) > hi:
            ms = max(wider.at(n).ms, ys[-1])
            how = f"{wider.at(n).how}, not below {self.label} at {hi} (measured to {hi} only)"
        elif scale_with is not None:
            ms = ys[-1] * scale_with(n) / scale_with(hi)
            how = f"{self.label}, {n} a call: {hi} scaled as the base pass from {hi} to {n} (beyond the table)"
        else:
            ms, how = ys[-1] * n / hi, f"{self.label}, {n} a call: {hi} x {n}/{hi} (beyond the table)"
        if not self.peaks:
            return Figure(ms, None, "", how)
        px, py = self._series(self.peaks)
        if px[0] <= n <= px[-1]:
            return Figure(ms, float(np.interp(n, px, py)), "=", how)
        return Figure(ms, py[0], "<=", how) if n < px[0] else Figure(ms, py[-1], ">=", how)


@dataclass
class Curves:
    """One backend's curves in a table: the base pass and AGD's pass per execution mode (the params' mode
    first), the adapter-training step that fits the params, VAE decode, text encoders, Inception."""

    mode: str
    other: str
    passes: dict[str, Curve]
    agd: dict[str, Curve]
    train: Curve
    train_setting: str
    decode: Curve
    text: Curve
    inception: Curve

    def figure(self, kind: str, n: int) -> Figure | None:
        base, wider = self.passes[self.mode], self.passes[self.other]
        if not base:
            base, wider = wider, None
        if kind in ("cond", "cfg"):
            return base.at(n if kind == "cond" else 2 * n, wider) if base else None
        if kind == "agd":
            agd = self.agd[self.mode] or self.agd[self.other]
            if agd:
                return agd.at(n, scale_with=(lambda k: base.at(k, wider).ms) if base else None)
            if not base:
                return None
            f = base.at(n, wider)
            return Figure(f.ms, f.peak_gib, f.peak_bound, f.how + "; no agd_ms rows: the adapters' own cost left out")
        curve = {"train": self.train, "decode": self.decode, "text": self.text, "inception": self.inception}.get(kind)
        return curve.at(n) if curve else None  # base and judge training: no table has them


@dataclass
class Table:
    """Per-pass figures, one JSON object a line (`what` or `check` names the measurement):

        {"what": "device", "name": "NVIDIA H200"}                        the device they are from
        {"what": "<model>_step", "batch": B, "single_ms": .., "cfg_ms": .., "agd_ms": .., "peak_gib": ..}
            one sampler step's model call: the conditional pass over B, CFG's pass over 2B, one pass
            with adapters over B (any of them); "graph" in the name: captured as CUDA graphs
        {"what": "<model>_train..", "batch": B, "step_ms": .., "peak_gib": .., "base_dtype": "bfloat16",
         "autocast": true, "grad_ckpt": false}                          one adapter-training step
        {"what": "<model>_decode" | "<model>_text" | "inception", "batch": B, "ms": .., "peak_gib": ..}
            VAE decode of B latents, B prompts through the text encoders, Inception features of B images

    <model> is a backend with "_" for "-" (mnist_dit, dit_xl_2 or dit_xl2, sd21, sdxl), or give "backend".
    The lines benchmarks/gpu_smoke.py writes (reports/gpu/smoke.jsonl) are read too (`_gpu_check_rows`).
    Lines of other shapes are skipped."""

    source: str
    device: str
    rows: list[dict]

    @classmethod
    def read(cls, path: Path) -> Table:
        if not path.is_file():
            raise AGDError(f"agd plan --table {path}", "file not found", "give a JSON-lines table (docs/scaling.md)")
        rows, device = [], ""
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                raise AGDError(f"{path}:{i}", "not a JSON object", "write one JSON object a line (docs/scaling.md)")
            if "check" in row and "batch" not in row:  # a line of benchmarks/gpu_smoke.py
                found, gpu = _gpu_check_rows(row)
                rows += found
                device = gpu or device
            elif _name(row) == "device":
                device = str(row.get("name", ""))
            else:
                rows.append(row)
        return cls(str(path), device or "a device the table does not name", rows)

    def backends(self) -> list[str]:
        return sorted({b for b in (_backend_of(r) for r in self.rows) if b})

    def curves(self, params) -> Curves:
        """The curves of the params' backend and execution mode (params: pipeline.config.Params; base,
        sample and train are read)."""
        backend = params.base.backend
        mode, other = ("graph", "eager") if params.sample.compile else ("eager", "graph")
        passes = {m: Curve(f"{m} single_ms/cfg_ms") for m in (mode, other)}
        agd = {m: Curve(f"{m} agd_ms") for m in (mode, other)}
        decode, text, inception_ = Curve("decode ms"), Curve("text ms"), Curve("inception ms")
        for row in self.rows:
            name, batch, peak = _name(row), row.get("batch"), row.get("peak_gib")
            if not isinstance(batch, (int, float)) or batch <= 0 or "train" in name:
                continue
            if "inception" in name and "ms" in row:  # the same network whatever the backend
                inception_.add(batch, row["ms"], peak)
            if _backend_of(row) != backend:
                continue
            if ("decode" in name or "vae" in name) and "ms" in row:
                decode.add(batch, row["ms"], peak)
            if "text" in name and "ms" in row:
                text.add(batch, row["ms"], peak)
            m = "graph" if "graph" in name or row.get("graph") else "eager"
            if "single_ms" in row:
                passes[m].add(batch, row["single_ms"], peak)
            if "cfg_ms" in row:
                passes[m].add(2 * batch, row["cfg_ms"], peak)
            if "agd_ms" in row:
                agd[m].add(batch, row["agd_ms"], peak)
        train, setting = self.train_curve(params)
        return Curves(mode, other, passes, agd, train, setting, decode, text, inception_)

    def train_curve(self, params) -> tuple[Curve, str]:
        """Training rows of this backend that do not contradict the params' base dtype, autocast and
        checkpointing; those that state the most of the three win."""
        wanted = {"base_dtype": params.base.dtype, "autocast": params.train.autocast != "none",
                  "grad_ckpt": params.train.gradient_checkpointing}
        best, chosen = -1, []
        for row in self.rows:
            if "train" not in _name(row) or "step_ms" not in row or _backend_of(row) != params.base.backend:
                continue
            stated = [k for k in wanted if k in row]
            if any(row[k] != wanted[k] for k in stated):
                continue
            if len(stated) > best:
                best, chosen = len(stated), []
            if len(stated) == best:
                chosen.append(row)
        names = ", ".join(sorted({_name(r) for r in chosen}))
        curve = Curve(f"{names} step_ms")
        for row in chosen:
            curve.add(row.get("batch", 1), row["step_ms"], row.get("peak_gib"))
        return curve, ", ".join(f"{k} {v}" for k, v in wanted.items())


def _gpu_check_rows(record: dict) -> tuple[list[dict], str | None]:
    """One line of benchmarks/gpu_smoke.py (a check, its measurements nested by backend) as table rows, and
    the GPU's name where the line has it. A run with --tiny models measures nothing of the real shapes."""
    if record.get("tiny"):
        return [], None
    check, rows = record.get("check"), []
    for key, v in record.items():
        if not isinstance(v, dict):
            continue
        backend = next((b for b in sorted(BACKENDS, key=len, reverse=True) if key == b or key.startswith(b + "_")),
                       None)
        if check == "training_memory" and backend and "step_ms" in v:
            settings = v.get("settings", {})
            row = {"what": f"{backend}_train", "backend": backend, "batch": settings.get("batch_size", 1),
                   "step_ms": v["step_ms"], "peak_gib": v.get("peak_gib")}
            if "autocast" in settings:
                row["autocast"] = settings["autocast"] != "none"
            if "gradient_checkpointing" in settings:
                row["grad_ckpt"] = settings["gradient_checkpointing"]
            rows.append(row)
        elif check == "sampling_speed" and backend and "cfg_ms_per_step" in v:
            rows.append({"what": f"{backend}_step", "backend": backend, "batch": v["batch"],
                         "cfg_ms": v["cfg_ms_per_step"], "agd_ms": v["agd_ms_per_step"]})
        elif check == "encoders" and backend and key.endswith("_text"):
            rows += [{"what": f"{backend}_text", "backend": backend, "batch": b["captions"], "ms": 1000 * b["seconds"],
                      "peak_gib": b.get("peak_gib")} for b in v.get("batches", [])]
        elif check == "encoders" and key.startswith("vae_decode_b"):  # the SDXL VAE
            rows.append({"what": "sdxl_decode", "backend": "sdxl", "batch": int(key.removeprefix("vae_decode_b")),
                         "ms": 1000 * v["seconds"], "peak_gib": v.get("peak_gib")})
        elif check == "encoders" and key == "inception":
            rows.append({"what": "inception", "batch": v["batch"], "ms": 1000 * v["seconds"], "peak_gib": v.get("peak_gib")})
    return rows, record.get("gpu") if check == "environment" else None


def _name(row: dict) -> str:
    return str(row.get("what") or row.get("check") or "").lower()


_ALIASES = {"dit_xl2": "dit-xl-2", **{b.replace("-", "_"): b for b in BACKENDS}}


def _backend_of(row: dict) -> str | None:
    if row.get("backend") in BACKENDS:
        return row["backend"]
    name = _name(row)
    hits = [a for a in _ALIASES if name == a or name.startswith(a + "_")]
    return _ALIASES[max(hits, key=len)] if hits else None


def default_table() -> Table | None:
    """The newest file the GPU check wrote under reports/gpu/, else the H200 anchor; None: neither is here."""
    if GPU_REPORTS.is_dir():
        found = sorted(GPU_REPORTS.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
        if found:
            return Table.read(found[-1])
    return Table.read(ANCHOR) if ANCHOR.is_file() else None


def gpu_of(device: str) -> str | None:
    """The GPUS key of a device name ("NVIDIA H200" -> "h200")."""
    name = device.lower().replace(" ", "")
    return next((k for k in GPUS if k in name), None)



def scaling(table: Table | None, gpu: str | None) -> tuple[str | None, float, dict | None]:
    """`--gpu`: the GPUS key whose memory the peak is held against (None: the table is not from a listed
    GPU), the factor on the table's milliseconds, and what it rests on (None: the table's own GPU)."""
    if gpu is not None and gpu not in GPUS:
        raise AGDError(f"agd plan --gpu {gpu}", "unknown GPU", f"use one of {', '.join(GPUS)}")
    source = gpu_of(table.device) if table is not None else None
    if gpu is not None and table is not None and source is None:
        raise AGDError(f"agd plan --gpu {gpu}", f"the table ({table.source}) is from {table.device}, not a GPU of the "
                       "list", f"scale a table of {', '.join(GPUS)}, or give that GPU's own with --table")
    if table is None:  # no figures to scale: the work is still counted, and no time is projected
        return gpu, 1.0, None
    target = gpu or source
    if target == source:
        return target, 1.0, None
    factor = GPUS[source][1] / GPUS[target][1]
    return target, factor, {"gpu": GPUS[target][0], "factor": round(factor, 3),
                            "basis": f"bf16 dense tensor TFLOPS {GPUS[source][1]:g} ({GPUS[source][0]}) / "
                                     f"{GPUS[target][1]:g} ({GPUS[target][0]}), public specifications: an estimate"}
