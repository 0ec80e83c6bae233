"""FedProx-LoRA: FedAvg over LoRA adapters with FedProx's proximal term on the clients.

Runs on the server.
"""

from __future__ import annotations

from logging import INFO
from typing import Any

from flwr.common.logger import log
from flwr.serverapp.strategy import FedProx

from fedsem_app.strategies import register_strategy
from fedsem_app.strategies.fedavg_lora import FedAvgLora


@register_strategy("fedprox-lora")
class FedProxLora(FedAvgLora):
    """FedProx (Li et al., MLSys 2020) over the LoRA adapters of one shared base model.

    The server side is FedAvg-LoRA with Flower's own
    :class:`~flwr.serverapp.strategy.FedProx` sending the messages: every train
    message also carries ``proximal-mu`` (``fedprox.proximal-mu``), and the client
    adds ``mu / 2 * ||w - w_global||^2`` over its adapter weights to the training
    loss, which keeps non-IID clients from drifting far from the global adapter.
    With ``mu = 0`` it is ``fedavg-lora``.

    Wire contract (see :mod:`fedsem_app.protocol`)
    -----------------------------------------------
    As :class:`~fedsem_app.strategies.fedavg_lora.FedAvgLora`, plus ``proximal-mu``
    (float) in the ``config`` ConfigRecord of train messages.

    Parameters
    ----------
    app, split, run_log
        See :class:`~fedsem_app.strategies.harness.AppStrategy`.
    """

    def flower_strategy(self, **arguments: Any) -> FedProx:
        """Flower's FedProx: FedAvg's messages plus ``proximal-mu`` in every train config."""
        return FedProx(proximal_mu=self.app.fedprox.proximal_mu, **arguments)

    def summary(self) -> None:
        """Log the strategy's settings."""
        log(INFO, "\t├── FedProx: proximal-mu %g", self.app.fedprox.proximal_mu)
        super().summary()
