"""FedSem: federated fine-tuning by semantic consensus over generated answers.

Runs on the server.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsem_app import protocol as p
from fedsem_app.config.sections import FedSemConfig
from fedsem_app.data.records import QAPair, load_records
from fedsem_app.embedding import embed
from fedsem_app.strategies import register_strategy
from fedsem_app.strategies.consensus import ConsensusResult, consensus, text_key
from fedsem_app.strategies.diagnostics import (
    category_experts,
    expert_metrics,
    label_rouge,
    most_relevant,
    winners,
)
from fedsem_app.strategies.harness import AppStrategy, Combined, Vetted, build_messages, qa_record
from fedsem_app.strategies.support import support_labels
from fedsem_app.strategies.validation import ValidAnswers, check_answers


def public_slice(public: Sequence[QAPair], server_round: int, budget: int) -> list[QAPair]:
    """The round's public prompts: consecutive windows that wrap around the public set."""
    start = (server_round - 1) * budget
    return [public[(start + i) % len(public)] for i in range(min(budget, len(public)))]


def answer_grid(
    answers: Sequence[ValidAnswers],
) -> tuple[list[list[str]], np.ndarray, np.ndarray, np.ndarray]:
    """Stack K clients' answers into prompt-major (P x K) texts, mask, confidences, finished."""
    texts = [list(col) for col in zip(*(a.texts for a in answers), strict=True)]
    mask = np.stack([a.valid for a in answers], axis=1)
    confidences = np.stack([a.confidences for a in answers], axis=1)
    finished = np.stack([a.finished for a in answers], axis=1)
    return texts, mask, confidences, finished


def relevance_grid(answers: Sequence[ValidAnswers]) -> np.ndarray:
    """The clients' relevance scores as a prompt-major (P, K) array, NaN = no score."""
    if not answers:
        return np.zeros((0, 0))
    return np.stack([a.relevance for a in answers], axis=1).astype(np.float64)


def standardise_relevance(relevance: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each client's relevance scores as z-scores over the round's prompts.

    Per client (column): subtract the mean and divide by the standard deviation of
    its finite scores on valid answers. A client's scores then say which prompts
    are more its topic than its others, on one scale for every client: an offset
    that raises all of a client's scores (an adapter that raises every likelihood
    under ``lift``) cancels, and a client that claims the same score everywhere
    (fewer than two scores, or no spread) has no score at all (NaN). Whatever a
    client sends, its z-scores have mean 0 and variance 1, so it can claim
    ``z >= t`` on at most ``P / t**2`` of the round's P prompts.

    Parameters
    ----------
    relevance
        ``(P, K)`` scores, NaN = no score.
    mask
        ``(P, K)`` valid answers (only their scores count).

    Returns
    -------
    np.ndarray
        ``(P, K)`` float64 z-scores, NaN where there is none.
    """
    scored = mask & np.isfinite(relevance)
    values = np.where(scored, relevance, np.nan)
    count = scored.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(np.where(scored, values, 0.0), axis=0) / np.maximum(count, 1)
        centred = np.where(scored, values - mean, 0.0)
        std = np.sqrt((centred**2).sum(axis=0) / np.maximum(count, 1))
        spread = (count >= 2) & (std > 1e-12 * np.maximum(1.0, np.abs(mean)))
        z = centred / np.where(spread, std, 1.0)
    return np.where(scored & spread, z, np.nan)


def knows_best(
    texts: list[list[str]], index: np.ndarray, relevance: np.ndarray, mask: np.ndarray
) -> list[set[int]]:
    """Per prompt, the clients that know its label best: its winners and its most relevant.

    A winner is every client whose answer is word for word the chosen text; the most
    relevant are the valid answers with the prompt's highest finite relevance (all
    of them where several tie). Selective transfer does not send these clients the label.

    Parameters
    ----------
    texts
        P x K answer texts.
    index
        ``(P,)`` chosen answer per prompt, -1 where no label was given (empty set).
    relevance
        ``(P, K)`` relevance scores, NaN = no score.
    mask
        ``(P, K)`` valid answers.

    Returns
    -------
    list[set[int]]
        Client (column) indices per prompt.
    """
    won = winners(texts, index)
    top = most_relevant(relevance, mask)
    return [w | t if w else set() for w, t in zip(won, top, strict=True)]


def pick_shares(texts: list[list[str]], index: np.ndarray) -> np.ndarray:
    """How many of the labelled prompts each client's answer won, as shares of them.

    A prompt whose chosen text several clients gave word for word credits each of
    them equally (the choice among identical texts is arbitrary).

    Parameters
    ----------
    texts
        P x K answer texts.
    index
        ``(P,)`` chosen answer per prompt, -1 where no label was given.

    Returns
    -------
    np.ndarray
        ``(K,)`` shares that sum to 1 over the labelled prompts (all 0 without any).
    """
    num_clients = len(texts[0]) if texts else 0
    credit = np.zeros(num_clients)
    labelled = [i for i in range(len(texts)) if index[i] >= 0]
    for i in labelled:
        chosen = texts[i][index[i]]
        winners = [k for k in range(num_clients) if texts[i][k] == chosen]
        credit[winners] += 1.0 / len(winners)
    return credit / len(labelled) if labelled else credit


def embed_grid(
    texts: list[list[str]], mask: np.ndarray, embedder: str, device: str = "cpu"
) -> torch.Tensor:
    """Embed every valid answer in one batched call into a (P, K, D) tensor (zeros elsewhere)."""
    flat = [texts[i][k] for i, k in zip(*np.nonzero(mask), strict=True)]
    vectors = embed(flat, embedder, device)
    grid = np.zeros((*mask.shape, vectors.shape[1]), dtype=np.float32)
    grid[mask] = vectors  # np.nonzero and boolean indexing share row-major order
    return torch.from_numpy(grid)


# Answers embedded and voted on at a time. The server then holds at most this many
# embeddings (8192 x 384 float32 = 12.6 MB, and the consensus' float64 copies of
# them), not K x P x dim for the whole round: 805 MB at 128 clients x 4096 prompts.
VOTE_CHUNK_TEXTS = 8192


def vote_in_chunks(
    texts: list[list[str]],
    mask: np.ndarray,
    confidences: np.ndarray,
    cfg: FedSemConfig,
    *,
    chunk_texts: int = VOTE_CHUNK_TEXTS,
    embed_fn=embed_grid,
    relevance: np.ndarray | None = None,
) -> tuple[ConsensusResult, float, float]:
    """Embed the answers and pick each prompt's consensus, a block of whole prompts at a time.

    Every rule scores each prompt's answers among themselves, so voting block by block
    chooses what one call over all prompts would, while memory stays bounded by
    ``chunk_texts`` answers (at least one prompt's worth) instead of growing with P x K.

    Parameters
    ----------
    texts, mask, confidences
        The round's answers as from :func:`answer_grid`: P x K texts, (P, K) validity
        and (P, K) confidences.
    cfg
        Embedder, consensus rule and its options.
    chunk_texts
        Answers per block; a block holds ``max(1, chunk_texts // K)`` prompts.
    embed_fn
        ``fn(texts, mask, embedder) -> (P, K, D)`` tensor; :func:`embed_grid` by default.
    relevance
        ``(P, K)`` relevance scores (NaN = no score), for the rules that use them.

    Ties between equal scores go to the more confident answer, then to the answer
    with the higher :func:`~fedsem_app.strategies.consensus.text_key`, never to node order.

    Returns
    -------
    tuple
        The :class:`~fedsem_app.strategies.consensus.ConsensusResult` over all prompts, and the
        seconds spent embedding and voting.

    """
    num_prompts, num_clients = mask.shape
    step = max(1, chunk_texts // max(num_clients, 1))
    parts: list[ConsensusResult] = []
    embed_seconds = consensus_seconds = 0.0
    for start in range(0, max(num_prompts, 1), step):  # one (empty) block without prompts
        rows = slice(start, start + step)
        t0 = time.perf_counter()
        embeddings = embed_fn(texts[rows], mask[rows], cfg.embedder)
        t1 = time.perf_counter()
        parts.append(
            consensus(
                cfg.consensus,
                embeddings,
                torch.from_numpy(mask[rows]),
                confidences=torch.from_numpy(confidences[rows]),
                text_keys=np.array(
                    [[text_key(t) for t in row] for row in texts[rows]], dtype=np.float64
                ).reshape(mask[rows].shape),
                options=cfg.consensus_options,
                min_agreement=cfg.min_agreement,
                relevance=None if relevance is None else torch.from_numpy(relevance[rows]),
            )
        )
        embed_seconds += t1 - t0
        consensus_seconds += time.perf_counter() - t1
    result = ConsensusResult(
        *(
            np.concatenate([getattr(part, field.name) for part in parts])
            for field in dataclasses.fields(ConsensusResult)
        )
    )
    return result, embed_seconds, consensus_seconds


@register_strategy("fedsem")
class FedSem(AppStrategy):
    """Semantic consensus over clients' answers to shared public prompts.

    Each round the server sends the round's public prompts and last round's
    consensus texts (pseudo-labels). Clients fine-tune their own model (any
    architecture) on their private data plus the pseudo-labelled pairs, then
    answer the public prompts. The server embeds the answers in batched calls
    (blocks of whole prompts, at most ``VOTE_CHUNK_TEXTS`` answers each), picks a
    consensus answer per prompt with the configured rule and keeps it as the next
    round's pseudo-label. No parameters cross the network.

    With ``fedsem.label-memory`` the server keeps the latest label of every public
    prompt answered so far and sends all of them; otherwise only last round's.
    With ``fedsem.selective`` a node is not sent the label of a prompt on which its
    own answer won or it sent the highest relevance (:func:`knows_best`): it would
    only train on its own text, or on a text it knows less about than itself.
    With ``fedsem.vote-unfinished`` off, answers that hit the length cap are left
    out of the vote. Each round records the share of answers cut at the cap
    (``truncated-share``) and, per model, the share of labels its clients' answers
    won (``pick-share-<model>``, or ``pick-share-<client>`` by the names of a
    federation spec; per node in ``clients.jsonl``).

    Wire contract (see :mod:`fedsem_app.protocol`)
    -----------------------------------------------
    Train message to the client:
        ``config`` ConfigRecord with ``server-round``; ``public`` ConfigRecord with
        ``ids`` (list[int]) and ``prompts`` (list[str]) to answer; ``pseudo``
        ConfigRecord with ``ids``, ``prompts``, ``texts`` (the pseudo-labels) and
        ``finished`` (list[bool]: False for a label cut at the length cap, to be
        trained on without EOS).
    The client must reply with:
        ``answers`` ConfigRecord with ``ids`` (the ids it was sent, same order),
        ``texts`` (one answer per prompt), ``confidences`` (mean token
        log-prob per answer, finite), optionally ``finished`` (list[bool],
        whether each answer ended with EOS; all True when absent) and optionally
        ``relevance`` (list[float], one score per prompt with ``fedsem.relevance``;
        non-finite = no score); ``metrics`` MetricRecord with
        ``num-examples`` and ``train-loss``; ``info`` ConfigRecord with ``model-name``.

    Parameters
    ----------
    app, split, run_log
        See :class:`~fedsem_app.strategies.harness.AppStrategy`.
    """

    uses_public_prompts = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pseudo_labels: list[QAPair] = []
        self.unfinished: set[int] = set()  # ids of pseudo-labels cut at the length cap
        # Selective transfer: pseudo-label id -> nodes not sent it (they know best there).
        self.withheld: dict[int, set[int]] = {}
        self._references: dict[int, str] | None = None  # fedsem.diagnostics only

    def state_dict(self) -> dict[str, Any]:
        """The pseudo-labels the next round sends (all FedSem carries between rounds)."""
        return {
            "pseudo-labels": [dataclasses.asdict(q) for q in self.pseudo_labels],
            "unfinished": sorted(self.unfinished),
            # Only with fedsem.selective: pseudo-label id -> nodes not sent it.
            **(
                {"withheld": {str(k): sorted(v) for k, v in sorted(self.withheld.items())}}
                if self.withheld
                else {}
            ),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the pseudo-labels of :meth:`state_dict`."""
        self.pseudo_labels = [QAPair(**q) for q in state.get("pseudo-labels", [])]
        self.unfinished = set(state.get("unfinished", []))
        self.withheld = {int(k): set(v) for k, v in state.get("withheld", {}).items()}

    def round_prompts(self, server_round: int) -> list[QAPair]:
        """The public prompts of a round (a function of the round, so nothing to keep)."""
        return public_slice(self.split.public, server_round, self.app.fedsem.prompts_per_round)

    def train_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the round's public prompts and the previous round's pseudo-labels."""
        prompts = self.round_prompts(server_round)
        node_ids = self.train_nodes(grid)
        log(
            INFO,
            "configure_train: %d nodes, %d public prompts, %d pseudo-labels",
            len(node_ids),
            len(prompts),
            len(self.pseudo_labels),
        )
        config.update(p.TrainRequest(server_round=server_round).to_config())
        codec = self.app.fedsem.wire_compression
        public = qa_record(prompts, with_answers=False, codec=codec)

        def content(labels: list[QAPair]) -> RecordDict:
            pseudo = qa_record(labels, codec=codec)
            pseudo[p.FINISHED] = [q.id not in self.unfinished for q in labels]
            return RecordDict({p.TRAIN_CONFIG: config, p.PUBLIC: public, p.PSEUDO: pseudo})

        if not (self.app.fedsem.selective and self.withheld):
            return build_messages(content(self.pseudo_labels), node_ids, MessageType.TRAIN)
        # Selective transfer: each node gets the labels it does not know best itself.
        return [
            message
            for node in node_ids
            for message in build_messages(
                content([q for q in self.pseudo_labels if node not in self.withheld.get(q.id, ())]),
                [node],
                MessageType.TRAIN,
            )
        ]

    def references(self) -> dict[int, str]:
        """Reference answers of the public prompts, by id, from the dataset (diagnostics)."""
        if self._references is None:
            try:
                self._references = {q.id: q.answer for q in load_records(self.app.data)}
            except Exception as err:  # noqa: BLE001 - a diagnostic must not stop the run
                log(WARNING, "diagnostics: no reference answers (%s)", err)
                self._references = {}
        return self._references

    def diagnose(
        self,
        prompts: Sequence[QAPair],
        texts: list[list[str]],
        mask: np.ndarray,
        index: np.ndarray,
        relevance: np.ndarray,
        infos: Sequence[ConfigRecord],
    ) -> dict[str, float]:
        """With ``fedsem.diagnostics``: expert-share and label quality of the round.

        See :mod:`fedsem_app.strategies.diagnostics`; metrics that cannot be computed
        (no categories reported, no references) are left out.
        """
        if not self.app.fedsem.diagnostics:
            return {}
        holdings = [
            dict(zip(info.get(p.CATEGORIES, []), info.get(p.CATEGORY_COUNTS, []), strict=False))
            for info in infos
        ]
        out: dict[str, float] = {}
        if any(holdings):
            experts = category_experts([q.category for q in prompts], holdings)
            won = winners(texts, index)
            out.update(expert_metrics(experts, won, most_relevant(relevance, mask), mask))
        refs = self.references()
        out.update(label_rouge(texts, mask, index, [refs.get(q.id, "") for q in prompts]))
        return out

    def vet(self, server_round: int, message: Message) -> tuple[ValidAnswers | None, str | None]:
        """The reply's answers aligned to the round's prompts, or why it has none.

        Answers to single prompts that cannot vote (too long, not finite) leave only
        those prompts out; the log says which.
        """
        ids = [q.id for q in self.round_prompts(server_round)]
        answers, reason = check_answers(message.content, ids, self.app.fedsem.max_answer_chars)
        if answers is not None and answers.problems:
            log(
                WARNING,
                "round %d: node %d left out of %d prompt(s): %s",
                server_round,
                message.metadata.src_node_id,
                len(answers.problems),
                "; ".join(answers.problems[:3]) + ("; ..." if len(answers.problems) > 3 else ""),
            )
        return answers, reason

    def combine(self, server_round: int, voters: list[Vetted]) -> Combined:
        """Embed the answers, form the consensus and keep the pseudo-labels."""
        prompts = self.round_prompts(server_round)
        cfg = self.app.fedsem
        texts, answered, confidences, finished = answer_grid([a for _, a in voters])
        mask = answered if cfg.vote_unfinished else answered & finished
        sent = relevance_grid([a for _, a in voters])  # as the clients sent them
        relevance = standardise_relevance(sent, mask) if cfg.standardise_relevance else sent
        result, embed_seconds, consensus_seconds = vote_in_chunks(
            texts, mask, confidences, cfg, relevance=relevance
        )
        label_texts = [texts[i][k] if k >= 0 else None for i, k in enumerate(result.index)]
        support_seconds = 0.0
        if cfg.sentence_support:
            t0 = time.perf_counter()
            label_texts = support_labels(
                texts,
                mask,
                result.index,
                lambda sentences: embed(sentences, cfg.embedder),
                cfg.support_threshold,
                cfg.support_share,
                cfg.support_window,
                cfg.support_window_threshold,
            )
            support_seconds = time.perf_counter() - t0
        chosen_by_vote = [i for i in range(len(prompts)) if not result.abstained[i]]
        chosen = [i for i in chosen_by_vote if label_texts[i] is not None]
        labels = {q.id: q for q in self.pseudo_labels} if cfg.label_memory else {}
        unfinished = set(self.unfinished) if cfg.label_memory else set()
        withheld = dict(self.withheld) if cfg.label_memory else {}
        nodes = [m.metadata.src_node_id for m, _ in voters]
        best = knows_best(texts, result.index, relevance, mask) if cfg.selective else None
        for i in chosen:
            q = prompts[i]
            labels[q.id] = QAPair(q.id, q.prompt, label_texts[i], q.category)
            unfinished.discard(q.id)
            if not finished[i, result.index[i]]:
                unfinished.add(q.id)
            if best is not None:
                withheld[q.id] = {nodes[k] for k in best[i]}
        self.pseudo_labels = [labels[k] for k in sorted(labels)]
        self.unfinished = unfinished & set(labels)
        self.withheld = {k: v for k, v in withheld.items() if k in labels}
        infos = [m.content.get(p.INFO, ConfigRecord()) for m, _ in voters]
        models = [info.get(p.MODEL_NAME, "") for info in infos]
        # A federation spec names its clients: pick-share goes by client, else by model.
        owners = [
            info.get(p.CLIENT_NAME, "") or model for info, model in zip(infos, models, strict=True)
        ]
        shares = pick_shares(texts, result.index)
        by_model: dict[str, float] = {}
        for owner, share in zip(owners, shares, strict=True):
            by_model[f"pick-share-{owner}"] = by_model.get(f"pick-share-{owner}", 0.0) + share
        num_samples = cfg.samples_per_round or len(prompts)
        self.run_log.add_samples(
            server_round,
            [
                {
                    "prompt-id": prompts[i].id,
                    "prompt": prompts[i].prompt,
                    "answers": [
                        {
                            "node": n,
                            **({"client": c} if (c := infos[k].get(p.CLIENT_NAME, "")) else {}),
                            "model": mdl,
                            "text": texts[i][k],
                            "valid": bool(mask[i, k]),
                            "finished": bool(finished[i, k]),
                            "confidence": float(confidences[i, k]),
                            **({"relevance": float(sent[i, k])} if np.isfinite(sent[i, k]) else {}),
                        }
                        for k, (n, mdl) in enumerate(zip(nodes, models, strict=True))
                    ],
                    "chosen": int(result.index[i]),
                    **({"label": label_texts[i]} if cfg.sentence_support else {}),
                    "agreement": float(result.agreement[i]),
                    "abstained": bool(result.abstained[i]),
                }
                for i in range(min(num_samples, len(prompts)))
            ],
        )
        valid_agreement = result.agreement[~result.abstained]
        extra = {
            "pseudo-labels": len(self.pseudo_labels),
            "pseudo-unfinished": len(self.unfinished),
            "prompts-labelled": len(chosen),
            "truncated-share": float(1.0 - finished[answered].mean()) if answered.any() else 0.0,
            **by_model,
            "abstained": int(result.abstained.sum()),
            "agreement-mean": float(valid_agreement.mean()) if len(valid_agreement) else 0.0,
            "embed-seconds": embed_seconds,
            "consensus-seconds": consensus_seconds,
            **(
                {
                    "support-seconds": support_seconds,
                    "support-trimmed": sum(
                        label_texts[i] != texts[i][result.index[i]] for i in chosen
                    ),
                    "support-abstained": len(chosen_by_vote) - len(chosen),
                }
                if cfg.sentence_support
                else {}
            ),
            "answers-masked": int((~mask).sum()),
            # Selective transfer: (node, label) pairs not sent because the node knows best.
            **(
                {"labels-withheld": sum(len(v) for v in self.withheld.values())}
                if cfg.selective
                else {}
            ),
            **(self.diagnose(prompts, texts, mask, result.index, relevance, infos)),
        }
        per_client = {n: {"pick-share": float(s)} for n, s in zip(nodes, shares, strict=True)}
        return Combined(extra=extra, per_client=per_client)
