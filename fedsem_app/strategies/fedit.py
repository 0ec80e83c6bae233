"""FedIT: Federated Instruction Tuning (Zhang et al., arXiv 2305.05644, "Shepherd").

Runs on the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any, ClassVar

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsem_app import protocol as p
from fedsem_app.config.app import AppConfig
from fedsem_app.strategies import register_strategy
from fedsem_app.strategies.fedavg_lora import FedAvgLora


@register_strategy("fedit")
class FedIT(FedAvgLora):
    """Federated Instruction Tuning: FedAvg over LoRA with Alpaca prompts and client sampling.

    FedIT ("Towards Building the Federated GPT: Federated Instruction Tuning",
    Zhang et al. 2023, reference code "Shepherd") instruction-tunes one shared
    LLM: each round a random subset of clients fine-tunes the global LoRA
    adapter on its own instructions, formatted with the Alpaca template, and the
    server averages the adapters weighted by local data size (FedAvg).

    Differences from ``fedavg-lora`` (everything else is identical, for a fair
    comparison: model, LoRA rank/alpha/dropout, local steps, batch size, learning
    rate, data split, evaluation, byte meter):

    - Prompt template: ``alpaca`` (Shepherd's ``prompt_template_name``), sent to
      the clients in every train and evaluate message, whatever ``model.template``
      says; training and evaluation use the same prompts.
    - Partial participation: each round samples ``fedit.fraction-train`` of the
      connected clients at random (default 0.1, Shepherd's
      ``client_selection_frac``), but at least ``min-clients``; ``fedavg-lora``
      trains all of them. Evaluation still covers every client.

    Shared with ``fedavg-lora``: adapters averaged weighted by local data size
    (as in the paper), loss on the response tokens only (Shepherd's script can
    also train on the prompt, ``train_on_inputs``), LoRA on all attention
    projections (the app's default targets; Shepherd's script defaults to
    ``q_proj`` only). Not taken from Shepherd, to keep the comparison fair: its
    LoRA rank 16 / alpha 16 (``lora.*`` is shared) and its local epochs
    (``train.local-steps`` is shared).

    Wire contract (see :mod:`fedsem_app.protocol`)
    -----------------------------------------------
    As :class:`~fedsem_app.strategies.fedavg_lora.FedAvgLora`, plus:
    ``config`` ConfigRecord of train and evaluate messages carries ``template``
    (``"alpaca"``); the client must build its prompts with that template.

    Parameters
    ----------
    app, split, run_log
        See :class:`~fedsem_app.strategies.harness.AppStrategy`.
    """

    template: ClassVar[str] = "alpaca"
    # A random share of clients a round: fixed-size DP accounting does not fit it.
    supports_dp: ClassVar[bool] = False

    def __init__(self, app: AppConfig, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("fraction_train", app.fedit.fraction_train)
        super().__init__(app, *args, **kwargs)

    def train_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg-LoRA's train messages on a sample of clients, with the Alpaca template."""
        config.update(p.TrainRequest(template=self.template).to_config())
        return super().train_messages(server_round, arrays, config, grid)

    def evaluate_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluate with the template the adapter was trained with."""
        config.update(p.TrainRequest(template=self.template).to_config())
        return super().evaluate_messages(server_round, arrays, config, grid)

    def summary(self) -> None:
        """Log the strategy's settings."""
        log(
            INFO,
            "\t├── FedIT: template %r, fraction train %.2f",
            self.template,
            self.flower.fraction_train,
        )
        super().summary()
