"""Sizing of the private-facts benchmark: how fast does one client learn its own facts.

One client (``local`` in all but name) trains on its own partition of the facts data
(the run's split and category partition, conf/facts.toml's settings) in rounds of
``--steps-per-round`` steps, each with a fresh optimizer as in a run; after every
round it answers its own facts' test questions and public phrasings, and the share
of answers holding the right value (fact-accuracy) is printed with the seconds spent.
The accuracy on the public phrasings caps what any consensus can pass on to others.

    python bench/facts_sizing.py --rounds 5 --steps-per-round 40
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
from pathlib import Path

from fedsem_app.clients import load_client, set_num_threads
from fedsem_app.clients.evaluation import contains_value
from fedsem_app.config.app import load_app_config
from fedsem_app.data.partition import load_partition
from fedsem_app.data.records import load_records

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, bench_parser  # noqa: E402


def flat(table: dict, prefix: str = "") -> dict:
    """A TOML profile's tables as dotted run-config keys ([compare] left out)."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            if key != "compare":
                out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def accuracy(client, rows, gen) -> float:
    """Share of generated answers to ``rows`` (QAPairs) that contain their value."""
    answers = client.answer([r.prompt for r in rows], gen).texts
    return sum(contains_value(a, r.value) for a, r in zip(answers, rows, strict=True)) / len(rows)


def main() -> None:
    """Train one client on its facts round by round; print accuracy and seconds as JSON lines."""
    parser = bench_parser(__doc__)
    parser.add_argument("--profile", type=Path, default=ROOT / "conf" / "facts.toml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=40)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--partition", type=int, default=0)
    args = parser.parse_args()

    cfg = load_app_config(flat(tomllib.loads(args.profile.read_text())))
    set_num_threads(cfg.train.num_threads)
    private = load_partition(cfg.data, cfg.seed, args.clients, args.partition)
    own = {q.fact for q in private}
    rows = load_records(cfg.data)
    test = [r for r in rows if r.role == "test" and r.fact in own]
    public = [r for r in rows if r.role == "public" and r.fact in own]
    client = load_client(
        cfg.model.name_for(args.partition),
        cfg.lora,
        cache_dir=cfg.model.cache_path,
        template=cfg.model.template,
        seed=cfg.seed,
    )
    client.set_adapter(None)
    pairs = [(q.prompt, q.answer) for q in private]
    print(
        json.dumps(
            {
                "private-rows": len(pairs),
                "facts": len(own),
                "test": len(test),
                "public": len(public),
            }
        ),
        flush=True,
    )
    steps, train_seconds = 0, 0.0
    for round_ in range(args.rounds + 1):
        if round_ > 0:
            stats = client.train(
                pairs, cfg.train, seed=cfg.seed + 1000 * round_, steps=args.steps_per_round
            )
            steps += args.steps_per_round
            train_seconds += stats["train-seconds"]
        t0 = time.perf_counter()
        result = {
            "steps": steps,
            "train-seconds": round(train_seconds, 1),
            "test-accuracy": accuracy(client, test, cfg.gen),
            "public-accuracy": accuracy(client, public, cfg.gen),
        }
        result["eval-seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(result), flush=True)
    sample = client.answer([r.prompt for r in test[:4]], cfg.gen).texts
    print(json.dumps({"sample": list(zip([r.prompt for r in test[:4]], sample, strict=True))}))


if __name__ == "__main__":
    main()
