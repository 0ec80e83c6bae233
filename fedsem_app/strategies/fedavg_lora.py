"""FedAvg-LoRA: federated averaging of the LoRA adapters of one shared base model.

Runs on the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsem_app import protocol as p
from fedsem_app.clients import clear_client_cache, load_client
from fedsem_app.config.app import AppConfig
from fedsem_app.data.split import DataSplit
from fedsem_app.quantize import (
    QuantizeError,
    adapter_record,
    decode_record,
    encode_record,
    is_quantized,
)
from fedsem_app.run.results import RunLog
from fedsem_app.strategies import register_strategy
from fedsem_app.strategies.aggregation import aggregator
from fedsem_app.strategies.harness import AppStrategy, Combined, Vetted
from fedsem_app.strategies.validation import Layout, adapter_layout, adapter_problem


@register_strategy("fedavg-lora")
class FedAvgLora(AppStrategy):
    """FedAvg over the LoRA adapters of one base model shared by every client.

    The server builds the fresh global adapter from the configured model (every
    client starts from the same one: the initial adapter depends only on model,
    LoRA settings and seed). Each round the sampled clients load the global
    adapter, fine-tune it on their private data and send it back; the server
    averages the adapters weighted by the clients' private-data sizes
    (Flower's FedAvg). Evaluation sends the new global adapter to the clients,
    which score it on the shared test prompts. Mixed base models are refused.

    Wire contract (see :mod:`fedsem_app.protocol`)
    -----------------------------------------------
    Train message to the client:
        ``config`` ConfigRecord with ``server-round`` and ``return-adapter`` (true);
        ``adapter`` ArrayRecord holding the global LoRA adapter (tensor name ->
        float32 array), to load before training; with ``aggregation.quantize`` the
        config also carries ``quantize`` / ``quantize-scales`` and every tensor comes
        as a quantized Array (:mod:`fedsem_app.quantize`), to decode first.
    The client must reply with:
        ``adapter`` ArrayRecord with the same tensor names, shapes and dtypes
        (quantized as the config asks, if it asks; decoded by the server),
        finite values, and no other ArrayRecord; ``metrics`` MetricRecord with
        ``num-examples`` (its private-data size, the averaging weight) and
        ``train-loss``; ``info`` ConfigRecord with ``model-name``.
    Evaluate message to the client:
        ``config`` ConfigRecord with ``server-round``; ``adapter`` (the global
        adapter to evaluate); ``test`` ConfigRecord with ``ids``, ``prompts``, ``texts``.

    Parameters
    ----------
    app, split, run_log
        See :class:`~fedsem_app.strategies.harness.AppStrategy`.
    """

    needs_shared_model = True
    supports_dp = True

    def __init__(self, app: AppConfig, split: DataSplit, run_log: RunLog, **sampling: Any) -> None:
        super().__init__(app, split, run_log, **sampling)
        self._layout: Layout = {}
        # Flower's strategy of aggregation.rule combines the adapters (FedAvg's mean,
        # FedMedian, FedTrimmedAvg); self.flower samples and sends.
        self.aggregator = aggregator(app.aggregation, **self.flower_arguments(**sampling))

    def initial_arrays(self) -> ArrayRecord:
        """The fresh global adapter, built from the shared model on the server's CPU."""
        client = load_client(
            self.app.model.names[0],
            self.app.lora,
            device="cpu",
            cache_dir=self.app.model.cache_path,
            template=self.app.model.template,
            seed=self.app.seed,
        )
        client.set_adapter(None)  # the fresh adapter, even if this process trained the model
        state = client.adapter_state()
        # The server needs the model only for this adapter; free its weights.
        clear_client_cache()
        arrays = adapter_record(state)
        log(
            INFO,
            "%s: global LoRA adapter of %s: %d tensors, %d parameters (%.2f MB)",
            self.name,
            self.app.model.names[0],
            len(state),
            sum(v.size for v in state.values()),
            sum(v.nbytes for v in state.values()) / 1e6,
        )
        return arrays

    def on_the_wire(self, arrays: ArrayRecord) -> ArrayRecord:
        """The global adapter as it is sent: itself, or quantized (``aggregation.quantize``)."""
        cfg = self.app.aggregation
        if cfg.quantize == "none" or len(arrays) == 0:
            return arrays
        return encode_record(decode_record(arrays), cfg.quantize, cfg.quantize_scales)

    def train_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask for the trained adapter back; Flower sends the global one under ``adapter``.

        With ``aggregation.quantize`` the global adapter goes out quantized and the
        request asks the client to quantize its reply the same way.
        """
        cfg = self.app.aggregation
        request = p.TrainRequest(
            return_adapter=True, quantize=cfg.quantize, quantize_scales=cfg.quantize_scales
        )
        config.update(request.to_config())
        self._layout = adapter_layout(arrays)
        return super().train_messages(server_round, self.on_the_wire(arrays), config, grid)

    def evaluate_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluate the global adapter as the clients receive it (quantized if configured)."""
        return super().evaluate_messages(server_round, self.on_the_wire(arrays), config, grid)

    def combine(self, server_round: int, vetted: list[Vetted]) -> Combined:
        """Flower's strategy of ``aggregation.rule``, or an equal-weight mean under DP."""
        replies = [msg for msg, _ in vetted]
        if not self.app.dp.enabled:
            return Combined(arrays=self.aggregator.aggregate_train(server_round, replies)[0])
        # DP's noise is calibrated to one client's share of an equal-weight mean
        # (clipping norm / clients): weighting by examples would let a large client move
        # the mean further than the noise covers. Flower has no unweighted mean strategy.
        adapters = [decode_record(msg.content[p.ADAPTER]) for msg in replies]
        combined = {
            k: np.mean(np.stack([a[k] for a in adapters]), axis=0).astype(first.dtype)
            for k, first in adapters[0].items()
        }
        return Combined(arrays=adapter_record(combined))

    def round_extras(self, server_round: int) -> dict[str, Any]:
        """With DP: epsilon of this round and after every round so far (``dp-epsilon``)."""
        if not self.app.dp.enabled:
            return {}
        from fedsem_app.strategies.dp import round_metrics

        return round_metrics(self.app.dp, server_round)

    def privacy_summary(self) -> dict[str, Any]:
        """With DP: its settings and the total epsilon over the run's rounds."""
        dp = self.app.dp
        if not dp.enabled:
            return {}
        from fedsem_app.strategies.dp import epsilon

        return {
            "dp": {
                "noise-multiplier": dp.noise_multiplier,
                "clipping-norm": dp.clipping_norm,
                "clip-side": dp.clip_side,
                "delta": dp.delta,
                "rounds": self.app.num_server_rounds,
                "epsilon": epsilon(dp.noise_multiplier, self.app.num_server_rounds, dp.delta),
                "accountant": "dp-accounting RDP, Gaussian, no sampling, add-or-remove-one client",
            }
        }

    def vet(self, server_round: int, message: Message) -> tuple[None, str | None]:
        """Decode a quantized adapter, then accept it only if it matches the global one.

        The decoded float32 adapter replaces the wire one in the reply, so that what
        is averaged (and what the byte meter counted before) are each the real thing.
        """
        record = message.content.get(p.ADAPTER)
        if isinstance(record, ArrayRecord) and is_quantized(record):
            try:
                message.content[p.ADAPTER] = adapter_record(decode_record(record))
            except QuantizeError as err:
                return None, str(err)
        return None, adapter_problem(message.content, self._layout)

    def summary(self) -> None:
        """Log the strategy's settings."""
        log(
            INFO,
            "\t├── aggregation: LoRA adapters of %s, %s",
            self.app.model.names[0],
            f"mean weighted by {p.NUM_EXAMPLES}"
            if self.app.aggregation.rule == "mean"
            else f"unweighted {self.app.aggregation.rule}",
        )
        super().summary()
