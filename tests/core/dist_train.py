"""Run by tests/test_trainer.py under ``torchrun --nproc_per_node 2`` (and once in a single process).

Trains a tiny model with the shared trainer and writes each rank's final parameters to OUT/rank{r}.safetensors.
Usage: python dist_train.py OUT PER_PROCESS_BATCH [MAX_STEPS]
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from concept_erase.core.trainer import Trainer, TrainerConfig


def main() -> None:
    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
    config = TrainerConfig(max_train_steps=steps, learning_rate=0.05, optimizer="sgd", sgd_momentum=0.9, seed=3)
    trainer = Trainer(model, config, loader, lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]))
    result = trainer.train()
    rank = trainer.accelerator.process_index
    tensors = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(tensors, str(out / f"rank{rank}.safetensors"), metadata={"steps": str(result.global_step)})
    print(f"rank {rank} of {trainer.accelerator.num_processes} done after {result.global_step} steps")
    if torch.distributed.is_initialized():  # tear gloo down before exit, or a rank may abort at shutdown
        trainer.accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
