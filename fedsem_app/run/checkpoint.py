"""Checkpoints: the server's state after every round, so that a crashed run can resume.

Runs on the server.

Layout inside the run folder::

    checkpoint/state.json                    round, strategy, run config, strategy state
                                             (FedSem: its pseudo-labels), metrics rows,
                                             cumulative bytes, sizes of the append-only logs
    checkpoint/arrays-round-NNNN.safetensors the global arrays after round NNNN (the LoRA
                                             adapter of fedavg-lora and fedit); absent for
                                             strategies that exchange no parameters
    checkpoint/resume.toml                   the run config plus ``resume-from``: pass it
                                             to ``flwr run . --run-config``

Every file is written under a temporary name, flushed to disk and renamed over the
old one. ``state.json`` goes last and names its arrays file (with its sha256), and
older arrays files are deleted only after it is in place, so a crash at any moment
leaves either the previous complete checkpoint or the new one, never a mix.

What is not in it: each client's own adapter (fedsem, local, pooled). The client
keeps that in its node state and, after every round, in a file of the model cache
keyed by the run folder and its partition id (:func:`fedsem_app.clients.export.node_adapter_file`):
Flower gives a resumed run a new run id and fresh node state, but the same run
folder, so each client goes on with its own adapter, and the server side
(pseudo-labels, global adapter, metrics, bytes) where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedsem_app.config.app import AppConfig
from fedsem_app.config.errors import ConfigError
from fedsem_app.files import atomic_write, jsonable, toml_value
from fedsem_app.quantize import adapter_record

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
RESUME_FILE = "resume.toml"
FORMAT = 1  # bump when state.json changes incompatibly

# Run-config keys that may differ between the interrupted run and its resumption:
# how long, how patient, where and on which hardware, never what is learnt or from
# which data. Every other key must match the checkpoint.
MAY_CHANGE = frozenset(
    {
        "num-server-rounds",
        "round-timeout",
        "min-clients",
        "resume-from",
        "results-dir",
        "run-name",
        "model.device",
        "model.cache-dir",
        "train.num-threads",
        "gen.batch-size",
        "tracking",
    }
)


@dataclass(frozen=True)
class Checkpoint:
    """A run's state after its last completed round, as read from its run folder.

    Attributes
    ----------
    folder
        The run folder (the checkpoint lives in its ``checkpoint/`` sub-folder).
    round
        The last completed round.
    strategy
        The strategy's registered name.
    config
        The flat run config the checkpoint was written with.
    strategy_state
        What the strategy's ``state_dict()`` returned.
    run_state
        What :meth:`fedsem_app.run.results.RunLog.state` returned: metrics rows,
        cumulative byte totals and the sizes of the append-only logs.
    arrays
        The global arrays after ``round``, or None if the strategy has none.
    """

    folder: Path
    round: int
    strategy: str
    config: dict[str, Any]
    strategy_state: dict[str, Any]
    run_state: dict[str, Any]
    arrays: ArrayRecord | None


def resume_profile(config: Mapping[str, Any], folder: Path) -> str:
    """A run-config TOML file that resumes the run in ``folder`` with the same settings."""
    lines = [
        "# Resume this run: flwr run . --run-config <this file> --stream",
        "# Raise num-server-rounds to run more rounds than planned.",
    ]
    flat = {**config, "resume-from": str(folder)}
    lines += [f"{json.dumps(key)} = {toml_value(value)}" for key, value in flat.items()]
    return "\n".join(lines) + "\n"


def save_checkpoint(
    folder: Path,
    server_round: int,
    *,
    strategy: str,
    config: Mapping[str, Any],
    strategy_state: Mapping[str, Any],
    run_state: Mapping[str, Any],
    arrays: ArrayRecord | None,
) -> int:
    """Write the state after ``server_round`` into ``folder/checkpoint`` (see module doc).

    Returns
    -------
    int
        Bytes written.
    """
    from safetensors.numpy import save as safetensors_bytes

    directory = folder / CHECKPOINT_DIR
    directory.mkdir(exist_ok=True)
    written = 0
    arrays_entry = None
    if arrays is not None and len(arrays) > 0:
        name = f"arrays-round-{server_round:04d}.safetensors"
        data = safetensors_bytes(
            {key: np.ascontiguousarray(array.numpy()) for key, array in arrays.items()}
        )
        atomic_write(directory / name, data)
        written += len(data)
        # safetensors does not keep insertion order: keep it here, as Flower's FedAvg
        # and the clients see the keys in this order.
        arrays_entry = {
            "file": name,
            "keys": list(arrays.keys()),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    state = {
        "format": FORMAT,
        "round": server_round,
        "strategy": strategy,
        "config": dict(config),
        "strategy-state": dict(strategy_state),
        "run": dict(run_state),
        "arrays": arrays_entry,
    }
    data = (json.dumps(state, indent=1, default=jsonable) + "\n").encode()
    atomic_write(directory / STATE_FILE, data)
    written += len(data)
    # Older arrays files go only now, when state.json no longer names them, and so do
    # temporary files that a run killed in the middle of a write left behind.
    for old in [*directory.glob("arrays-round-*.safetensors"), *directory.glob("*.tmp")]:
        if arrays_entry is None or old.name != arrays_entry["file"]:
            old.unlink(missing_ok=True)
    profile = resume_profile(config, folder).encode()
    atomic_write(directory / RESUME_FILE, profile)
    return written + len(profile)


def resume_folder(cfg: AppConfig) -> Path:
    """The run folder named by ``resume-from``: a path, or a folder name under results-dir."""
    path = Path(cfg.resume_from).expanduser()
    if not path.is_absolute():
        # The ServerApp runs in the SuperLink's working directory, so a relative path
        # means a run folder name under results-dir, where runs are written.
        path = cfg.results_root / path
    return path


def read_checkpoint(folder: Path) -> Checkpoint:
    """Read and verify the checkpoint of a run folder.

    Raises
    ------
    ConfigError
        For ``resume-from``: the folder or its checkpoint is missing, unreadable,
        of another format, or its arrays file is missing or does not match its sha256.
    """
    from safetensors.numpy import load as safetensors_load

    key = "resume-from"
    if not folder.is_dir():
        raise ConfigError(
            key,
            f"run folder {str(folder)!r} does not exist; give the absolute path of a run "
            "folder (or its name under results-dir), e.g. "
            "resume-from='~/.fedsem/runs/20261123-101500-fedsem'",
        )
    state_path = folder / CHECKPOINT_DIR / STATE_FILE
    if not state_path.is_file():
        raise ConfigError(
            key,
            f"{str(folder)!r} holds no checkpoint ({CHECKPOINT_DIR}/{STATE_FILE}); a run writes "
            "one after each completed round, so this run ended before its first round or is "
            "not a fedsem run folder. Start it again without resume-from",
        )
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(key, f"cannot read {str(state_path)!r}: {err}") from err
    if state.get("format") != FORMAT:
        raise ConfigError(
            key,
            f"{str(state_path)!r} has checkpoint format {state.get('format')!r}, this version "
            f"reads format {FORMAT}; resume it with the version of fedsem that wrote it",
        )
    arrays = None
    entry = state.get("arrays")
    if entry:
        path = folder / CHECKPOINT_DIR / entry["file"]
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ConfigError(key, f"checkpoint arrays {str(path)!r} are missing: {err}") from err
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ConfigError(
                key, f"checkpoint arrays {str(path)!r} do not match their sha256: file damaged"
            )
        tensors = safetensors_load(data)
        arrays = adapter_record({k: tensors[k] for k in entry["keys"]})
    return Checkpoint(
        folder=folder,
        round=int(state["round"]),
        strategy=str(state["strategy"]),
        config=dict(state["config"]),
        strategy_state=dict(state.get("strategy-state", {})),
        run_state=dict(state.get("run", {})),
        arrays=arrays,
    )


def _shown(value: Any) -> str:
    return "(not set)" if value is None else toml_value(value)


def open_resume(cfg: AppConfig) -> Checkpoint:
    """Read the checkpoint that ``resume-from`` names and check it fits this run config.

    Raises
    ------
    ConfigError
        If the folder or checkpoint is missing or damaged, if a setting that shapes
        what is learnt differs from the checkpoint's (anything but :data:`MAY_CHANGE`),
        or if ``num-server-rounds`` is below the checkpoint's round.
    """
    checkpoint = read_checkpoint(resume_folder(cfg))
    flat = cfg.to_flat()
    for key in sorted(set(flat) | set(checkpoint.config)):
        if key in MAY_CHANGE or flat.get(key) == checkpoint.config.get(key):
            continue
        old = checkpoint.config.get(key)
        raise ConfigError(
            key,
            f"the checkpoint in {str(checkpoint.folder)!r} was written with "
            f"{key}={_shown(old)}, this run config says {key}={_shown(flat.get(key))}; "
            f"a resumed run must keep it: pass {key}={_shown(old)} (or the checkpoint's "
            f"{CHECKPOINT_DIR}/{RESUME_FILE} as --run-config), or start a new run without "
            "resume-from",
        )
    if checkpoint.round > cfg.num_server_rounds:
        raise ConfigError(
            "num-server-rounds",
            f"the checkpoint in {str(checkpoint.folder)!r} is at round {checkpoint.round}, "
            f"past num-server-rounds={cfg.num_server_rounds}; num-server-rounds is the total "
            f"of the run: set it to {checkpoint.round} or more",
        )
    return checkpoint


class RoundShift(Strategy):
    """Flower's round loop over a strategy whose rounds start after ``offset``.

    Flower's ``Strategy.start`` numbers rounds ``1..num_rounds``. A run resumed
    after round ``r`` must go on with round ``r + 1``: this wrapper lets Flower's
    own loop run the rounds that are left, unchanged (no copy of it to keep in
    step with Flower), and adds ``offset`` to every round number before the
    wrapped strategy sees it, so the strategy, its messages and its metrics carry
    the true round numbers. It also keeps the global arrays of the round as
    Flower passes them to ``configure_evaluate`` (the aggregate of this round, or
    the previous arrays if there was none) and calls ``on_round_end(round,
    arrays)`` once ``aggregate_evaluate`` has closed the round.

    Parameters
    ----------
    strategy
        The strategy that does the work.
    offset
        Rounds already done (0 for a fresh run).
    on_round_end
        Called with the true round number and the round's global arrays.
    """

    def __init__(
        self,
        strategy: Strategy,
        offset: int,
        on_round_end: Callable[[int, ArrayRecord], None],
    ) -> None:
        self.strategy = strategy
        self.offset = offset
        self.on_round_end = on_round_end
        self.arrays = ArrayRecord()

    def configure_train(  # noqa: D102
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ):
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):  # noqa: D102
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(  # noqa: D102
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        self.arrays = arrays
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies) -> MetricRecord | None:  # noqa: D102
        metrics = self.strategy.aggregate_evaluate(server_round + self.offset, replies)
        self.on_round_end(server_round + self.offset, self.arrays)
        return metrics

    def summary(self) -> None:  # noqa: D102
        self.strategy.summary()


def shift_result(result: Result, offset: int) -> Result:
    """Renumber a Result's per-round metrics from the wrapper's rounds to the true ones."""
    for name in (
        "train_metrics_clientapp",
        "evaluate_metrics_clientapp",
        "evaluate_metrics_serverapp",
    ):
        setattr(result, name, {r + offset: m for r, m in getattr(result, name).items()})
    return result


def timed_save(folder: Path, server_round: int, **kwargs: Any) -> tuple[int, float]:
    """:func:`save_checkpoint` with its wall time, logged once per round.

    Returns
    -------
    tuple
        Bytes written and seconds taken.
    """
    t0 = time.perf_counter()
    written = save_checkpoint(folder, server_round, **kwargs)
    seconds = time.perf_counter() - t0
    log(INFO, "checkpoint after round %d: %.1f kB in %.3f s", server_round, written / 1e3, seconds)
    return written, seconds
