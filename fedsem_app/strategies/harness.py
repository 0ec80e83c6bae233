"""The round pipeline every strategy of the app runs, and its shared evaluation.

Runs on the server.

:class:`AppStrategy` is a Flower :class:`~flwr.serverapp.strategy.Strategy` that
composes one of Flower's own strategies (:attr:`AppStrategy.flower`, FedAvg
unless a strategy picks another) for what Flower already does: sampling nodes,
building the train and evaluate messages of the parameter strategies, averaging
adapters and metrics. Around it, each round takes the same steps for every
strategy, written once here:

1. ``configure_train``: open the round's row in the run log, then the strategy's
   :meth:`AppStrategy.train_messages`.
2. ``aggregate_train``: drop error replies and replies without finite metrics
   (logged with their node), let the strategy :meth:`AppStrategy.vet` each reply
   that is left, check that enough remain, let the strategy
   :meth:`AppStrategy.combine` them, and record the metrics.
3. ``configure_evaluate`` / ``aggregate_evaluate``: on the rounds ``eval.every``
   evaluates, the strategy's :meth:`AppStrategy.evaluate_messages` with the same
   held-out test prompts in every one and the same checks; on the others no
   message at all and a row that says ``evaluated: false``. Then the round's row
   is closed.

A strategy supplies only what differs: what it sends, how it vets a reply and
how it combines the vetted ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, ClassVar

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedsem_app import protocol as p
from fedsem_app.config.app import AppConfig
from fedsem_app.data.split import DataSplit
from fedsem_app.run.intervals import quality_intervals
from fedsem_app.run.results import EVALUATED, RunLog, client_rows, prompt_score_rows
from fedsem_app.spec.apply import log_node_check
from fedsem_app.strategies.resume import ResumableStrategy
from fedsem_app.strategies.validation import check_metrics, reply_error, set_aside_unshared
from fedsem_app.wire import pack_texts

EVAL_METRICS = (p.NUM_EXAMPLES, p.ROUGE_L, p.EMBED_SIM, p.NLL)
TRAIN_METRICS = (p.NUM_EXAMPLES, p.TRAIN_LOSS)

# A reply that passed a strategy's vetting, with what the strategy read from it
# (FedSem: the aligned answers; None where the reply itself is all it needs).
Vetted = tuple[Message, Any]


@dataclass
class Combined:
    """What a strategy's :meth:`~AppStrategy.combine` gives back to the round pipeline.

    Attributes
    ----------
    arrays
        The new global arrays, or None (text strategies, or nothing to combine).
    extra
        Columns added to the round's row (e.g. FedSem's consensus statistics).
    per_client
        Server-side numbers added to each client's row, by node id (pick-share).
    """

    arrays: ArrayRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    per_client: dict[int, dict[str, Any]] = field(default_factory=dict)


def qa_record(pairs: Iterable[Any], with_answers: bool = True, codec: str = "none") -> ConfigRecord:
    """Pack QA pairs as parallel lists (ConfigRecords hold same-type lists only).

    ``codec`` (see :mod:`fedsem_app.wire`) compresses the prompts and answers.
    """
    pairs = list(pairs)
    record = ConfigRecord(
        {p.IDS: [q.id for q in pairs], **pack_texts(p.PROMPTS, [q.prompt for q in pairs], codec)}
    )
    if with_answers:
        record.update(pack_texts(p.TEXTS, [q.answer for q in pairs], codec))
    return record


def test_record(split: DataSplit, num_prompts: int = 0) -> ConfigRecord:
    """The held-out test prompts with their references, as every evaluate message sends them.

    Where the test rows carry short values (the facts data), the record also holds
    each prompt's value, fact id and whether a public prompt asks the same fact,
    so clients can score ``fact-accuracy`` on covered and uncovered facts.

    Parameters
    ----------
    split
        The run's split.
    num_prompts
        The first this many test prompts (``eval.num-prompts``); 0 for all.
    """
    test = split.test[: num_prompts or None]
    record = qa_record(test)
    if any(q.value for q in test):
        record[p.VALUES] = [q.value for q in test]
    if any(q.value for q in test) and any(q.fact for q in test):
        # Without fact ids nothing is known about coverage or ownership: no subsets.
        record[p.FACTS] = [q.fact for q in test]
        record[p.COVERED] = split.covered()[: len(test)]
    return record


def build_messages(
    content: RecordDict, node_ids: Iterable[int], message_type: str
) -> list[Message]:
    """One message of ``message_type`` per node, all carrying the same content."""
    return [Message(content=content, dst_node_id=n, message_type=message_type) for n in node_ids]


class AppStrategy(ResumableStrategy):
    """The app's round pipeline around one of Flower's strategies.

    Parameters
    ----------
    app
        The validated run configuration.
    split
        The server's view of the data: test prompts and public prompts.
    run_log
        Where per-round rows go.
    **sampling
        Overrides of the Flower strategy's arguments (``fraction_train`` ...);
        by default they come from the run config.

    Notes
    -----
    :func:`~fedsem_app.strategies.register_strategy` sets :attr:`name`. Subclasses
    that average adapters set ``needs_shared_model = True`` (the server then refuses
    mixed models); ``evaluates_every_node = False`` where one node stands for the
    federation.
    """

    name: ClassVar[str] = ""
    needs_shared_model: ClassVar[bool] = False
    evaluates_every_node: ClassVar[bool] = True
    supports_dp: ClassVar[bool] = False  # dp.noise-multiplier > 0 allowed (strategies.dp)
    # Sends the split's public prompts to answer: the server refuses data without any.
    uses_public_prompts: ClassVar[bool] = False
    # The client names of a federation spec: round 0 checks the nodes against them.
    expected_clients: tuple[str, ...] = ()

    def __init__(self, app: AppConfig, split: DataSplit, run_log: RunLog, **sampling: Any) -> None:
        self.app = app
        self.split = split
        self.run_log = run_log
        self.flower = self.flower_strategy(**self.flower_arguments(**sampling))
        self._test = test_record(split, app.eval.num_prompts)
        self.first_round = 1  # a resumed run starts after its checkpoint's round

    # --- the Flower strategy this one composes ----------------------------------------
    def flower_arguments(self, **overrides: Any) -> dict[str, Any]:
        """Arguments of every Flower strategy built here: record keys and sampling.

        Flower samples the nodes of every round: a fraction of the connected ones,
        but at least the floor (``min-train-nodes``, else ``min-clients``).
        """
        app = self.app
        return {
            "weighted_by_key": p.NUM_EXAMPLES,
            "arrayrecord_key": p.ADAPTER,
            "configrecord_key": p.TRAIN_CONFIG,
            "fraction_train": app.fraction_train,
            "fraction_evaluate": app.fraction_evaluate,
            "min_train_nodes": app.train_floor,
            "min_evaluate_nodes": app.evaluate_floor,
            "min_available_nodes": max(app.min_clients, app.train_floor, app.evaluate_floor),
            **overrides,
        }

    def flower_strategy(self, **arguments: Any) -> FedAvg:
        """The Flower strategy that samples, builds messages and averages (FedAvg here)."""
        return FedAvg(**arguments)

    # --- helpers for subclasses ----------------------------------------------------
    def sample(self, grid: Grid, fraction: float, minimum: int) -> list[int]:
        """Sample node ids as FedAvg does (fraction of connected nodes, at least ``minimum``)."""
        num_nodes = int(len(list(grid.get_node_ids())) * fraction)
        node_ids, _ = sample_nodes(grid, self.flower.min_available_nodes, max(num_nodes, minimum))
        return node_ids

    def train_nodes(self, grid: Grid) -> list[int]:
        """Nodes that train this round: a FedAvg-style sample (all by default)."""
        return self.sample(grid, self.flower.fraction_train, self.flower.min_train_nodes)

    def evaluate_nodes(self, grid: Grid) -> list[int]:
        """Nodes evaluated this round: a FedAvg-style sample (all by default)."""
        return self.sample(grid, self.flower.fraction_evaluate, self.flower.min_evaluate_nodes)

    @staticmethod
    def drop(server_round: int, phase: str, message: Message, reason: str) -> None:
        """Log a reply the round cannot use, with its node and why."""
        log(
            WARNING,
            "round %d %s: dropped reply of node %d: %s",
            server_round,
            phase,
            message.metadata.src_node_id,
            reason,
        )

    def usable(
        self, server_round: int, replies: Iterable[Message], phase: str, required: Iterable[str]
    ) -> tuple[list[Message], int]:
        """Keep replies that carry no error and finite metrics; log each drop with its node.

        Returns
        -------
        tuple
            The usable replies, sorted by node id, and the number dropped.
        """
        required = tuple(required)
        kept: list[Message] = []
        dropped = 0
        # Node order, not arrival order: ties (e.g. a medoid of two answers) and float
        # sums then come out the same however the replies arrived.
        for msg in sorted(replies, key=lambda m: m.metadata.src_node_id):
            reason = reply_error(msg) or check_metrics(msg.content, required)
            if reason:
                dropped += 1
                self.drop(server_round, phase, msg, reason)
            else:
                kept.append(msg)
        return kept, dropped

    @staticmethod
    def set_aside(server_round: int, phase: str, replies: list[Message]) -> dict[int, dict]:
        """Metrics only some replies carry, taken out of the average (see validation)."""
        aside = set_aside_unshared(replies)
        if aside:
            keys = sorted({k for extra in aside.values() for k in extra})
            log(
                INFO,
                "round %d %s: %s reported by %d of %d nodes: kept per node in clients.jsonl, "
                "not averaged",
                server_round,
                phase,
                ", ".join(keys),
                len(aside),
                len(replies),
            )
        return aside

    def enough(self, server_round: int, phase: str, n_usable: int) -> bool:
        """Whether at least ``min-clients`` usable replies arrived; log clearly if not."""
        if n_usable >= self.app.min_clients:
            return True
        log(
            WARNING,
            "round %d %s: only %d usable replies, fewer than min-clients=%d; "
            "this round makes no update (lower min-clients or check the client logs above)",
            server_round,
            phase,
            n_usable,
            self.app.min_clients,
        )
        return False

    def record_train(
        self,
        server_round: int,
        replies: list[Message],
        dropped: int,
        extra: dict[str, Any],
        per_client: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> MetricRecord | None:
        """Average train metrics, log per-client rows and merge into the round row.

        ``per_client`` adds server-side numbers (e.g. FedSem's pick-share) to the
        client rows, by node id.
        """
        rows = client_rows(replies)
        for row in rows:
            row.update((per_client or {}).get(row["node"], {}))
        self.run_log.add_clients(server_round, "train", rows)
        metrics = (
            self.flower.train_metrics_aggr_fn([m.content for m in replies], p.NUM_EXAMPLES)
            if replies
            else MetricRecord()
        )
        for key in (p.TRAIN_SECONDS, p.GENERATE_SECONDS):
            # Clients run in parallel in deployment: the slowest one bounds the round.
            values = [r[key] for r in rows if key in r]
            if values:
                metrics[f"max-{key}"] = max(values)
        metrics.update({"train-replies": len(replies), "dropped-replies": dropped, **extra})
        self.run_log.add(
            server_round,
            {k: v for k, v in metrics.items() if k not in (p.TRAIN_SECONDS, p.GENERATE_SECONDS)},
        )
        return metrics

    def initial_arrays(self) -> ArrayRecord:
        """Arrays to start from: none for text strategies; parameter ones override."""
        return ArrayRecord()

    def evaluate_round_zero(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        timeout: float,
        config: ConfigRecord | None = None,
    ) -> None:
        """Evaluate the untrained models (round 0): the baseline every gain is measured from.

        The same evaluate messages as every later round, before any training: the
        fresh global adapter for the parameter strategies, each client's fresh
        adapter otherwise.
        """
        self.run_log.start_round(0)
        config = ConfigRecord(dict(config)) if config is not None else ConfigRecord()
        messages = list(self.configure_evaluate(0, arrays, config, grid))
        names = self.app.model.names
        connected = len(list(grid.get_node_ids()))
        if connected < len(names) and self.evaluates_every_node and not self.expected_clients:
            log(
                WARNING,
                "model.names lists %d clients (%s) but only %d nodes take part: the last %d "
                "entries get no client. In simulation run one SuperNode per entry: "
                'flwr run . --federation-config "num-supernodes=%d"',
                len(names),
                ",".join(names),
                connected,
                len(names) - connected,
                len(names),
            )
        replies = list(grid.send_and_receive(messages=messages, timeout=timeout))
        # With evaluation sampled, round 0 reaches only some nodes: nothing to check.
        if self.expected_clients and self.evaluates_every_node and self.app.fraction_evaluate >= 1:
            log_node_check(self.expected_clients, replies)
        self.aggregate_evaluate(0, replies)

    def evaluates(self, server_round: int) -> bool:
        """Whether ``eval.every`` evaluates this round (round 0 and the last always)."""
        return self.app.eval.evaluates(server_round, self.app.num_server_rounds)

    # --- what a strategy supplies ----------------------------------------------------
    def train_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The round's train messages: Flower's (sampled nodes, arrays and config)."""
        return self.flower.configure_train(server_round, arrays, config, grid)

    def evaluate_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's evaluate messages plus the shared held-out test prompts."""
        messages = list(self.flower.configure_evaluate(server_round, arrays, config, grid))
        for msg in messages:
            msg.content[p.TEST] = self._test
            # Text strategies: no adapter, not even an empty record (messages may share
            # one content, so check before deleting).
            if len(arrays) == 0 and p.ADAPTER in msg.content:
                del msg.content[p.ADAPTER]
        return messages

    def vet(self, server_round: int, message: Message) -> tuple[Any, str | None]:
        """Check a usable train reply: what the strategy reads from it, or why it cannot.

        Returns
        -------
        tuple
            ``(payload, None)`` for a reply to combine (the payload is passed on
            to :meth:`combine`), ``(None, reason)`` for one to drop.
        """
        return None, None

    def combine(self, server_round: int, vetted: list[Vetted]) -> Combined:
        """Combine the vetted replies of a round (nothing to combine by default)."""
        return Combined()

    def round_extras(self, server_round: int) -> dict[str, Any]:
        """Extra columns of a training round's row (none here; the DP epsilon in FedAvgLora)."""
        return {}

    def privacy_summary(self) -> dict[str, Any]:
        """What ``summary.json`` says about DP (nothing unless the strategy adds noise)."""
        return {}

    # --- Strategy interface: the round pipeline ----------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Open the round's row, then send the strategy's train messages."""
        self.run_log.start_round(server_round)
        return self.train_messages(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Keep the usable replies, vet them, combine them if enough remain, record."""
        t0 = time.perf_counter()
        kept, dropped = self.usable(server_round, replies, "train", TRAIN_METRICS)
        vetted: list[Vetted] = []
        for msg in kept:
            payload, reason = self.vet(server_round, msg)
            if reason is None:
                vetted.append((msg, payload))
            else:
                dropped += 1
                self.drop(server_round, "train", msg, reason)
        aside = self.set_aside(server_round, "train", [m for m, _ in vetted])
        combined = Combined()
        if self.enough(server_round, "train", len(vetted)):
            combined = self.combine(server_round, vetted)
        extra = {
            **combined.extra,
            "server-seconds": time.perf_counter() - t0,
            **self.round_extras(server_round),
        }
        per_client = {
            node: {**aside.get(node, {}), **combined.per_client.get(node, {})}
            for node in aside.keys() | combined.per_client.keys()
        }
        metrics = self.record_train(
            server_round, [m for m, _ in vetted], dropped, extra, per_client
        )
        return combined.arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The strategy's evaluate messages, or none on a round ``eval.every`` skips.

        Flower's round loop asks for evaluate messages every round; sending none
        skips the clients' evaluation (and its cost) without changing the loop.
        """
        if not self.evaluates(server_round):
            log(
                INFO, "round %d: not evaluated (eval.every = %d)", server_round, self.app.eval.every
            )
            return []
        return self.evaluate_messages(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Average evaluation metrics by example count and close the round's row.

        A round that ``eval.every`` skips gets ``evaluated: false`` and no quality
        columns. Each evaluated reply's per-prompt scores go to ``prompt_scores.jsonl``
        (the paired comparisons between strategies resample them).
        """
        if not self.evaluates(server_round):
            self.run_log.add(server_round, {EVALUATED: False})
            self.run_log.close_round(server_round)
            return None
        required = EVAL_METRICS if self.app.eval.generate else (p.NUM_EXAMPLES, p.NLL)
        kept, dropped = self.usable(server_round, replies, "evaluate", required)
        aside = self.set_aside(server_round, "evaluate", kept)
        rows = client_rows(kept)
        for row in rows:
            row.update(aside.get(row["node"], {}))
        self.run_log.add_clients(server_round, "evaluate", rows)
        self.run_log.add_prompt_scores(server_round, prompt_score_rows(kept, self._test[p.IDS]))
        metrics = self.flower.aggregate_evaluate(server_round, kept) if kept else None
        row: dict[str, Any] = {
            EVALUATED: True,
            "eval-replies": len(kept),
            "eval-dropped": dropped,
        }
        if metrics is not None:
            # Per-prompt lists become intervals (and prompt_scores.jsonl); the row and
            # what Flower logs and keeps every round hold numbers only.
            numbers = {k: v for k, v in metrics.items() if not isinstance(v, list)}
            row.update(numbers)
            metrics = MetricRecord(numbers)
            row.update(quality_intervals([dict(m.content[p.METRICS]) for m in kept]))
        self.run_log.add(server_round, row)
        self.run_log.close_round(server_round)
        return metrics

    def summary(self) -> None:
        """Log the strategy's settings."""
        log(INFO, "\t├── strategy: %s (%s)", self.name, type(self).__name__)
        log(
            INFO,
            "\t├── min clients: %d, fraction train: %.2f, fraction evaluate: %.2f",
            self.app.min_clients,
            self.flower.fraction_train,
            self.flower.fraction_evaluate,
        )
        log(
            INFO,
            "\t└── test prompts: %d, evaluated %s",
            len(self._test[p.IDS]),
            "every round"
            if self.app.eval.every == 1
            else f"at round 0, every {self.app.eval.every} rounds and the last",
        )
