"""One rank of the 2-process detector test in ``test_train_detector.py`` (run by ``torch.distributed.run``, not
by pytest): trains ``d2r``'s detector through :func:`glocal.train.session.train_method` and saves this rank's final
weights to ``OUT/rank-R.pt`` and what it exported to ``OUT/exported-R.txt``."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from glocal.methods import get
from glocal.train.session import RunSettings, train_method


def main(data: str, run: str, out: str) -> None:
    torch.set_num_threads(1)
    train = {"steps": 2, "batch": 1, "image_size": 96, "checkpoint_every": 1, "eval_every": 2, "seed": 0}
    settings = {"head_width": 16, "head_depth": 1, "pretrained_backbone": False}
    run_settings = RunSettings(method="d2r", data=data, settings=settings, train=train, eval_fraction=0.2,
                               command="ddp test")
    rank = int(os.environ.get("RANK", "0"))

    def keep(result: object) -> None:
        torch.save(result.network.state_dict(), Path(out) / f"rank-{rank}.pt")  # type: ignore[attr-defined]

    path, _ = train_method(get("d2r"), run_settings, run, on_result=keep)
    (Path(out) / f"exported-{rank}.txt").write_text(str(path))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
