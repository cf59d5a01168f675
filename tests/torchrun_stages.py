"""Run several brainspade commands in one process, for `torchrun ... tests/torchrun_stages.py` (test_distributed.py).

Usage: torchrun --nproc_per_node 2 --standalone tests/torchrun_stages.py 'CMD ARGS...' 'CMD ARGS...'
One process per rank runs the commands in order (one torch import and one process group for
all of them, which keeps the 2-process test short); the first failing command ends the run.
"""

from __future__ import annotations

import shlex
import sys

import torch

from brainspade.cli import main

if __name__ == "__main__":
    torch.set_num_threads(1)
    for command in sys.argv[1:]:
        try:
            code = main(shlex.split(command))
        except SystemExit as exit_:
            code = exit_.code
        if code not in (0, None):
            raise SystemExit(code)
