"""Stage `classifier`: train the MNIST judge (floor: 99 % test accuracy) and write its feature
reference: mean, covariance and features of all MNIST test digits."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.config import Params
from pipeline.data import mnist
from pipeline.evaluation import fid
from pipeline.evaluation.judge import REFERENCE, WEIGHTS, DigitClassifier, features, predict, shift_augment
from pipeline.run import devices, files, preflight
from pipeline.run.progress import Tracker, log

REPORT = Path("reports/classifier.json")


def run(params: Params, data_dir: Path = Path("data")) -> None:
    p = params.classifier
    preflight.writable_all([("classifier weights", WEIGHTS, "file"), ("judge reference", REFERENCE, "file"),
                            ("report", REPORT, "file")])
    torch.manual_seed(p.seed)
    gen = torch.Generator().manual_seed(p.seed)
    train_x, train_y = mnist.load_split(data_dir, "train")
    test_x, test_y = mnist.load_split(data_dir, "test")
    if p.train_digits:
        train_x, train_y = train_x[: p.train_digits], train_y[: p.train_digits]
    x, y = mnist.to_model_space(train_x), torch.from_numpy(train_y)
    device = devices.resolve(params.base.device)
    log(f"classifier: training on {devices.describe(device, torch.float32)}")
    model = DigitClassifier().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    steps_per_epoch = len(x) // p.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, p.lr, total_steps=p.epochs * steps_per_epoch)
    with Tracker("classifier", p.epochs * steps_per_epoch) as tracker:
        for _ in range(p.epochs):
            model.train()
            order = torch.randperm(len(x), generator=gen)
            for s in range(steps_per_epoch):
                idx = order[s * p.batch_size:(s + 1) * p.batch_size]
                loss = F.cross_entropy(model(shift_augment(x[idx], gen).to(device)), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                tracker.advance(1, loss=loss.item())
    test = mnist.to_model_space(test_x).to(device)
    predicted = predict(model, test).cpu()
    accuracy = float((predicted == torch.from_numpy(test_y)).float().mean())
    reference = features(model, test).cpu().numpy()
    with files.atomic(WEIGHTS) as tmp, open(tmp, "wb") as f:
        torch.save(model.cpu().state_dict(), f)
    fid.save_reference(REFERENCE, reference)
    files.write_json(REPORT, {"test_accuracy": round(accuracy, 4)})
    log(f"classifier: MNIST test accuracy {accuracy:.4f}")
