"""Local: every client fine-tunes on its own data alone; no collaboration.

Runs on the server.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsem_app import protocol as p
from fedsem_app.strategies import register_strategy
from fedsem_app.strategies.harness import TRAIN_METRICS, AppStrategy


@register_strategy("local")
class Local(AppStrategy):
    """Local training only: the lower bound that collaboration has to beat.

    Each client fine-tunes its own adapter on its own private data, keeps it
    between rounds, and is evaluated with it on the shared test prompts. Nothing
    but the round number, the test prompts and metrics crosses the network: no
    adapter, no public prompts, no pseudo-labels. Clients may run different
    models.

    Wire contract (see :mod:`fedsem_app.protocol`)
    -----------------------------------------------
    Train message to the client:
        ``config`` ConfigRecord with ``server-round`` only.
    The client must reply with:
        ``metrics`` MetricRecord with ``num-examples`` and ``train-loss``;
        ``info`` ConfigRecord with ``model-name``. It keeps its adapter itself.
    Evaluate message to the client:
        ``config`` ConfigRecord with ``server-round``; ``test`` ConfigRecord with
        ``ids``, ``prompts``, ``texts``. The client evaluates its own adapter.

    Parameters
    ----------
    app, split, run_log
        See :class:`~fedsem_app.strategies.harness.AppStrategy`.
    """

    # --- which nodes take part (subclasses pick differently) ---------------------
    def train_nodes(self, grid: Grid) -> list[int]:
        """Nodes that train this round: a FedAvg-style sample (all by default)."""
        return self.sample(grid, self.fraction_train, self.min_train_nodes)

    def evaluate_nodes(self, grid: Grid) -> list[int]:
        """Nodes evaluated this round: a FedAvg-style sample (all by default)."""
        return self.sample(grid, self.fraction_evaluate, self.min_evaluate_nodes)

    # --- Strategy interface ----------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the round number only (FedAvg would also send an ArrayRecord)."""
        self.run_log.start_round(server_round)
        config[p.ROUND] = server_round
        node_ids = self.train_nodes(grid)
        log(INFO, "configure_train: %d nodes train on their own data", len(node_ids))
        content = RecordDict({p.TRAIN_CONFIG: config})
        return self._construct_messages(content, node_ids, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate the replies and record their metrics; there is nothing to aggregate."""
        t0 = time.perf_counter()
        kept, dropped = self.usable(server_round, replies, "train", TRAIN_METRICS)
        metrics = self.record_train(
            server_round, kept, dropped, {"server-seconds": time.perf_counter() - t0}
        )
        return None, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the shared test prompts; each client evaluates its own adapter."""
        config[p.ROUND] = server_round
        content = RecordDict({p.TRAIN_CONFIG: config, p.TEST: self._test})
        return self._construct_messages(content, self.evaluate_nodes(grid), MessageType.EVALUATE)
