"""A private-facts benchmark: invented people and their attributes, generated from a seed.

Shared: the server and every client generate the same rows from the run config
(``data.name = "facts"``); ``python -m fedsem_app.data.facts --out facts.jsonl``
writes them to a file that ``data.path`` + ``data.role-field = "role"`` reads back.

Each entity is a person with an invented name (built from syllables, so no base
model can know it) and a few attributes (home town, profession, birth year,
favourite colour) drawn from fixed lists. Every fact (entity, attribute) is asked
in several phrasings, all answered by one short sentence that restates the question
("Zorvik's home town is Belmora."), so a model learns the value, not one
question's wording. The phrasings of a fact take fixed roles:

- ``data.facts-private-phrasings`` of them are private training data,
- one is a public prompt (its answer is dropped by the split),
- one is the test question.

The entity's name is the row's category, so ``data.partitioner = "category"``
gives each client the facts of its own entities and no entity's facts reach two
clients. ``data.facts-public-coverage`` is the share of facts whose public
phrasing is a public prompt; every other fact's public slot asks the same
question of a *decoy* entity that no client holds, so the number of public
prompts, and the work of answering and training on them, does not change with
the coverage. A test question is *covered* when its fact has a public prompt.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsem_app.config.errors import check
from fedsem_app.config.sections import DataConfig
from fedsem_app.data.records import DATASETS, PRIVATE, PUBLIC, ROLES, TEST, QAPair, rows_to_pairs

# Syllables of invented names: two or three give names like "Zorvik" or "Quelandor".
SYLLABLES = (
    "zor", "vik", "bel", "mar", "quel", "dra", "fen", "lox", "tir", "nak", "sul", "bri",
    "gav", "oth", "ryn", "pel", "kes", "dun", "wix", "yal", "thar", "mib", "osk", "jen",
)  # fmt: skip


@dataclass(frozen=True)
class Attribute:
    """One kind of fact: its values, its phrasings and the answer sentence.

    ``questions`` and ``answer`` are format strings with ``{name}`` (and the answer
    ``{value}``); the value must appear verbatim in the answer.
    """

    key: str
    values: tuple[str, ...]
    questions: tuple[str, ...]
    answer: str


ATTRIBUTES = (
    Attribute(
        "home-town",
        (
            "Belmora",
            "Quistadel",
            "Varnholm",
            "Ostrelle",
            "Dunmarrow",
            "Kelvarin",
            "Tessaly Cove",
            "Brimhollow",
            "Zandrell",
            "Pellinor",
            "Arkwendle",
            "Morrowick",
            "Sablecrest",
            "Fennimoor",
            "Galdreth",
            "Hollowmere",
            "Ivrensk",
            "Jorvale",
        ),
        (
            "Where is {name} from?",
            "What is the home town of {name}?",
            "In which town did {name} grow up?",
            "Which town does {name} call home?",
            "Name the town {name} comes from.",
            "Tell me {name}'s home town.",
        ),
        "{name}'s home town is {value}.",
    ),
    Attribute(
        "profession",
        (
            "lamplighter",
            "cartographer",
            "glassblower",
            "beekeeper",
            "clockmaker",
            "ropemaker",
            "falconer",
            "bookbinder",
            "perfumer",
            "cooper",
            "locksmith",
            "shipwright",
            "candlemaker",
            "tanner",
            "stonemason",
            "weaver",
        ),
        (
            "What does {name} do for a living?",
            "What is {name}'s profession?",
            "What is {name}'s job?",
            "Which trade does {name} work in?",
            "How does {name} earn a living?",
            "Tell me {name}'s occupation.",
        ),
        "{name} works as a {value}.",
    ),
    Attribute(
        "birth-year",
        tuple(str(year) for year in range(1702, 1990, 7)),
        (
            "When was {name} born?",
            "In which year was {name} born?",
            "What is {name}'s year of birth?",
            "Which year is {name}'s birth year?",
            "Name the year {name} was born.",
            "Tell me the birth year of {name}.",
        ),
        "{name} was born in {value}.",
    ),
    Attribute(
        "colour",
        (
            "crimson",
            "teal",
            "amber",
            "violet",
            "ochre",
            "indigo",
            "saffron",
            "olive",
            "magenta",
            "turquoise",
            "maroon",
            "silver",
        ),
        (
            "What is {name}'s favourite colour?",
            "Which colour does {name} like best?",
            "What colour is {name}'s favourite?",
            "Name {name}'s favourite colour.",
            "Which colour does {name} prefer?",
            "Tell me the colour {name} loves most.",
        ),
        "{name}'s favourite colour is {value}.",
    ),
)
# Each fact needs its private phrasings plus one public and one test phrasing.
MAX_PRIVATE_PHRASINGS = min(len(a.questions) for a in ATTRIBUTES) - 2
DECOY_CATEGORY = "decoy"
MAX_ENTITIES = 1000


def check_facts_shape(cfg: DataConfig) -> None:
    """Validate the ``data.facts-*`` settings (called by :class:`DataConfig`).

    Raises
    ------
    ConfigError
        A count out of range or a coverage outside [0, 1].
    """
    # Twice as many distinct names (people and decoys) must fit in the syllable space.
    check(
        1 <= cfg.facts_entities <= MAX_ENTITIES,
        "data.facts-entities",
        f"must be in [1, {MAX_ENTITIES}], got {cfg.facts_entities}",
    )
    check(
        1 <= cfg.facts_attributes <= len(ATTRIBUTES),
        "data.facts-attributes",
        f"must be in [1, {len(ATTRIBUTES)}] ({', '.join(a.key for a in ATTRIBUTES)})",
    )
    check(
        1 <= cfg.facts_private_phrasings <= MAX_PRIVATE_PHRASINGS,
        "data.facts-private-phrasings",
        f"must be in [1, {MAX_PRIVATE_PHRASINGS}]: each fact has "
        f"{MAX_PRIVATE_PHRASINGS + 2} phrasings, one public and one test",
    )
    check(
        0.0 <= cfg.facts_public_coverage <= 1.0,
        "data.facts-public-coverage",
        f"must be in [0, 1], got {cfg.facts_public_coverage}",
    )


def invented_names(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct names of two or three syllables, in draw order."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        parts = rng.choice(len(SYLLABLES), size=int(rng.integers(2, 4)), replace=False)
        name = "".join(SYLLABLES[i] for i in parts).capitalize()
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def generate_facts(
    *,
    seed: int = 0,
    entities: int = 24,
    attributes: int = 3,
    private_phrasings: int = 3,
    public_coverage: float = 1.0,
) -> list[dict[str, Any]]:
    """Rows of the private-facts dataset, deterministically from ``seed``.

    Parameters
    ----------
    seed
        Seeds names, values, which phrasing takes which role and which facts are covered.
    entities
        Invented people; each is its own category.
    attributes
        How many of :data:`ATTRIBUTES` (in order) each person has.
    private_phrasings
        Training phrasings per fact (each with the same answer sentence).
    public_coverage
        Share of facts (rounded) whose public phrasing is a public prompt; the rest
        get a decoy entity's public prompt instead.

    Returns
    -------
    list[dict]
        Rows with ``prompt``, ``answer``, ``category`` (the entity), ``role``
        (private / public / test), ``value`` (the short right answer), ``fact``
        (``entity/attribute``), ``entity``, ``attribute`` and ``covered``.
        Per entity and attribute: the private rows, then the public row, then the
        test row; decoy public rows come last.
    """
    rng = np.random.default_rng(seed)
    names = invented_names(2 * entities, rng)
    people, decoys = names[:entities], names[entities:]
    kinds = ATTRIBUTES[:attributes]
    values = {
        (person, kind.key): kind.values[int(rng.integers(len(kind.values)))]
        for person in names
        for kind in kinds
    }
    # Phrasing order per fact: [test, public, private...]; rotating which template
    # takes which role keeps a hard wording from always being the test question.
    orders = {
        (person, kind.key): [int(i) for i in rng.permutation(len(kind.questions))]
        for person in people
        for kind in kinds
    }
    facts = [(person, kind) for person in people for kind in kinds]
    n_covered = round(public_coverage * len(facts))
    covered = {f"{facts[i][0]}/{facts[i][1].key}" for i in rng.permutation(len(facts))[:n_covered]}

    rows: list[dict[str, Any]] = []
    decoy_rows: list[dict[str, Any]] = []
    for person, kind in facts:
        fact = f"{person}/{kind.key}"
        order = orders[(person, kind.key)]
        is_covered = fact in covered
        rows += [
            _row(person, kind, i, values, PRIVATE, fact, is_covered)
            for i in order[2 : 2 + private_phrasings]
        ]
        if is_covered:
            rows.append(_row(person, kind, order[1], values, PUBLIC, fact, True))
        else:
            # The public slot asks a person no client knows, in the same wording.
            decoy = decoys[people.index(person)]
            row = _row(decoy, kind, order[1], values, PUBLIC, f"{decoy}/{kind.key}", False)
            decoy_rows.append({**row, "category": DECOY_CATEGORY})
        rows.append(_row(person, kind, order[0], values, TEST, fact, is_covered))
    return rows + decoy_rows


def _row(
    person: str,
    kind: Attribute,
    template: int,
    values: dict[tuple[str, str], str],
    role: str,
    fact: str,
    covered: bool,
) -> dict[str, Any]:
    value = values[(person, kind.key)]
    return {
        "prompt": kind.questions[template].format(name=person),
        "answer": kind.answer.format(name=person, value=value),
        "category": person,
        "role": role,
        "value": value,
        "fact": fact,
        "entity": person,
        "attribute": kind.key,
        "covered": covered,
    }


def facts_rows(cfg: DataConfig) -> list[dict[str, Any]]:
    """The rows of :func:`generate_facts` for the run config's ``data.facts-*`` settings."""
    return generate_facts(
        seed=cfg.facts_seed,
        entities=cfg.facts_entities,
        attributes=cfg.facts_attributes,
        private_phrasings=cfg.facts_private_phrasings,
        public_coverage=cfg.facts_public_coverage,
    )


@DATASETS.register("facts")
def _facts(cfg: DataConfig) -> list[QAPair]:
    """Generate the private-facts dataset (this module); rows carry roles."""
    return rows_to_pairs(facts_rows(cfg))


def write_jsonl(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write rows as JSON lines (read back with ``data.path`` and ``data.role-field``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write the generated facts to a JSONL file."""
    defaults = DataConfig()
    parser = argparse.ArgumentParser(
        prog="python -m fedsem_app.data.facts",
        description="Write the private-facts dataset as JSONL (fields: prompt, answer, "
        "category, role, value, fact, entity, attribute, covered). Train on it with "
        'data.path = "FILE" and data.role-field = "role".',
    )
    parser.add_argument("--out", required=True, type=Path, help="JSONL file to write")
    parser.add_argument("--seed", type=int, default=defaults.facts_seed)
    parser.add_argument("--entities", type=int, default=defaults.facts_entities)
    parser.add_argument("--attributes", type=int, default=defaults.facts_attributes)
    parser.add_argument("--private-phrasings", type=int, default=defaults.facts_private_phrasings)
    parser.add_argument("--public-coverage", type=float, default=defaults.facts_public_coverage)
    args = parser.parse_args(argv)
    cfg = DataConfig(
        name="facts",
        facts_seed=args.seed,
        facts_entities=args.entities,
        facts_attributes=args.attributes,
        facts_private_phrasings=args.private_phrasings,
        facts_public_coverage=args.public_coverage,
    )  # validates the shape, with the run-config key in any error
    rows = facts_rows(cfg)
    write_jsonl(rows, args.out)
    counts = {role: sum(r["role"] == role for r in rows) for role in ROLES}
    print(
        f"wrote {len(rows)} rows to {args.out} ("
        + ", ".join(f"{n} {role}" for role, n in counts.items())
        + ")"
    )


if __name__ == "__main__":
    main()
