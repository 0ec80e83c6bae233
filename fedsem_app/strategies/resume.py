"""How every strategy starts, checkpoints and resumes a run (see :mod:`fedsem_app.run.checkpoint`).

Runs on the server. :class:`ResumableStrategy` is the part of
:class:`~fedsem_app.strategies.harness.AppStrategy` that spans rounds: round 0, the
DP wrapper, Flower's round loop shifted to a resumed run's rounds, and a
checkpoint after every closed round.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedsem_app.run.checkpoint import Checkpoint, RoundShift, shift_result, timed_save


class ResumableStrategy(Strategy):
    """A strategy whose runs can stop after any round and continue from its checkpoint.

    Subclasses provide ``app``, ``run_log``, ``name``, ``first_round``,
    ``train_nodes(grid)`` and ``evaluate_round_zero(...)``
    (:class:`~fedsem_app.strategies.harness.AppStrategy` does).
    """

    def state_dict(self) -> dict[str, Any]:
        """Strategy state a resumed run needs, as JSON values (none here; see FedSem).

        The global arrays are not part of it: :meth:`start` checkpoints them for
        every strategy, as Flower passes them from round to round.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (nothing here)."""

    def resume(self, checkpoint: Checkpoint) -> None:
        """Continue after the checkpoint's round, with its strategy state."""
        self.load_state_dict(checkpoint.strategy_state)
        self.first_round = checkpoint.round + 1

    def save_checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        """Write the state after a closed round into the run folder.

        A failed write (disk full, folder gone) is logged and the run goes on: it
        only loses the ability to resume from this round.
        """
        if self.run_log is None:
            return
        try:
            timed_save(
                self.run_log.folder,
                server_round,
                strategy=self.name,
                config=self.app.to_flat(),
                strategy_state=self.state_dict(),
                run_state=self.run_log.state(),
                arrays=arrays,
            )
        except OSError as err:
            log(
                WARNING,
                "round %d: checkpoint not written (%s); the run goes on, but cannot "
                "resume from this round",
                server_round,
                err,
            )

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn=None,
    ) -> Result:
        """Run rounds ``first_round..num_rounds`` with Flower's loop; checkpoint each one.

        ``num_rounds`` is the run's total. A new run starts at round 1, a resumed
        one after its checkpoint's round (:meth:`resume`). Flower's
        ``Strategy.start`` always counts from 1: rather than copying its loop,
        :class:`~fedsem_app.run.checkpoint.RoundShift` lets it run the rounds that are
        left and hands this strategy the true round numbers (returned Result
        included), then checkpoints each closed round.
        """
        offset = self.first_round - 1
        if offset == 0:
            self.evaluate_round_zero(grid, initial_arrays, timeout, evaluate_config)
        rounds: Strategy = self
        if self.app.dp.enabled:
            from fedsem_app.strategies.dp import wrap

            # Flower's DP wrapper sits in the round loop only (round 0 releases nothing).
            num_clients = len(self.train_nodes(grid))
            rounds = wrap(self, self.app.dp, num_clients)
        shifted = RoundShift(rounds, offset, self.save_checkpoint)
        if evaluate_fn is not None:
            unshifted = evaluate_fn

            def evaluate_fn(server_round, arrays):
                return unshifted(server_round + offset, arrays)

        result = shifted.start(
            grid,
            initial_arrays,
            num_rounds - offset,
            timeout,
            train_config,
            evaluate_config,
            evaluate_fn,
        )
        return shift_result(result, offset)
