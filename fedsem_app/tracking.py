"""Progress you can watch: client log lines and per-round metrics for a tracker.

- :func:`progress_mod`, a ClientApp mod: one line through Flower's logger when a
  client starts and ends each train and evaluate message (what it does, loss,
  answers, scores, seconds), so ``flwr run --stream`` shows the clients at work.
- ``tracking`` in the run config picks a tracker from :data:`TRACKERS` that gets
  every closed round's metrics row: ``none`` (the run folder only) or
  ``tensorboard`` (event files in ``<run folder>/tensorboard``, through
  ``torch.utils.tensorboard``; needs the ``tensorboard`` package, else the run
  goes on without it and says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any, Protocol

from flwr.common.logger import log

TENSORBOARD_DIR = "tensorboard"


class Tracker(Protocol):
    """Receives each closed round's metrics row."""

    def log_round(self, server_round: int, row: Mapping[str, Any]) -> None:
        """Record one round's numbers."""

    def close(self) -> None:
        """Flush and release."""


class NoTracker:
    """The run folder is the record; nothing else is written."""

    def log_round(self, server_round: int, row: Mapping[str, Any]) -> None:  # noqa: D102
        pass

    def close(self) -> None:  # noqa: D102
        pass


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


TRACKERS: dict[str, Callable[[Path], Tracker]] = {
    "none": lambda folder: NoTracker(),
    "tensorboard": TensorBoardTracker,
}


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


# --- the clients' side ---------------------------------------------------------------


def describe_request(msg) -> str:
    """What a train or evaluate message asks of the client, in a few words."""
    from fedsem_app import protocol as p

    config = msg.content.get(p.TRAIN_CONFIG)
    server_round = config.get(p.ROUND, "?") if config is not None else "?"
    parts = [f"round {server_round}"]
    if msg.metadata.message_type.startswith(p.TRAIN):
        pseudo = msg.content.get(p.PSEUDO)
        public = msg.content.get(p.PUBLIC)
        if pseudo is not None and len(pseudo.get(p.IDS, [])):
            parts.append(f"training with {len(pseudo[p.IDS])} pseudo-labels")
        else:
            parts.append("training")
        if public is not None and len(public.get(p.IDS, [])):
            parts.append(f"then generating {len(public[p.IDS])} answers")
    else:
        test = msg.content.get(p.TEST)
        parts.append(
            f"evaluating on {len(test.get(p.IDS, [])) if test is not None else 0} test prompts"
        )
    return ", ".join(parts)


def describe_reply(reply) -> str:
    """What a client's reply reports: loss, answers, scores and seconds."""
    from fedsem_app import protocol as p

    if reply.has_error():
        return f"failed: {reply.error.reason}"
    metrics = reply.content.get(p.METRICS)
    if metrics is None:
        return "done"
    shown = []
    for key, fmt in (
        (p.TRAIN_LOSS, "train-loss {:.4f}"),
        (p.TRAIN_SECONDS, "trained in {:.1f} s"),
        (p.GENERATE_SECONDS, "generated in {:.1f} s"),
        (p.ROUGE_L, "rouge-l {:.3f}"),
        (p.EMBED_SIM, "embed-sim {:.3f}"),
        (p.NLL, "nll {:.3f}"),
        (p.EVAL_SECONDS, "in {:.1f} s"),
    ):
        if key in metrics and not (key == p.GENERATE_SECONDS and not metrics[key]):
            shown.append(fmt.format(float(metrics[key])))
    return "done: " + ", ".join(shown)


def progress_mod(msg, context, call_next):
    """ClientApp mod: a log line as each message starts and ends, with its numbers."""
    who = f"client with partition-id {context.node_config.get('partition-id', '?')}"
    kind = msg.metadata.message_type
    if not kind.startswith(("train", "evaluate")):
        return call_next(msg, context)
    log(INFO, "%s: %s", who, describe_request(msg))
    reply = call_next(msg, context)
    log(INFO, "%s: %s %s", who, kind, describe_reply(reply))
    return reply
