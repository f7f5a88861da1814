"""Run by tests/classifiers/test_sisa_store.py: ``concept-erase sisa ARGS...`` killed with SIGKILL right after the
N-th stage checkpoint is written, as a power cut or the OOM killer would stop it.

Usage: python sisa_crash.py N ARGS...
"""

import os
import signal
import sys

from classifiers.sisa.store import SISAStore
from pipelines.cli import main


def kill_after_checkpoints(count: int) -> None:
    """Make the ``count``-th :meth:`SISAStore.save_checkpoint` of this process SIGKILL it once the file is written."""
    save = SISAStore.save_checkpoint
    written = 0

    def save_then_die(self, key, state):
        nonlocal written
        save(self, key, state)
        written += 1
        if written == count:
            os.kill(os.getpid(), signal.SIGKILL)

    SISAStore.save_checkpoint = save_then_die


if __name__ == "__main__":
    kill_after_checkpoints(int(sys.argv[1]))
    sys.exit(main(["sisa", *sys.argv[2:]]))
