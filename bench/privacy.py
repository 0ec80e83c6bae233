"""Privacy, measured: what each party learns about client 0's private data.

One command plants canaries in client 0's private data, runs ``local``, ``fedsem``,
``fedavg-lora`` and ``fedavg-lora-dp`` through the real ``flwr run`` path on the
same setting, and then measures, for every party's view:

- **verbatim**: how many texts hold a canary's secret word for word: the answers
  the server received (fedsem, every answer kept with ``fedsem.samples-per-round =
  0``), the pseudo-labels the other clients received, and what each final model
  generates when asked a canary question (or a paraphrase);
- **exposure** (Carlini et al., secret sharer): the likelihood rank of the true
  secret among ``--candidates`` other codes of the same format, for whoever holds
  a model (client 0 itself, another client, the server under fedavg-lora);
- **membership inference** (FedCT's VUL): the ROC AUC of a loss attack (score =
  minus the mean token NLL of the reference answer) on client 0's training pairs
  (members) versus FAQ pairs no party ever saw (non-members), per model; and for
  the fedsem server, which holds only answers: the ROUGE-L of client 0's answers to
  member versus non-member questions that the curious server put among the public
  prompts (it is assumed to know the reference answers it tests).

The setting (changes to ``conf/study.toml``, see ``--help``): 3 SmolLM2-135M
clients, an ``iid`` split of a 260-row file (FAQ rows, canaries, attack prompts)
so that members and non-members come from one distribution, 2 rounds of 12 steps
at lr 3e-3 (so that 5 canaries, each in 3 copies, get memorised), 24 public prompts
per round, NLL on 8 test prompts. The curious server orders the public prompts:
round 1 asks the canary questions, round 2 paraphrases of them; the other public
slots ask member and non-member questions.

Run from the project root (about 70 minutes on 2 shared CPU cores)::

    .venv/bin/python bench/privacy.py
    .venv/bin/python bench/privacy.py --strategies fedsem --out /tmp/privacy

``fedavg-lora-dp`` is ``fedavg-lora`` with ``dp.noise-multiplier = --dp-noise`` and
``dp.clipping-norm = --dp-clip`` (:mod:`fedsem_app.strategies.dp`). With ``--reuse``, runs and
model views (``views/*.json``) already in ``--out`` are read instead of redone.

Writes ``canary.md/.csv/.json`` and ``membership.md/.csv/.json`` to the output
folder (runs under ``runs/``, logs under ``logs/``). The planted data file and the
member and non-member sets are built in :mod:`bench.canaries`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.canaries import (  # noqa: E402
    CANARY_CLIENT,
    NUM_CLIENTS,
    Canary,
    Layout,
    build_data,
    candidates,
)
from bench.common import (  # noqa: E402
    ROOT,
    bench_parser,
    finish,
    finished,
    machine,
    output_folder,
    run_named,
)


def run_config(args: argparse.Namespace, layout: Layout) -> dict:
    """``conf/study.toml`` with this benchmark's changes (see the module docstring)."""
    from fedsem_app.tools.compare import read_profile

    shared, _ = read_profile(ROOT / "conf" / "study.toml")
    return {
        **shared,
        "seed": args.seed,
        "num-server-rounds": args.rounds,
        "train.local-steps": args.steps,
        "train.learning-rate": args.lr,
        "data.path": str(layout.path),
        "data.partitioner": "iid",
        "fedsem.prompts-per-round": args.prompts_per_round,
        "fedsem.samples-per-round": 0,
        "eval.num-prompts": args.eval_prompts,
        # NLL only, every round: the study profile's generated answers are not needed here.
        "eval.generate": False,
        "eval.every": 1,
    }


# --- measuring ------------------------------------------------------------------------


def secret_in(texts, canaries: list[Canary]) -> int:
    """Texts that hold any canary's secret word for word."""
    from fedsem_app.tools.privacy import verbatim_hits

    return sum(verbatim_hits(texts, c.secret) for c in canaries)


def model_view(folder: Path, layout: Layout, args: argparse.Namespace) -> dict:
    """Exposure, verbatim generations and loss-attack AUC of one saved adapter."""
    from fedsem_app.config.sections import GenerationConfig
    from fedsem_app.tools.chat import load_adapter
    from fedsem_app.tools.privacy import auc, auc_interval, exposure

    client, _ = load_adapter(folder)
    rng = np.random.default_rng(args.seed + 7)
    exposures = []
    for c in layout.canaries:
        codes = candidates(rng, c.secret, args.candidates)
        pairs = [(c.question, c.answer(code)) for code in [c.secret, *codes]]
        sums, _ = client.nll_terms(pairs, batch_size=16)
        scores = -np.asarray(sums)  # log-likelihood of the whole answer; only the code differs
        exposures.append(exposure(scores[0], scores[1:]))
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=16)
    asked = [c.question for c in layout.canaries] + [c.paraphrase for c in layout.canaries]
    texts, _ = client.generate(asked, gen)
    member_nll = per_pair_nll(client, layout.members)
    non_member_nll = per_pair_nll(client, layout.non_members)
    low, high = auc_interval(-member_nll, -non_member_nll)
    return {
        "exposure-mean": float(np.mean(exposures)),
        "exposure-max": float(np.max(exposures)),
        "exposure-bound": float(np.log2(args.candidates + 1)),
        "generated-secret": secret_in(texts, layout.canaries),
        "generated-asked": len(texts),
        "mia-auc": auc(-member_nll, -non_member_nll),
        "mia-low": low,
        "mia-high": high,
        "member-nll": float(member_nll.mean()),
        "non-member-nll": float(non_member_nll.mean()),
        "sample-answer": texts[0][:160],
    }


def per_pair_nll(client, pairs) -> np.ndarray:
    """Mean token NLL of each reference answer (EOS included)."""
    sums, counts = client.nll_terms(pairs, batch_size=16)
    return np.asarray(sums, dtype=np.float64) / np.maximum(np.asarray(counts), 1)


def server_answers_view(run: Path, layout: Layout) -> dict:
    """What the fedsem server received: secrets in answers, pseudo-labels, answer-MIA AUC."""
    from fedsem_app.clients.evaluation import rouge_l
    from fedsem_app.tools.privacy import auc, auc_interval

    index = json.loads((run / "final" / "index.json").read_text())
    node0 = next(
        e["node-id"] for e in index["adapters"] if e["folder"] == f"client-{CANARY_CLIENT}"
    )
    samples = [json.loads(line) for line in open(run / "consensus_samples.jsonl")]
    all_texts = [a["text"] for s in samples for a in s["answers"]]
    own = {
        s["prompt"]: next(a["text"] for a in s["answers"] if a["node"] == node0) for s in samples
    }
    chosen = [s["answers"][s["chosen"]]["text"] for s in samples if not s["abstained"]]
    chosen_from0 = [
        s["answers"][s["chosen"]]["node"] == node0 for s in samples if not s["abstained"]
    ]
    canary_prompts = {c.question for c in layout.canaries} | {c.paraphrase for c in layout.canaries}
    member_sim = np.array(
        rouge_l([own[q] for q, _ in layout.probe_members], [a for _, a in layout.probe_members])
    )
    non_member_sim = np.array(
        rouge_l(
            [own[q] for q, _ in layout.probe_non_members], [a for _, a in layout.probe_non_members]
        )
    )
    low, high = auc_interval(member_sim, non_member_sim)
    return {
        "answers-received": len(all_texts),
        "answers-with-secret": secret_in(all_texts, layout.canaries),
        "client0-canary-answers": sum(q in canary_prompts for q in own),
        "client0-answers-with-secret": secret_in(
            [t for q, t in own.items() if q in canary_prompts], layout.canaries
        ),
        "pseudo-labels": len(chosen),
        "pseudo-labels-with-secret": secret_in(chosen, layout.canaries),
        "pseudo-labels-from-client0": int(np.sum(chosen_from0)),
        "answer-mia-auc": auc(member_sim, non_member_sim),
        "answer-mia-low": low,
        "answer-mia-high": high,
        "answer-mia-members": len(member_sim),
        "answer-mia-non-members": len(non_member_sim),
    }


# Which saved adapters stand for which party's view, per strategy.
VIEWS = {
    "local": [("client 0 (own model)", "client-0"), ("client 1 (no exchange)", "client-1")],
    "fedsem": [
        ("client 0 (own model)", "client-0"),
        ("client 1 (after pseudo-labels)", "client-1"),
        ("client 2 (after pseudo-labels)", "client-2"),
    ],
    "fedavg-lora": [("server and every client (global adapter)", "global")],
    "fedavg-lora-dp": [("every client (global adapter, DP)", "global")],
}

# Benchmark variants: name -> (strategy, extra run config from the arguments).
VARIANTS = {
    "local": ("local", lambda args: {}),
    "fedsem": ("fedsem", lambda args: {}),
    "fedavg-lora": ("fedavg-lora", lambda args: {}),
    "fedavg-lora-dp": (
        "fedavg-lora",
        lambda args: {"dp.noise-multiplier": args.dp_noise, "dp.clipping-norm": args.dp_clip},
    ),
}


def cached_view(folder: Path, name: str, compute) -> dict:
    """A model view from ``views/<name>.json``, or computed and saved there (minutes each)."""
    path = folder / "views" / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    view = compute()
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(view, indent=2) + "\n")
    return view


MEMBERSHIP_COLUMNS = [
    ("strategy", "strategy", ""),
    ("party", "party, attack", ""),
    ("auc", "AUC", ".3f"),
    ("low", "95 % low", ".3f"),
    ("high", "95 % high", ".3f"),
    ("pairs", "members / non-members", ""),
]


def main() -> None:
    """Plant canaries, run the strategies, measure every view, write the tables."""
    parser = bench_parser(__doc__, "privacy", seed=42)
    parser.add_argument("--strategies", default="local,fedsem,fedavg-lora,fedavg-lora-dp")
    parser.add_argument("--records", type=int, default=260, help="rows of the planted file")
    parser.add_argument("--canaries", type=int, default=5)
    parser.add_argument("--copies", type=int, default=3, help="copies of each canary")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="train.local-steps")
    parser.add_argument("--lr", type=float, default=3e-3, help="train.learning-rate")
    parser.add_argument("--prompts-per-round", type=int, default=24)
    parser.add_argument("--eval-prompts", type=int, default=8)
    parser.add_argument("--non-members", type=int, default=60)
    parser.add_argument("--candidates", type=int, default=99, help="other codes per canary")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--dp-noise", type=float, default=1.0, help="fedavg-lora-dp's z")
    parser.add_argument("--dp-clip", type=float, default=1.0, help="fedavg-lora-dp's C")
    parser.add_argument("--reuse", action="store_true", help="measure runs already in --out")
    args = parser.parse_args()

    folder = output_folder("privacy", args.out).resolve()
    layout = build_data(args, folder)
    flat = run_config(args, layout)
    meta = {"machine": machine(), "args": vars(args), "run-config": flat}
    print(
        f"planted {args.canaries} canaries x {args.copies} in client 0; "
        f"{len(layout.members)} member pairs, {len(layout.non_members)} non-members",
        flush=True,
    )
    runs: dict[str, Path] = {}
    for strategy in args.strategies.split(","):
        name = f"{strategy}-privacy"
        if not (args.reuse and finished(folder, name)):
            t0 = time.perf_counter()
            real, extra = VARIANTS[strategy]
            config = {**flat, **extra(args)}
            record = run_named(folder, name, real, config, f"num-supernodes={NUM_CLIENTS}")
            meta[f"{strategy}-seconds"] = time.perf_counter() - t0
            if not record.ok:
                print(f"== {strategy} FAILED: {record.error}", flush=True)
                continue
        runs[strategy] = folder / "runs" / name

    canary_rows, mia_rows = [], []
    base = None
    for strategy, run in runs.items():
        summary = json.loads((run / "summary.json").read_text())
        final_nll = summary.get("final", {}).get("nll", float("nan"))
        dp_epsilon = summary.get("dp", {}).get("epsilon", "")  # blank: no DP
        if strategy == "fedsem":
            server = server_answers_view(run, layout)
            meta["fedsem-server"] = server
            canary_rows.append(
                {
                    "strategy": strategy,
                    "party": "server (answers received)",
                    "verbatim": f"{server['answers-with-secret']} of {server['answers-received']} "
                    f"answers ({server['client0-answers-with-secret']} of client 0's "
                    f"{server['client0-canary-answers']} canary answers)",
                }
            )
            canary_rows.append(
                {
                    "strategy": strategy,
                    "party": "other clients (pseudo-labels)",
                    "verbatim": f"{server['pseudo-labels-with-secret']} of "
                    f"{server['pseudo-labels']} labels "
                    f"({server['pseudo-labels-from-client0']} picked from client 0)",
                }
            )
            mia_rows.append(
                {
                    "strategy": strategy,
                    "party": "server (client 0's answers, ROUGE-L)",
                    "auc": server["answer-mia-auc"],
                    "low": server["answer-mia-low"],
                    "high": server["answer-mia-high"],
                    "pairs": f"{server['answer-mia-members']} / {server['answer-mia-non-members']}",
                }
            )
        for party, adapter in VIEWS.get(strategy, []):
            t0 = time.perf_counter()
            view = cached_view(
                folder,
                f"{strategy}-{adapter}",
                lambda run=run, adapter=adapter: model_view(run / "final" / adapter, layout, args),
            )
            print(f"  {strategy} {party}: {view} ({time.perf_counter() - t0:.0f} s)", flush=True)
            meta[f"{strategy}-{adapter}"] = view
            canary_rows.append(
                {
                    "strategy": strategy,
                    "party": party,
                    "verbatim": f"{view['generated-secret']} of {view['generated-asked']} "
                    "generations",
                    "exposure-mean": view["exposure-mean"],
                    "exposure-max": view["exposure-max"],
                    "final-nll": final_nll,
                    "epsilon": dp_epsilon,
                }
            )
            mia_rows.append(
                {
                    "strategy": strategy,
                    "party": party + ", loss attack",
                    "auc": view["mia-auc"],
                    "low": view["mia-low"],
                    "high": view["mia-high"],
                    "pairs": f"{len(layout.members)} / {len(layout.non_members)}",
                }
            )
        base = base or run
    bound = float(np.log2(args.candidates + 1))
    canary_columns = [
        ("strategy", "strategy", ""),
        ("party", "party (what it holds)", ""),
        ("verbatim", "secret verbatim in", ""),
        ("exposure-mean", f"exposure, mean (bits, max {bound:.2f})", ".2f"),
        ("exposure-max", "exposure, max", ".2f"),
        ("final-nll", "run's final test NLL", ".3f"),
        ("epsilon", "DP epsilon", ".3g"),
    ]
    finish(folder, "canary", canary_rows, meta, canary_columns, markdown_file=True)
    finish(folder, "membership", mia_rows, meta, MEMBERSHIP_COLUMNS, markdown_file=True)
    print(f"results in {folder}")


if __name__ == "__main__":
    main()
