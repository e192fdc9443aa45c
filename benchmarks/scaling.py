"""Collection and training throughput with 1 process against N (launch.nproc, torchrun).

    python benchmarks/scaling.py [--nproc 2] [--trajectories 256] [--train-steps 200]

In a temporary copy of the project (the embedded default's params, base and conditions): `agd
trajectories` for the first --trajectories conditions into a fresh store, then `agd train` for
--train-steps steps on it, each with 1 and with --nproc processes. Prints wall time (launch and
model loading included), the work's own throughput (trajectory states per second: the sum of the
ranks' rates; training states per second) and the ratios, and checks that both stores are the same
bytes. On a GPU machine --nproc is the number of GPUs; on a CPU the processes share the cores, so
the ratio shows the mechanism's overhead, not a speed-up. Writes reports/scaling.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def agd(project: Path, stage: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("AGD_THREADS", None)  # each process takes its share of the cores
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", stage], cwd=project, env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"agd {stage} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stderr


def rates(log: str, stage: str) -> float:
    """States per second of the work itself. Collection: the sum over ranks (each logs its own share);
    training: one rank's line (each counts the global batch)."""
    found = [float(v.replace(",", "")) for v in re.findall(r"\(([\d,.]+) states/s\)", log)]
    return sum(found) if stage == "trajectories" else found[0]


def files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--trajectories", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "reports/scaling.txt")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    conditions = json.loads((ROOT / "data/conditions.json").read_text())
    conditions["items"] = conditions["items"][: args.trajectories]
    rows, stores = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, args.nproc):
            project = Path(tmp) / f"n{nproc}"
            (project / "data").mkdir(parents=True)
            (project / "data/conditions.json").write_text(json.dumps(conditions))
            base = Path(params["base"]["path"])
            shutil.copytree(ROOT / base, project / base)
            doc = {**params, "launch": {"nproc": nproc},
                   "train": {**params["train"], "steps": args.train_steps, "checkpoint_every": args.train_steps}}
            (project / "params.yaml").write_text(yaml.safe_dump(doc))
            for stage in ("trajectories", "train"):
                seconds, log = agd(project, stage)
                rows.append((stage, nproc, seconds, rates(log, stage)))
                print(f"{stage}: {nproc} process(es): {seconds:.1f} s wall, {rows[-1][3]:,.0f} states/s", flush=True)
            stores[nproc] = files(project / params["trajectories"]["output"])
    same = stores[1] == stores[args.nproc]
    lines = [f"{args.trajectories} trajectories ({params['trajectories']['scheduler']}, "
             f"{params['trajectories']['num_steps']} steps) and {args.train_steps} training steps "
             f"(global batch {params['train']['batch_size']}); {os.cpu_count()} CPU cores",
             f"stores byte-identical (1 vs {args.nproc} processes): {same}", "",
             "| stage | processes | wall s | states/s | states/s vs 1 process |", "|---|---|---|---|---|"]
    one = {stage: rate for stage, n, _, rate in rows if n == 1}
    for stage, n, seconds, rate in rows:
        lines.append(f"| {stage} | {n} | {seconds:.1f} | {rate:,.0f} | {rate / one[stage]:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
