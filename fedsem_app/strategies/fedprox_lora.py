"""FedProx-LoRA: FedAvg over LoRA adapters with FedProx's proximal term on the clients.

Runs on the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsem_app import protocol as p
from fedsem_app.strategies import register_strategy
from fedsem_app.strategies.fedavg_lora import FedAvgLora


@register_strategy("fedprox-lora")
class FedProxLora(FedAvgLora):
    """FedProx (Li et al., MLSys 2020) over the LoRA adapters of one shared base model.

    The server side is FedAvg-LoRA unchanged; every train message also carries
    ``proximal-mu`` (``fedprox.proximal-mu``, the key Flower's own FedProx
    strategy sends), and the client adds ``mu / 2 * ||w - w_global||^2`` over its
    adapter weights to the training loss, which keeps non-IID clients from
    drifting far from the global adapter. With ``mu = 0`` it is ``fedavg-lora``.

    Wire contract (see :mod:`fedsem_app.protocol`)
    -----------------------------------------------
    As :class:`~fedsem_app.strategies.fedavg_lora.FedAvgLora`, plus ``proximal-mu``
    (float) in the ``config`` ConfigRecord of train messages.

    Parameters
    ----------
    app, split, run_log
        See :class:`~fedsem_app.strategies.harness.AppStrategy`.
    """

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg-LoRA's train messages with the proximal term's weight."""
        config[p.PROXIMAL_MU] = self.app.fedprox.proximal_mu
        return super().configure_train(server_round, arrays, config, grid)

    def summary(self) -> None:
        """Log the strategy's settings."""
        log(INFO, "\t├── FedProx: proximal-mu %g", self.app.fedprox.proximal_mu)
        super().summary()
