"""One rank of the 2-process test in ``test_train_runtime.py`` (run by ``torch.distributed.run``, not by pytest):
trains ``gem`` through :func:`glocal.train.session.train_method` and saves this rank's final weights to
``OUT/rank-R.pt`` so the test can compare the ranks."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from glocal.methods import get
from glocal.train.session import RunSettings, train_method


def main(data: str, run: str, out: str, batch: int) -> None:
    torch.set_num_threads(1)
    train = {"steps": 2, "batch": batch, "negatives": 1, "lr": 1e-3, "image_size": 48, "frozen_fraction": 0.5,
             "checkpoint_every": 1, "eval_every": 2, "seed": 0}
    settings = RunSettings(method="gem", data=data, settings={"backbone": "efficientnet-lite0"}, train=train,
                           eval_fraction=0.25, command="ddp test")
    rank = int(os.environ.get("RANK", "0"))

    def keep(result: object) -> None:
        torch.save(result.network.state_dict(), Path(out) / f"rank-{rank}.pt")  # type: ignore[attr-defined]

    path, _ = train_method(get("gem"), settings, run, on_result=keep)
    (Path(out) / f"exported-{rank}.txt").write_text(str(path))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
