"""Pooled: the centralised upper bound (NOT federated): one model on all the data.

Runs on the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedsem_app import protocol as p
from fedsem_app.strategies import register_strategy
from fedsem_app.strategies.local import Local

NOT_FEDERATED = (
    "pooled is the centralised upper bound, NOT federated learning: one node trains "
    "on the union of every client's private data"
)


@register_strategy("pooled")
class Pooled(Local):
    """Centralised training on the pooled private data: an upper bound, NOT federated.

    It answers "how good could one model get if all private data sat in one
    place, trained with the federation's compute?" with the same model, trainer
    and evaluation as the federated strategies. One node, the lowest node id
    (kept for the whole run, so its adapter persists in its state between
    rounds), trains every round on the union of all clients' private partitions
    and is the only node evaluated. The other nodes stay idle. Privacy is
    deliberately ignored: never use this mode on data that must stay local.

    Compute is matched to the federation: with N connected nodes, the pooled node
    takes ``N x train.local-steps`` optimizer steps a round at the same batch size,
    so it processes as many examples per round as N clients of ``local`` or
    ``fedavg-lora`` do together (``fedsem`` clients also train on pseudo-labels
    within the same steps).

    Wire contract (see :mod:`fedsem_app.protocol`)
    -----------------------------------------------
    As :class:`~fedsem_app.strategies.local.Local`, sent to one node only, plus
    ``train-data = "all-partitions"`` in the train ``config``: the client trains
    on the whole private pool instead of its partition and reports its size as
    ``num-examples``, and ``local-steps`` (int): the optimizer steps to take.

    Parameters
    ----------
    app, split, run_log
        See :class:`~fedsem_app.strategies.harness.AppStrategy`.
    """

    needs_shared_model = True
    evaluates_every_node = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.node_id: int | None = None

    def connected(self, grid: Grid) -> list[int]:
        """Connected node ids, once at least min-clients are connected."""
        # sample_nodes with a sample size of 0 only waits for min-clients nodes to connect.
        return sample_nodes(grid, self.flower.min_available_nodes, 0)[1]

    def pooled_node(self, grid: Grid) -> int:
        """The node that holds the pooled model: the lowest id, kept while it is connected."""
        connected = self.connected(grid)
        if self.node_id not in connected:
            if self.node_id is not None:
                log(
                    WARNING,
                    "pooled: node %d left; node %d takes over with a fresh adapter",
                    self.node_id,
                    min(connected),
                )
            self.node_id = min(connected)
        return self.node_id

    def train_nodes(self, grid: Grid) -> list[int]:
        """The pooled node only."""
        return [self.pooled_node(grid)]

    def evaluate_nodes(self, grid: Grid) -> list[int]:
        """The pooled node only."""
        return [self.pooled_node(grid)]

    def train_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask the pooled node to train on every partition with the federation's steps."""
        steps = self.app.train.local_steps * len(self.connected(grid))
        config.update(p.TrainRequest(train_data=p.ALL_PARTITIONS, local_steps=steps).to_config())
        messages = super().train_messages(server_round, arrays, config, grid)
        log(WARNING, "%s (node %d)", NOT_FEDERATED, self.node_id)
        return messages

    def summary(self) -> None:
        """Say loudly that this run is not federated."""
        log(WARNING, "\t├── %s", NOT_FEDERATED)
        log(INFO, "\t├── strategy: %s (%s)", self.name, type(self).__name__)
        log(INFO, "\t└── test prompts: %d", len(self._test[p.IDS]))
