"""Local: every client fine-tunes on its own data alone; no collaboration.

Runs on the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsem_app import protocol as p
from fedsem_app.strategies import register_strategy
from fedsem_app.strategies.harness import AppStrategy, build_messages


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

    def train_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the round number only (FedAvg would also send an ArrayRecord)."""
        config.update(p.TrainRequest(server_round=server_round).to_config())
        node_ids = self.train_nodes(grid)
        log(INFO, "configure_train: %d nodes train on their own data", len(node_ids))
        return build_messages(RecordDict({p.TRAIN_CONFIG: config}), node_ids, MessageType.TRAIN)

    def evaluate_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the shared test prompts; each client evaluates its own adapter."""
        config[p.ROUND] = server_round
        content = RecordDict({p.TRAIN_CONFIG: config, p.TEST: self._test})
        return build_messages(content, self.evaluate_nodes(grid), MessageType.EVALUATE)
