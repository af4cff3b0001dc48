"""`charsearch train ARGS` with its training curve written down: at every loss read-out (--print-every), a line
'iteration loss largest-gradient-norm rate' appended to the file $TRACE (the norm before clipping, the largest
since the last read-out). The run itself is unchanged; bench_warmup.py reads the file.

    TRACE=curve.txt python benchmarks/trace_train.py --data C --print-every 10 ...
"""

from __future__ import annotations

import os
import sys

import torch

from charsearch.core import train as train_module

_read_loss, _clip = train_module.Run.read_loss, torch.nn.utils.clip_grad_norm_
largest = [0.0]


def clip(parameters, max_norm, *args, **kwargs):
    norm = _clip(parameters, max_norm, *args, **kwargs)
    largest[0] = max(largest[0], float(norm))
    return norm


def read_loss(self) -> None:
    _read_loss(self)
    with open(os.environ["TRACE"], "a") as out:
        out.write(f"{self.iteration} {self.window_loss:.4f} {largest[0]:.3f} "
                  f"{self.optimizer.param_groups[0]['lr']:.6f}\n")
    largest[0] = 0.0


if __name__ == "__main__":
    torch.nn.utils.clip_grad_norm_ = clip
    train_module.Run.read_loss = read_loss
    from charsearch.cli import main
    sys.exit(main(["train", *sys.argv[1:]]))
