"""Poisoned clients: how much 0, 1 or 2 bad clients out of 5 move the result.

Three parts, each with real models on the packaged construction FAQ:

``text`` (FedSem)
    Five honest clients (SmolLM2-135M and Gemma-3-270M, alternating), each after
    ``--steps`` LoRA steps on its own Dirichlet partition, answer ``--prompts``
    held-out test prompts. Then 0, 1 or 2 of them are replaced by poisoned clients
    through the app's fault code (:mod:`fedsem_app.clients.faults`): ``garbage`` (random
    letters) or ``adversarial`` (the same fixed text from every poisoned client, at
    the highest confidence: colluding). Every client also sends a relevance score
    per prompt (``similarity``: top-3 mean cosine to its own private prompts); in
    the ``claims expertise`` attacks the poisoned clients claim the highest score
    (1.0) on every prompt instead. The rules that read relevance run twice: on the
    scores as sent and, marked ``(z)``, standardised per client over the prompts
    (``fedsem.standardise-relevance``). Every consensus rule picks one answer per prompt
    or abstains; we report how often a poisoned text became a label, how many
    prompts got one, and the ROUGE-L and embedding similarity of the labels to the
    reference answers.
``stealthy`` (FedSem)
    The same honest answers; the last of 3 (then of 5) clients answers honestly and
    adds ``fault.text`` (``append``, ``prepend``, ``insert``). Every rule, with and
    without sentence support (:mod:`fedsem_app.strategies.support`): how often the
    payload is in the label, and what support costs honest labels (attack ``none``).
``adapter`` (FedAvg-LoRA)
    Five SmolLM2-135M clients train the same fresh global adapter on their
    partitions. Then 0, 1 or 2 of them send a ``scaled-adapter`` (x ``--scale``) or
    a ``random-adapter`` instead, and the adapters are combined with each
    ``aggregation.rule`` (``mean`` weighted by examples, ``median``,
    ``trimmed-mean`` cutting 20 % at each end). We report the test NLL of the
    combined adapter and its distance to the honest clients' mean.

The honest answers and adapters are computed once per run (most of the time: about
5-8 minutes on 2 CPU cores); the attacks reuse them, so every row of a table
differs from its 0-poisoned row only by the poisoned clients.

Run from the project root, with the CPU to itself::

    .venv/bin/python bench/poisoning.py
    .venv/bin/python bench/poisoning.py --parts text --prompts 16 --out /tmp/poison
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser, finish, machine, output_folder  # noqa: E402

NUM_CLIENTS = 5
POISONED = (0, 1, 2)


def honest_clients(args: argparse.Namespace, models: list[str]):
    """Train one adapter per client on its partition; yield (client, adapter, private pairs)."""
    from fedsem_app.clients import load_client, set_num_threads
    from fedsem_app.config.sections import DataConfig, LoraConfig, ModelConfig, TrainConfig
    from fedsem_app.data.partition import load_partition

    set_num_threads(0)
    train = TrainConfig(local_steps=args.steps, batch_size=4, max_seq_len=96)
    for k, name in enumerate(models):
        client = load_client(
            name, LoraConfig(), device="cpu", cache_dir=ModelConfig().cache_path, seed=args.seed
        )
        client.set_adapter(None)
        private = load_partition(DataConfig(), args.seed, NUM_CLIENTS, k)
        stats = client.train([(q.prompt, q.answer) for q in private], train, seed=args.seed + k)
        print(
            f"  client {k} ({name}): {len(private)} private pairs, "
            f"{args.steps} steps, loss {stats['train-loss']:.3f}",
            flush=True,
        )
        yield client, client.adapter_state(), private


_HONEST: dict = {}


def honest_answers(
    args: argparse.Namespace, test
) -> tuple[list[list[str]], list[list[float]], list[list[float]]]:
    """Every honest client's answers, confidences and relevance scores (K x P), once per run.

    Relevance is the ``similarity`` estimator: top-3 mean cosine of each test prompt to
    the client's own private prompts.
    """
    from fedsem_app.clients.relevance import relevance_scores
    from fedsem_app.config.sections import FedSemConfig, GenerationConfig

    if "texts" not in _HONEST:
        prompts = [q.prompt for q in test]
        gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=16)
        models = args.models.split(",") * NUM_CLIENTS
        cfg = FedSemConfig()
        texts, confs, relevance = [], [], []
        for client, _, private in honest_clients(args, models[:NUM_CLIENTS]):
            answers, confidences = client.generate(prompts, gen)
            texts.append(list(answers))
            confs.append([float(c) for c in confidences])
            own = [q.prompt for q in private]
            relevance.append(relevance_scores("similarity", client, prompts, own, cfg))
        _HONEST.update(texts=texts, confs=confs, relevance=relevance)
    return _HONEST["texts"], _HONEST["confs"], _HONEST["relevance"]


def text_part(args: argparse.Namespace, test) -> list[dict]:
    """Consensus quality with poisoned answers, for every rule and attack."""
    import torch

    from fedsem_app.clients.evaluation import rouge_l
    from fedsem_app.clients.faults import corrupt_answers
    from fedsem_app.config.sections import FaultConfig, FedSemConfig
    from fedsem_app.embedding import cosine_to_reference, embed
    from fedsem_app.strategies.consensus import CONSENSUS_RULES, consensus
    from fedsem_app.strategies.fedsem import standardise_relevance

    prompts = [q.prompt for q in test]
    references = [q.answer for q in test]
    texts, confs, relevance = honest_answers(args, test)
    cfg = FedSemConfig()
    rng = np.random.default_rng(args.seed)
    rows = []
    attacks = [(a, claims) for claims in (False, True) for a in ("garbage", "adversarial")]
    for attack, claims in attacks:
        fault = FaultConfig(mode=attack)
        for n_bad in POISONED[1:] if claims else POISONED:
            grid_texts, grid_confs = [list(t) for t in texts], [list(c) for c in confs]
            grid_relevance = [list(r) for r in relevance]
            bad = list(range(NUM_CLIENTS - n_bad, NUM_CLIENTS))  # the last n_bad clients
            for k in bad:
                grid_texts[k], grid_confs[k] = corrupt_answers(fault, texts[k], confs[k], rng)
                if claims:  # the highest similarity there is, on every prompt
                    grid_relevance[k] = [1.0] * len(prompts)
            # (K, P) -> (P, K); embed every answer once, as the server does.
            flat = [grid_texts[k][i] for i in range(len(prompts)) for k in range(NUM_CLIENTS)]
            vectors = embed(flat, cfg.embedder).reshape(len(prompts), NUM_CLIENTS, -1)
            mask = torch.tensor(
                [[bool(t.strip()) for t in col] for col in zip(*grid_texts, strict=True)]
            )
            conf = torch.tensor(grid_confs, dtype=torch.float32).T
            sent = np.array(grid_relevance, dtype=np.float64).T
            # The rules that read relevance also with fedsem.standardise-relevance: "(z)".
            variants = [(rule, rule, sent) for rule in CONSENSUS_RULES] + [
                (f"{rule} (z)", rule, standardise_relevance(sent, mask.numpy()))
                for rule in CONSENSUS_RULES
                if CONSENSUS_RULES[rule].needs_relevance
            ]
            for label, rule, rel in variants:
                result = consensus(
                    rule,
                    torch.from_numpy(vectors),
                    mask,
                    options=dict(cfg.rule_options).get(rule),
                    confidences=conf,
                    relevance=torch.from_numpy(rel),
                )
                # Abstained prompts (index -1) get no label: they count as not poisoned,
                # and the label quality is over the labelled prompts.
                labelled = [i for i, k in enumerate(result.index) if k >= 0]
                picks = [grid_texts[int(result.index[i])][i] for i in labelled]
                refs = [references[i] for i in labelled]
                rows.append(
                    {
                        "attack": attack + (", claims expertise" if claims else ""),
                        "poisoned": n_bad,
                        "rule": label,
                        "picked-poisoned": float(np.isin(result.index, bad).mean()),
                        "labelled": len(labelled) / len(prompts),
                        "rouge-l": float(np.mean(rouge_l(picks, refs))) if picks else np.nan,
                        "embed-sim": float(cosine_to_reference(picks, refs, cfg.embedder).mean())
                        if picks
                        else np.nan,
                    }
                )
    # Context: an average honest client's own answers, no consensus.
    honest_rouge = np.mean([np.mean(rouge_l(t, references)) for t in texts])
    print(f"  an honest client's own answers: ROUGE-L {honest_rouge:.3f} on average")
    return rows


def stealthy_part(args: argparse.Namespace, test) -> list[dict]:
    """Labels carrying a stealthy client's sentence, per rule, with and without support.

    The last client of the first ``k`` (3, then 5) answers honestly and adds
    ``fault.text`` (appended, prepended or inserted after the first sentence); the
    others answer honestly. Every rule picks a label per prompt; sentence support
    (``fedsem.sentence-support``) then trims it. Reported: how often the payload is
    in the label, the labels' ROUGE-L to the references, and the support's seconds.
    """
    import torch

    from fedsem_app.clients.evaluation import rouge_l
    from fedsem_app.clients.faults import corrupt_answers
    from fedsem_app.config.sections import FaultConfig, FedSemConfig
    from fedsem_app.embedding import embed
    from fedsem_app.strategies.consensus import CONSENSUS_RULES, consensus
    from fedsem_app.strategies.support import support_labels

    references = [q.answer for q in test]
    texts, confs, relevance = honest_answers(args, test)
    cfg = FedSemConfig()
    payload = FaultConfig().text
    rng = np.random.default_rng(args.seed)
    rows = []
    for k in (3, 5):
        for attack in ("none", "append", "prepend", "insert"):
            grid_texts, grid_confs = [list(t) for t in texts[:k]], [list(c) for c in confs[:k]]
            if attack != "none":
                grid_texts[-1], grid_confs[-1] = corrupt_answers(
                    FaultConfig(mode=attack), texts[k - 1], confs[k - 1], rng
                )
            by_prompt = [list(col) for col in zip(*grid_texts, strict=True)]  # P x K
            flat = [t for row in by_prompt for t in row]
            vectors = embed(flat, cfg.embedder).reshape(len(test), k, -1)
            mask = np.array([[bool(t.strip()) for t in row] for row in by_prompt])
            conf = torch.tensor(grid_confs, dtype=torch.float64).T
            # The stealthy client reports its honest relevance: it claims nothing.
            rel = torch.tensor(relevance[:k], dtype=torch.float64).T
            for rule in CONSENSUS_RULES:
                result = consensus(
                    rule,
                    torch.from_numpy(vectors),
                    torch.from_numpy(mask),
                    options=dict(cfg.rule_options).get(rule),
                    confidences=conf,
                    relevance=rel,
                )
                plain = [
                    row[i] if i >= 0 else None
                    for row, i in zip(by_prompt, result.index, strict=True)
                ]
                t0 = time.perf_counter()
                supported = support_labels(
                    by_prompt,
                    mask,
                    result.index,
                    lambda sentences: embed(sentences, cfg.embedder),
                    cfg.support_threshold,
                    cfg.support_share,
                    cfg.support_window,
                    cfg.support_window_threshold,
                )
                seconds = time.perf_counter() - t0
                for defence, labels in (("off", plain), ("sentence-support", supported)):
                    given = [
                        (lbl, ref)
                        for lbl, ref in zip(labels, references, strict=True)
                        if lbl is not None
                    ]
                    rows.append(
                        {
                            "clients": k,
                            "attack": attack,
                            "rule": rule,
                            "support": defence,
                            "payload-in-label": float(
                                np.mean([payload in lbl for lbl, _ in given]) if given else 0.0
                            ),
                            "attacker-picked": float(np.mean(result.index == k - 1)),
                            "labelled": len(given) / len(test),
                            "label-rouge-l": float(
                                np.mean(rouge_l([g for g, _ in given], [r for _, r in given]))
                            )
                            if given
                            else float("nan"),
                            "support-seconds": seconds if defence != "off" else 0.0,
                        }
                    )
    return rows


def adapter_part(args: argparse.Namespace, test) -> list[dict]:
    """Test NLL of combined adapters with poisoned clients, for every aggregation rule."""
    from fedsem_app.clients.faults import corrupt_adapter
    from fedsem_app.config.sections import AggregationConfig, FaultConfig
    from fedsem_app.strategies.aggregation import AGGREGATION_RULES, combine_adapters

    trained = list(honest_clients(args, ["smollm2-135m"] * NUM_CLIENTS))
    client = trained[0][0]
    adapters = [a for _, a, _ in trained]
    weights = [len(private) for _, _, private in trained]
    pairs = [(q.prompt, q.answer) for q in test]

    def distance(state, ref):
        num = sum(float(np.sum((state[k] - ref[k]) ** 2)) for k in ref)
        den = sum(float(np.sum(ref[k] ** 2)) for k in ref)
        return (num / den) ** 0.5

    # The rules as a round applies them: Flower's FedAvg (weighted), FedMedian, FedTrimmedAvg.
    honest_mean = combine_adapters(adapters, AggregationConfig(rule="mean"), weights)
    client.set_adapter(None)
    rows = [{"attack": "-", "poisoned": 0, "rule": "fresh adapter", "nll": client.nll(pairs)}]
    rng = np.random.default_rng(args.seed)
    for attack in ("scaled-adapter", "random-adapter"):
        fault = FaultConfig(mode=attack, scale=args.scale)
        for n_bad in POISONED:
            states = list(adapters)
            for k in range(NUM_CLIENTS - n_bad, NUM_CLIENTS):
                states[k] = corrupt_adapter(fault, adapters[k], rng)
            for rule in AGGREGATION_RULES:
                combined = combine_adapters(states, AggregationConfig(rule=rule), weights)
                client.set_adapter(combined)
                rows.append(
                    {
                        "attack": attack,
                        "poisoned": n_bad,
                        "rule": rule,
                        "nll": client.nll(pairs),
                        "distance": distance(combined, honest_mean),
                    }
                )
    return rows


TEXT_COLUMNS = [
    ("attack", "attack", ""),
    ("poisoned", "poisoned of 5", ""),
    ("rule", "rule", ""),
    ("picked-poisoned", "a poisoned text became the label", ".0%"),
    ("labelled", "prompts labelled", ".0%"),
    ("rouge-l", "ROUGE-L", ".3f"),
    ("embed-sim", "embed-sim", ".3f"),
]
STEALTHY_COLUMNS = [
    ("clients", "clients", ""),
    ("attack", "attack", ""),
    ("rule", "rule", ""),
    ("support", "sentence support", ""),
    ("attacker-picked", "attacker's answer chosen", ".0%"),
    ("payload-in-label", "payload in label", ".0%"),
    ("labelled", "prompts labelled", ".0%"),
    ("label-rouge-l", "label ROUGE-L", ".3f"),
    ("support-seconds", "support s", ".2f"),
]
ADAPTER_COLUMNS = [
    ("attack", "attack", ""),
    ("poisoned", "poisoned of 5", ""),
    ("rule", "aggregation.rule", ""),
    ("nll", "test NLL", ".3f"),
    ("distance", "distance to honest mean", ".3g"),
]


def main() -> None:
    """Run the parts asked for and print one table each."""
    parser = bench_parser(__doc__, "poisoning", seed=42)
    parser.add_argument(
        "--parts", default="text,stealthy,adapter", help="comma-separated: text, stealthy, adapter"
    )
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts (text part)")
    parser.add_argument("--steps", type=int, default=4, help="local LoRA steps per client")
    parser.add_argument(
        "--models",
        default="smollm2-135m,gemma3-270m",
        help="text part: models assigned to the 5 clients in turn (comma list)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--scale", type=float, default=10.0, help="fault.scale for adapters")
    args = parser.parse_args()

    from fedsem_app.config.sections import DataConfig
    from fedsem_app.data.split import load_split

    folder = output_folder("poisoning", args.out)
    test = load_split(DataConfig(), args.seed).test[: args.prompts]
    meta = {"machine": machine(), "args": vars(args)}
    parts = args.parts.split(",")
    if "text" in parts:
        t0 = time.perf_counter()
        print(f"text part: {NUM_CLIENTS} clients answer {len(test)} prompts", flush=True)
        rows = text_part(args, test)
        meta["text-seconds"] = time.perf_counter() - t0
        finish(folder, "poisoning_text", rows, meta, TEXT_COLUMNS)
    if "stealthy" in parts:
        t0 = time.perf_counter()
        print(f"stealthy part: 1 of 3 and 1 of 5 clients add a sentence, {len(test)} prompts")
        rows = stealthy_part(args, test)
        meta["stealthy-seconds"] = time.perf_counter() - t0
        finish(folder, "poisoning_stealthy", rows, meta, STEALTHY_COLUMNS)
    if "adapter" in parts:
        t0 = time.perf_counter()
        test = test[:16]
        print(f"adapter part: {NUM_CLIENTS} SmolLM2 clients, NLL on {len(test)} prompts")
        rows = adapter_part(args, test)
        meta["adapter-seconds"] = time.perf_counter() - t0
        finish(folder, "poisoning_adapter", rows, meta, ADAPTER_COLUMNS)
    print(f"results in {folder}")


if __name__ == "__main__":
    main()
