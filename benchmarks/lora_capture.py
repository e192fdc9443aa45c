"""How much of CFG's correction the trained adapters still capture with a LoRA on the base.

    python benchmarks/lora_capture.py [--rank 8] [--steps 400] [--digits 0,1,2,3,4] [--scales 0.5,1.0]

A LoRA (peft, on every attention's to_q, to_k, to_v, to_out.0, as diffusers' LoRA training scripts
place it) is trained on the embedded default's base (params.yaml: base.path) with the base's own
loss and label drop on some digits only, the way a user would adapt a model. The adapters of
train.output, trained on the base alone, are then measured at --w on held-out CFG trajectories
(the evaluate stage's held-out conditions and seeds; the trajectories stage's sampler):
captured, cosine and gain (pipeline.evaluation.distill) on the base, and on the base with the LoRA at each
--scales weight, with CFG's teacher the LoRA'd model itself. `retained` = captured with the LoRA /
captured on the base. Writes reports/lora_capture.json and .txt.

The LoRA leaves the base's fingerprint as it is (its layers are not the base's weights), so
`enable_agd` accepts the adapters on a LoRA'd pipeline; this measures what that costs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.run import runtime  # noqa: E402


def train_lora(family, rank: int, steps: int, digits: list[int], lr: float, batch_size: int) -> float:
    """Add a LoRA to the base and train it; returns the last loss."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    from pipeline import config
    from pipeline.backends import embedded as pretrain
    from pipeline.data import mnist
    from pipeline.run.progress import Tracker

    pre = config.load().pretrain
    images, labels = mnist.load_split(ROOT / "data", "train")
    keep = torch.from_numpy(labels).unsqueeze(1).eq(torch.tensor(digits)).any(1).numpy()
    x_all, y_all = mnist.to_model_space(images[keep]), torch.from_numpy(labels[keep])
    model = family.denoiser
    torch.manual_seed(pre.seed)
    # peft directly: DiTTransformer2DModel has no diffusers LoRA loader (UNets do: load_lora_weights)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
                            model)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    scheduler = pretrain.build_scheduler()
    weight = pretrain.min_snr_weight(scheduler, pre.min_snr_gamma).to(family.device)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(pre.seed)
    loss = torch.tensor(float("nan"))
    with Tracker(f"lora: rank {rank} on digits {digits}", steps) as tracker:
        for _ in range(steps):
            loss = pretrain.denoising_loss(model, scheduler, weight, x_all, y_all, batch_size, pre.label_drop, gen,
                                           family.device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tracker.advance(1, loss=loss.item())
    for p in params:
        p.requires_grad_(False)
    return float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400, help="LoRA training steps")
    parser.add_argument("--digits", default="0,1,2,3,4", help="the digits the LoRA is trained on")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--w", type=float, default=3.0, help="guidance scale measured")
    parser.add_argument("--scales", default="0.5,1.0", help="LoRA weights measured")
    parser.add_argument("--out", type=Path, default=ROOT / "reports/lora_capture")
    args = parser.parse_args()
    runtime.setup()
    import torch

    from pipeline import config
    from pipeline.backends.family import state_fingerprint
    from pipeline.backends.loading import load_base
    from pipeline.evaluation import distill
    from pipeline.evaluation.samples import held_out
    from pipeline.guidance.adapters import AdapterSet

    params = config.load()
    base, traj, train_p, ev_p = params.base, params.trajectories, params.train, params.evaluate
    family = load_base(**base.model_dump())
    adapters = AdapterSet.load(Path(train_p.output), family)
    cond, seeds = held_out(family, ev_p)

    def measure() -> dict:
        total, _ = distill.held_out(family, adapters, cond, seeds, args.w, traj.scheduler, traj.num_steps)
        return {k.removeprefix("correction_"): v for k, v in total.items() if k != "correction_defined"}

    def conditional() -> torch.Tensor:  # the conditional model's output on a fixed batch: how far the LoRA moved it
        g = torch.Generator().manual_seed(0)
        x = torch.randn((len(seeds), *family.latent_shape), generator=g)
        t = torch.full((len(seeds),), 500)
        with torch.no_grad():
            return family.guided_channels(family.forward(x, t, cond))

    rows = {"base": {**measure(), "lora_scale": 0.0}}
    before = conditional()
    digits = [int(d) for d in args.digits.split(",")]
    last_loss = train_lora(family, args.rank, args.steps, digits, args.lr, args.batch_size)
    same_base = state_fingerprint(family.denoiser) == family.fingerprint
    for scale in (float(s) for s in args.scales.split(",")):
        for module in family.denoiser.modules():
            if hasattr(module, "set_scale") and hasattr(module, "lora_A"):
                module.set_scale("default", scale)
        moved = ((conditional() - before).norm() / before.norm()).item()
        rows[f"lora{scale:g}"] = {**measure(), "lora_scale": scale, "output_change": round(moved, 4)}
    for row in rows.values():
        row["retained"] = round(row["captured"] / rows["base"]["captured"], 4)
    result = {"settings": {**vars(args), "out": str(args.out), "held_out_trajectories": len(seeds),
                           "scheduler": traj.scheduler, "num_steps": traj.num_steps, "lora_last_loss": last_loss},
              "fingerprint_unchanged_by_lora": same_base, "rows": rows}
    lines = [f"LoRA rank {args.rank}, {args.steps} steps on digits {args.digits}; adapters of {train_p.output} at "
             f"w = {args.w:g} on {len(seeds)} held-out CFG trajectories ({traj.scheduler}, {traj.num_steps} steps)",
             f"base fingerprint unchanged with the LoRA loaded: {same_base}", "",
             "| model | LoRA scale | conditional output moved | captured | cosine | gain | retained |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['lora_scale']:g} | {r.get('output_change', 0.0):.1%} | {r['captured']:.3f} | "
                     f"{r['cosine']:.3f} | {r['gain']:.3f} | {r['retained']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".txt").write_text(text)


if __name__ == "__main__":
    main()
