"""Per-round metrics for a tracker: ``tracking`` in the run config picks one.

Runs on the server. :data:`TRACKERS` holds ``none`` (the run folder only) and
``tensorboard`` (event files in ``<run folder>/tensorboard``, through
``torch.utils.tensorboard``; needs the ``tensorboard`` package, else the run goes on
without it and says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any, Protocol

from flwr.common.logger import log

from fedsem_app.registry import Registry

TENSORBOARD_DIR = "tensorboard"


class Tracker(Protocol):
    """Receives each closed round's metrics row."""

    def log_round(self, server_round: int, row: Mapping[str, Any]) -> None:
        """Record one round's numbers."""

    def close(self) -> None:
        """Flush and release."""


# tracking = "<name>" -> the tracker class, built with the run folder.
TRACKERS: Registry[Callable[[Path], Tracker]] = Registry("tracker", key="tracking")


@TRACKERS.register("none")
class NoTracker:
    """The run folder is the record; nothing else is written."""

    def __init__(self, folder: Path | None = None) -> None:
        pass

    def log_round(self, server_round: int, row: Mapping[str, Any]) -> None:  # noqa: D102
        pass

    def close(self) -> None:  # noqa: D102
        pass


@TRACKERS.register("tensorboard")
class TensorBoardTracker:
    """Every finite number of a round's row as a TensorBoard scalar at step = round.

    Names are grouped by what they measure (``quality/rouge-l``, ``bytes/bytes-down``,
    ``seconds/round-seconds``, ``run/...``), so the dashboard reads like the metrics CSV.
    """

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.folder = Path(folder) / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(self.folder))

    @staticmethod
    def tag(key: str) -> str:
        """Group name of a metrics column."""
        if key.startswith("bytes"):
            return f"bytes/{key}"
        if "seconds" in key:
            return f"seconds/{key}"
        if key in ("rouge-l", "embed-sim", "nll", "perplexity", "train-loss", "agreement-mean"):
            return f"quality/{key}"
        return f"run/{key}"

    def log_round(self, server_round: int, row: Mapping[str, Any]) -> None:  # noqa: D102
        for key, value in row.items():
            if key == "round" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(self.tag(key), value, global_step=server_round)
        self.writer.flush()

    def close(self) -> None:  # noqa: D102
        self.writer.close()


def open_tracker(name: str, folder: Path) -> Tracker:
    """The tracker ``name`` for the run in ``folder``; :class:`NoTracker` if it cannot start.

    A missing ``tensorboard`` package must not stop a federated run that is ready
    to go: the run goes on, recorded in its folder as always, and the log says why
    and how to get the tracker.
    """
    try:
        tracker = TRACKERS[name](folder)
    except ImportError as err:
        log(
            WARNING,
            "fedsem: tracking=%r needs a package that is not installed (%s); the run goes "
            "on without it (pip install tensorboard)",
            name,
            err,
        )
        return NoTracker()
    if isinstance(tracker, TensorBoardTracker):
        log(
            INFO,
            "fedsem: TensorBoard events in %s (tensorboard --logdir %s)",
            tracker.folder,
            tracker.folder,
        )
    return tracker


def tracked(run_log, tracker: Tracker):
    """Make ``run_log`` hand every row it closes to ``tracker`` too; return ``run_log``."""
    close_round = run_log.close_round

    def close_and_track(server_round: int) -> dict[str, Any]:
        row = close_round(server_round)
        try:
            tracker.log_round(server_round, row)
        except Exception as err:  # noqa: BLE001 - a tracker must never end a run
            log(WARNING, "fedsem: tracker failed on round %d: %s", server_round, err)
        return row

    run_log.close_round = close_and_track
    return run_log
