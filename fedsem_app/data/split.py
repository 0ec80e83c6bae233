"""The deterministic split of a dataset into test, public and private parts.

Shared: the server and every client derive the same split from ``(dataset, seed)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsem_app.config.errors import ConfigError
from fedsem_app.config.sections import DataConfig
from fedsem_app.data.records import PRIVATE, PUBLIC, ROLES, TEST, QAPair, load_records


@dataclass(frozen=True)
class DataSplit:
    """The three disjoint parts of a dataset.

    Attributes
    ----------
    test
        Held-out evaluation prompts with reference answers.
    public
        Public prompts; ``answer`` is ``""`` because the server owns only the prompts.
    private
        Private pool, to be partitioned across clients.

    """

    test: tuple[QAPair, ...]
    public: tuple[QAPair, ...]
    private: tuple[QAPair, ...]

    def covered(self) -> list[bool]:
        """For each test pair: whether a public prompt asks the same fact (same ``fact`` id)."""
        public_facts = {q.fact for q in self.public if q.fact}
        return [bool(q.fact) and q.fact in public_facts for q in self.test]


def split_dataset(
    records: Sequence[QAPair], test_fraction: float, public_fraction: float, seed: int
) -> DataSplit:
    """Split records into test / public / private parts, deterministically.

    A permutation from ``numpy.random.default_rng(seed)`` orders the records; the
    first ``round(n * test_fraction)`` are test, the next
    ``round(n * public_fraction)`` public, the rest private. Each part gets at
    least one record, and the private pool keeps at least one.

    Records that carry a role (``data.role-field``, or a generated dataset) are
    split by it instead (:func:`split_by_role`) and the fractions are not used.

    Parameters
    ----------
    records
        All records, in source order.
    test_fraction, public_fraction
        Fractions of ``len(records)`` for the test and public parts.
    seed
        Seeds the permutation: same records and seed, same split.

    Returns
    -------
    DataSplit
        Disjoint parts in permutation order; public answers are ``""``.

    Raises
    ------
    ValueError
        With fewer than 3 records, which cannot fill three parts.

    """
    if any(r.role for r in records):
        return split_by_role(records, seed)
    n = len(records)
    if n < 3:
        raise ValueError(f"need at least 3 records for a test/public/private split, got {n}")
    n_test = max(1, round(n * test_fraction))
    n_public = max(1, round(n * public_fraction))
    # Shrink public, then test, until at least one private record is left.
    n_public = max(1, min(n_public, n - n_test - 1))
    n_test = max(1, min(n_test, n - n_public - 1))

    order = np.random.default_rng(seed).permutation(n)
    shuffled = [records[i] for i in order]
    test = shuffled[:n_test]
    public = [dataclasses.replace(r, answer="") for r in shuffled[n_test : n_test + n_public]]
    private = shuffled[n_test + n_public :]
    return DataSplit(tuple(test), tuple(public), tuple(private))


def split_by_role(records: Sequence[QAPair], seed: int) -> DataSplit:
    """Split records by their ``role``: private, public (answer dropped) or test.

    Within each part the records keep the order of the seeded permutation that
    :func:`split_dataset` uses, so ``eval.num-prompts`` and the ``iid`` shards take
    a random sample, not the file's first rows.

    Parameters
    ----------
    records
        All records, each with a role from :data:`~fedsem_app.data.records.ROLES`.
    seed
        Seeds the order within each part.

    Returns
    -------
    DataSplit
        The parts. ``public`` may be empty: only strategies that exchange answers
        to public prompts need them, and the server refuses those runs.

    Raises
    ------
    ConfigError
        No test row, or no private row: the run could not be evaluated or trained.
    """
    order = np.random.default_rng(seed).permutation(len(records))
    shuffled = [records[i] for i in order]
    parts = {role: [r for r in shuffled if r.role == role] for role in ROLES}
    for role, purpose in ((TEST, "held-out test questions"), (PRIVATE, "training data")):
        if not parts[role]:
            raise ConfigError(
                "data.role-field",
                f"no row has the role {role!r} ({purpose}); the {len(records)} rows have "
                f"roles {sorted({r.role for r in records})}. Give some rows role {role!r}, "
                'or set data.role-field = "" for a random split.',
            )
    public = [dataclasses.replace(r, answer="") for r in parts[PUBLIC]]
    return DataSplit(tuple(parts[TEST]), tuple(public), tuple(parts[PRIVATE]))


def load_split(cfg: DataConfig, seed: int) -> DataSplit:
    """Load the configured dataset and split it (see :func:`split_dataset`).

    Parameters
    ----------
    cfg
        Dataset and split fractions.
    seed
        The run seed.

    Returns
    -------
    DataSplit
        The run's test, public and private parts.

    """
    return split_dataset(load_records(cfg), cfg.test_fraction, cfg.public_fraction, seed)
