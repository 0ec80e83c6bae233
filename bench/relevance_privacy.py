"""What relevance scores tell the server: which categories each client holds.

With ``fedsem.relevance = "similarity"`` every client sends, for every public prompt,
the mean cosine to its 3 most similar private prompts. A curious server that knows
the public prompts' categories (it chose the prompts) can rank them by a client's
score and read off the client's topics. This measures how well, offline and
without a language model (the ``similarity`` estimator needs only the sentence
encoder), on the packaged construction FAQ split as a run splits it:

- **AUC**: per client, the ROC AUC of its score for "the prompt's category is one
  the client holds" (at least one private example) against "it holds none",
  averaged over the clients; 0.5 means the scores reveal nothing;
- **top-10 precision**: the share of a client's 10 highest-scored public prompts
  whose category it holds, next to the **base rate** (the share of all public
  prompts whose category it holds: what guessing gets).

Each under the scores as sent, rounded to one decimal, and reduced to one bit (above
the client's own median or not), to see whether coarse scores would protect the
clients. (``lift`` needs trained models and is not measured here; standardising the
scores, ``fedsem.standardise-relevance``, is monotone per client and changes no AUC.)

Run from the project root (a minute on 2 CPU cores)::

    .venv/bin/python bench/relevance_privacy.py
    .venv/bin/python bench/relevance_privacy.py --clients 5 --out /tmp/relevance-privacy
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser, finish, machine, output_folder  # noqa: E402

# name -> fn(scores of one client over the public prompts) -> what the client sends
QUANTISERS = {
    "as sent": lambda s: s,
    "one decimal": lambda s: np.round(s, 1),
    "one bit": lambda s: (s > np.median(s)).astype(np.float64),
}


def client_rows(args: argparse.Namespace, partitioner: str) -> list[dict]:
    """One row per quantiser: mean AUC and top-10 precision over the clients."""
    from fedsem_app.clients.relevance import top_k_mean_cosine
    from fedsem_app.config.sections import DataConfig
    from fedsem_app.data.partition import load_partition
    from fedsem_app.data.split import load_split
    from fedsem_app.embedding import embed
    from fedsem_app.tools.privacy import auc

    data = DataConfig(partitioner=partitioner, dirichlet_alpha=args.alpha)
    public = load_split(data, args.seed).public
    public_vectors = embed([q.prompt for q in public], args.embedder)
    categories = np.array([q.category for q in public])
    results: dict[str, dict[str, list[float]]] = {
        name: {"auc": [], "top10": [], "base": []} for name in QUANTISERS
    }
    for k in range(args.clients):
        private = load_partition(data, args.seed, args.clients, k)
        held = np.isin(categories, sorted({q.category for q in private}))
        scores = top_k_mean_cosine(
            public_vectors, embed([q.prompt for q in private], args.embedder), 3
        )
        for name, quantise in QUANTISERS.items():
            sent = quantise(scores)
            # Highest first; ties in coarse scores are broken at random, as a server would.
            order = np.lexsort((np.random.default_rng(args.seed + k).random(len(sent)), -sent))
            results[name]["top10"].append(float(held[order[:10]].mean()))
            results[name]["base"].append(float(held.mean()))
            if held.any() and not held.all():
                results[name]["auc"].append(auc(sent[held], sent[~held]))
    return [
        {
            "partitioner": partitioner,
            "scores": name,
            "auc": float(np.mean(r["auc"])) if r["auc"] else float("nan"),
            "top10-precision": float(np.mean(r["top10"])),
            "base-rate": float(np.mean(r["base"])),
        }
        for name, r in results.items()
    ]


COLUMNS = [
    ("partitioner", "partitioner", ""),
    ("scores", "scores", ""),
    ("auc", "AUC (held vs not)", ".3f"),
    ("top10-precision", "top-10 precision", ".2f"),
    ("base-rate", "base rate", ".2f"),
]


def main() -> None:
    """Measure every partitioner and print one table."""
    parser = bench_parser(__doc__, "relevance-privacy", seed=42)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--partitioners", default="dirichlet,category,iid")
    parser.add_argument("--alpha", type=float, default=0.5, help="data.dirichlet-alpha")
    parser.add_argument("--embedder", default="all-MiniLM-L6-v2")
    args = parser.parse_args()

    folder = output_folder("relevance-privacy", args.out)
    t0 = time.perf_counter()
    rows = [row for name in args.partitioners.split(",") for row in client_rows(args, name)]
    meta = {"machine": machine(), "args": vars(args), "seconds": time.perf_counter() - t0}
    finish(folder, "relevance_privacy", rows, meta, COLUMNS)
    print(f"results in {folder}")


if __name__ == "__main__":
    main()
