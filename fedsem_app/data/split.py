"""The deterministic split of a dataset into test, public and private parts.

Shared: the server and every client derive the same split from ``(dataset, seed)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsem_app.config.sections import DataConfig
from fedsem_app.data.records import QAPair, load_records


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


def split_dataset(
    records: Sequence[QAPair], test_fraction: float, public_fraction: float, seed: int
) -> DataSplit:
    """Split records into test / public / private parts, deterministically.

    A permutation from ``numpy.random.default_rng(seed)`` orders the records; the
    first ``round(n * test_fraction)`` are test, the next
    ``round(n * public_fraction)`` public, the rest private. Each part gets at
    least one record, and the private pool keeps at least one.

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
