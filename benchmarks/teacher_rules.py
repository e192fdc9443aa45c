"""Each teacher rule's own two passes against plain CFG at one scale: which rule is worth distilling?

    python benchmarks/teacher_rules.py [--w 7] [--samples 400] [--steps 25] [--threads 2]

No adapters are involved: it samples the embedded default's base under plain CFG and under every
rule with params.yaml's guidance parameters (and APG with a tighter norm cap), on the evaluate
section's conditions and seeds, and scores them as `evaluate` does (judge feature distance on all
samples, paired by seed against CFG, 95 % bootstrap intervals; Inception FID on the first 50).
Run it after `dvc repro` (it reads the judge and the FID references). A rule whose teacher is not
better than CFG at a scale leaves AGD nothing to inherit there; this is how the rule experiments
(docs/experiments.md) were chosen.
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline import config  # noqa: E402
from pipeline.backends.loading import load_base  # noqa: E402
from pipeline.evaluation import tables  # noqa: E402
from pipeline.evaluation.samples import Generator  # noqa: E402
from pipeline.evaluation.scoring import Scorer  # noqa: E402
from pipeline.guidance import rules  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--w", type=float, default=7.0, help="guidance scale")
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--steps", type=int, default=0, help="sampler steps (default: evaluate.num_steps)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = config.load()
    base, g = params.base, params.guidance
    family = load_base(base.backend, base.path, device="cpu")
    settings = params.evaluate.replace(num_samples=args.samples, inception_samples=min(50, args.samples))
    gen = Generator(family, None, settings, params.evaluate.scheduler or params.trajectories.scheduler)
    scorer = Scorer(gen.layout, settings, gen.cond_arrays.get("labels"))
    steps = args.steps or settings.num_steps
    candidates = [rules.from_params(g.replace(rule=name)) for name in ("interval", "rescale", "apg", "cfg_zero_star")]
    apg = next(r for r in candidates if isinstance(r, rules.APG))
    candidates.append(replace(apg, norm_threshold=apg.norm_threshold / 8))
    cfg = gen.run("cfg", args.w, num_steps=steps, label="cfg")
    print(f"w = {args.w:g}, {args.samples} samples, {steps} steps; judge FD (95 %), rule minus CFG paired, FID, accuracy")
    print(f"{'cfg':>60} {tables.quality_cells(scorer.score(cfg))}")
    for rule in candidates:
        got = gen.run("cfg", args.w, num_steps=steps, label=rule.name, rule=rule)
        cells = tables.quality_cells(scorer.score(got))
        versus = tables.versus(scorer.compare(got, cfg)).get("judge_fd_diff", {})
        print(f"{str(rule):>60} judge FD {cells.get('judge_fd')} [{cells.get('judge_fd_low')}, "
              f"{cells.get('judge_fd_high')}], minus CFG {versus.get('value')} [{versus.get('ci_low')}, "
              f"{versus.get('ci_high')}], FID {cells.get('fid')}, accuracy {cells.get('accuracy')}", flush=True)


if __name__ == "__main__":
    main()
