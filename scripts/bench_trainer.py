"""Throughput of the shared trainer against a bare hand-written PyTorch loop.

Both train the same model from the same initial weights on the same data with the same batch size, optimizer
(AdamW), gradient clipping and per-step loss read-out; the two are measured alternately in one process so that
machine noise hits both alike. The figure of merit is the overhead ``1 - trainer_sps / bare_sps`` (goal <= 5%).

    python scripts/bench_trainer.py --output bench_results/trainer.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from concept_erase.core.io import package_versions
from concept_erase.core.trainer import Trainer, TrainerConfig

MODELS = {
    # a digits-sized MLP: the smallest realistic step, where loop overhead is most visible
    "mlp": lambda: torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    ),
    # a small CNN on 28x28 inputs (MNIST-sized)
    "cnn": lambda: torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 7 * 7, 10),
    ),
}
SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 28, 28)}


def ce(model, batch):
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def make_data(name: str, n: int, batch: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, *SHAPES[name], generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)


def bare_loop(model, loader, steps: int, lr: float) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start, step = time.perf_counter(), 0
    while step < steps:
        for batch in loader:
            loss = ce(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            _ = loss.detach().item()
            step += 1
            if step >= steps:
                break
    return time.perf_counter() - start


def trainer_loop(model, loader, steps: int, lr: float, progress: bool) -> float:
    config = TrainerConfig(max_train_steps=steps, learning_rate=lr, max_grad_norm=1.0, show_progress=progress)
    trainer = Trainer(model, config, loader, ce)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def measure(name: str, batch: int, steps: int, rounds: int, progress: bool) -> dict:
    torch.manual_seed(0)
    init = MODELS[name]()
    loader = make_data(name, n=batch * 64, batch=batch)
    # warm-up both paths once (allocator, kernels, Accelerate state)
    bare_loop(copy.deepcopy(init), loader, 5, 1e-3)
    trainer_loop(copy.deepcopy(init), loader, 5, 1e-3, False)
    bare_s, trainer_s = [], []
    for _ in range(rounds):
        bare_s.append(bare_loop(copy.deepcopy(init), loader, steps, 1e-3))
        trainer_s.append(trainer_loop(copy.deepcopy(init), loader, steps, 1e-3, progress))
    samples = steps * batch
    bare_sps = samples / statistics.median(bare_s)
    trainer_sps = samples / statistics.median(trainer_s)
    return {
        "model": name,
        "params": sum(p.numel() for p in init.parameters()),
        "batch_size": batch,
        "steps_per_round": steps,
        "rounds": rounds,
        "bare_samples_per_s": round(bare_sps, 1),
        "trainer_samples_per_s": round(trainer_sps, 1),
        "overhead": round(1 - trainer_sps / bare_sps, 4),
        "bare_seconds": [round(s, 4) for s in bare_s],
        "trainer_seconds": [round(s, 4) for s in trainer_s],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="bench_results/trainer.json")
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=sorted(MODELS))
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no_progress", action="store_true", help="disable the trainer's progress bar")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure(m, args.batch_size, args.steps, args.rounds, not args.no_progress) for m in args.models]
    report = {
        "benchmark": "trainer_vs_bare_loop",
        "goal": "overhead <= 0.05",
        "threads": torch.get_num_threads(),
        "results": results,
        "versions": package_versions(),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(
            f"{r['model']}: bare {r['bare_samples_per_s']:.0f} samples/s, trainer {r['trainer_samples_per_s']:.0f} "
            f"samples/s, overhead {100 * r['overhead']:.1f}%"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
