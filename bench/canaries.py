"""The planted data of ``bench/privacy.py``: canaries in client 0's data, and the sets scored.

A canary is a made-up question about a site office's access code with a random
numeric secret as its answer. :func:`build_data` writes a data file in which the
run's own split puts every canary copy into client 0's private shard and the canary
questions (and paraphrases) first among the public prompts, and records the member
and non-member pairs the membership attacks score.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUM_CLIENTS = 3
CANARY_CLIENT = 0
SITE_NAMES = ("Alder", "Birch", "Cedar", "Dogwood", "Elm", "Fir", "Hazel", "Juniper")
QUESTION = "What is the access code of the site office {name}?"
PARAPHRASE = "Which code opens the door of site office {name}?"
ANSWER = "The access code of the site office {name} is {secret}."
SECRET_DIGITS = 6


@dataclass(frozen=True)
class Canary:
    """One planted question-answer pair with its random secret."""

    name: str
    secret: str

    @property
    def question(self) -> str:  # noqa: D102
        return QUESTION.format(name=self.name)

    @property
    def paraphrase(self) -> str:  # noqa: D102
        return PARAPHRASE.format(name=self.name)

    def answer(self, secret: str | None = None) -> str:
        """The canary's answer, with its own secret or a candidate in its place."""
        return ANSWER.format(name=self.name, secret=secret or self.secret)


@dataclass(frozen=True)
class Layout:
    """The planted data file and the sets the attacks score."""

    path: Path
    canaries: list[Canary]
    members: list[tuple[str, str]]  # client 0's own FAQ pairs (canaries excluded)
    non_members: list[tuple[str, str]]  # FAQ pairs in no party's data
    probe_members: list[tuple[str, str]]  # member questions among the public prompts
    probe_non_members: list[tuple[str, str]]  # non-member questions among them


def random_secret(rng: np.random.Generator) -> str:
    """A made-up numeric code of ``SECRET_DIGITS`` digits."""
    return "".join(str(d) for d in rng.integers(0, 10, size=SECRET_DIGITS))


def candidates(rng: np.random.Generator, secret: str, count: int) -> list[str]:
    """``count`` distinct codes of the secret's format, the secret itself excluded."""
    out: set[str] = set()
    while len(out) < count:
        code = random_secret(rng)
        if code != secret:
            out.add(code)
    return sorted(out)


def build_data(args: argparse.Namespace, folder: Path) -> Layout:
    """Write the planted data file; every row lands where the split puts it.

    ``split_dataset`` orders the file by a seeded permutation and the ``iid``
    partitioner cuts the private pool into shards, so we ask both where each file
    position ends up (on placeholder rows) and fill the positions accordingly:
    canary copies into client 0's shard, canary questions and paraphrases into the
    first slots of the public windows, the rest with FAQ rows. The real loader then
    checks the result.
    """
    import zaragoza_construction_faq

    from fedsem_app.config.sections import DataConfig
    from fedsem_app.data.partition import load_partition, partition_private
    from fedsem_app.data.records import QAPair
    from fedsem_app.data.split import load_split
    from fedsem_app.data.split import split_dataset as split

    cfg = DataConfig()
    rng = np.random.default_rng(args.seed)
    faq = [(r["q"], r["a"], r["category"]) for r in zaragoza_construction_faq.load(lang="en")]
    pool = iter(faq[i] for i in rng.permutation(len(faq)))
    canaries = [Canary(name, random_secret(rng)) for name in SITE_NAMES[: args.canaries]]

    n = args.records
    placeholder = [QAPair(i, "q", "a", "all") for i in range(n)]
    parts = split(placeholder, cfg.test_fraction, cfg.public_fraction, args.seed)
    shard = partition_private(parts.private, "iid", NUM_CLIENTS, CANARY_CLIENT, seed=args.seed)
    own = [q.id for q in shard]
    budget = args.prompts_per_round
    if len(parts.public) < args.rounds * budget:
        raise SystemExit(
            f"--records {n} gives {len(parts.public)} public prompts, fewer than "
            f"--rounds x --prompts-per-round = {args.rounds * budget}"
        )
    copies = args.canaries * args.copies
    if len(own) <= copies:
        raise SystemExit(f"client 0's shard holds {len(own)} rows: too few for {copies} canaries")

    rows: list[dict | None] = [None] * n

    def put(position: int, q: str, a: str, category: str) -> None:
        rows[position] = {"prompt": q, "answer": a, "category": category}

    for k, position in enumerate(own[:copies]):
        c = canaries[k % args.canaries]
        put(position, c.question, c.answer(), "canary")
    members = []
    for position in own[copies:]:
        q, a, cat = next(pool)
        put(position, q, a, cat)
        members.append((q, a))
    # Public windows: canary questions (odd rounds) or paraphrases (even rounds) first,
    # then member and non-member questions, alternating.
    probe_members, probe_non_members = [], []
    member_questions = iter(members)
    public_ids = [q.id for q in parts.public]
    for r in range(args.rounds):
        window = public_ids[r * budget : (r + 1) * budget]
        for k, c in enumerate(canaries):
            put(window[k], c.question if r % 2 == 0 else c.paraphrase, c.answer(), "probe")
        for k, position in enumerate(window[len(canaries) :]):
            if k % 2 == 0:
                q, a = next(member_questions)
                probe_members.append((q, a))
            else:
                q, a, _ = next(pool)
                probe_non_members.append((q, a))
            put(position, q, a, "probe")
    for position in range(n):
        if rows[position] is None:
            q, a, cat = next(pool)
            put(position, q, a, cat)
    non_members = [(q, a) for q, a, _ in (next(pool) for _ in range(args.non_members))]

    path = folder / "planted.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # Check with the app's own loader what each party will get.
    real = DataConfig(path=str(path), partitioner="iid")
    own_rows = load_partition(real, args.seed, NUM_CLIENTS, CANARY_CLIENT)
    planted = sum(row.category == "canary" for row in own_rows)
    first = [q.prompt for q in load_split(real, args.seed).public[: len(canaries)]]
    assert planted == copies, f"{planted} canary rows in client 0's partition, expected {copies}"
    assert first == [c.question for c in canaries], "canary questions are not public prompts 0.."
    return Layout(path, canaries, members, non_members, probe_members, probe_non_members)
