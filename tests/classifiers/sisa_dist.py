"""Run by tests/classifiers/test_sisa_store.py under ``torchrun --nproc_per_node 2`` (and once in a single process).

Fits a small SISA store on digits, then unlearns a few indices. Usage: python sisa_dist.py STORE
"""

import sys

import torch

from classifiers.data import load_dataset
from classifiers.sisa import SISAClassifier


def main() -> None:
    torch.set_num_threads(1)
    sisa = SISAClassifier("mlp", n_shards=3, n_slices=2, epochs=1, store=sys.argv[1], show_progress=False)
    sisa.fit(load_dataset("digits"))
    summary = sisa.unlearn([0, 1, 2, 500])
    print(f"rank {sisa.dist_.rank} of {sisa.dist_.world} done: version {summary['version']}")
    if torch.distributed.is_initialized():  # tear gloo down before exit, or a rank may abort at shutdown
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
