"""Question-answer data: loading, the deterministic split and client partitions.

Every run derives its data from ``(dataset, seed)`` alone:

1. :func:`load_records` reads the dataset as :class:`QAPair` rows (packaged FAQ,
   a local JSON/JSONL/CSV/Parquet file, or a hub dataset).
2. :func:`split_dataset` cuts them into held-out *test* pairs, *public* prompts
   (answers dropped: the server owns only the prompts) and a *private* pool.
3. :func:`partition_private` gives each client its slice of the private pool with
   a flwr-datasets partitioner (``iid``, ``dirichlet`` by category, ``category``).

Server and clients call the same functions with the same seed, so they agree on
the split without exchanging any data.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
)

from fedsem_app.config import ConfigError, DataConfig

DEFAULT_CATEGORY = "all"


@dataclass(frozen=True)
class QAPair:
    """One prompt with its reference answer.

    Attributes
    ----------
    id
        Stable integer id: the row's position in the source dataset.
    prompt, answer
        The texts; ``answer`` is ``""`` for public prompts.
    category
        Topic label used by the non-IID partitioners (``"all"`` when the data has none).

    """

    id: int
    prompt: str
    answer: str
    category: str


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


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

DatasetLoader = Callable[[DataConfig], list[QAPair]]
DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register a dataset loader under ``name`` (usable as ``data.name``).

    Parameters
    ----------
    name
        The ``data.name`` value that selects this loader.

    Returns
    -------
    Callable
        A decorator that records the loader and returns it unchanged.

    """

    def decorator(loader: DatasetLoader) -> DatasetLoader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = loader
        return loader

    return decorator


@register_dataset("construction-faq")
def _construction_faq(cfg: DataConfig) -> list[QAPair]:
    """Load the packaged English construction FAQ (503 pairs, 39 categories); works offline."""
    import zaragoza_construction_faq

    rows = zaragoza_construction_faq.load(lang="en")
    return _to_pairs(rows, prompt_field="q", answer_field="a", category_field="category")


# File suffix -> `datasets` builder name.
FILE_FORMATS: dict[str, str] = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


def load_records(cfg: DataConfig) -> list[QAPair]:
    """Load the configured dataset as question-answer pairs.

    ``cfg.path`` wins over ``cfg.name``. A name in :data:`DATASETS` uses its
    registered loader; any other name is tried as a hub dataset (``train`` split)
    with the configured field mapping.

    Parameters
    ----------
    cfg
        Dataset name or local path and the field mapping.

    Returns
    -------
    list[QAPair]
        Rows with a non-empty prompt and answer, in source order.

    Raises
    ------
    ConfigError
        When the file or dataset cannot be read or lacks a mapped field; the
        message names the key and the fix.

    """
    if cfg.path:
        return _load_file(cfg.path, cfg, key="data.path")
    if cfg.name in DATASETS:
        return DATASETS[cfg.name](cfg)
    return _load_hub(cfg)


def load_node_private(path: str, cfg: DataConfig) -> list[QAPair]:
    """Read a node's own private data file; every row is that node's private data.

    Parameters
    ----------
    path
        A local JSON/JSONL/CSV/Parquet file (the node config's ``data-path``).
    cfg
        Supplies the field mapping.

    Returns
    -------
    list[QAPair]
        All rows with a non-empty prompt and answer (no split, no partition).

    """
    return _load_file(path, cfg, key="data-path")


def _load_file(path: str, cfg: DataConfig, *, key: str) -> list[QAPair]:
    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ConfigError(
            key,
            f"cannot read {str(file)!r}: unknown suffix {suffix!r}; "
            f"use one of {', '.join(sorted(FILE_FORMATS))}",
        )
    if not file.is_file():
        raise ConfigError(key, f"file {str(file)!r} does not exist; give an existing file")
    try:
        table = datasets.load_dataset(FILE_FORMATS[suffix], data_files=str(file), split="train")
    except Exception as exc:  # datasets raises many types for malformed or empty files
        raise ConfigError(
            key,
            f"could not read {str(file)!r} as {FILE_FORMATS[suffix]} ({type(exc).__name__}: "
            f"{exc}); check that the file is non-empty and well-formed",
        ) from exc
    pairs = _map_fields(table, cfg, source=f"file {str(file)!r}")
    if not pairs:
        raise ConfigError(
            key,
            f"{str(file)!r} has no row with a non-empty prompt and answer; "
            "check the file and the data.prompt-field / data.answer-field mapping",
        )
    return pairs


def _load_hub(cfg: DataConfig) -> list[QAPair]:
    try:
        table = datasets.load_dataset(cfg.name, split="train")
    except Exception as exc:  # offline, unknown name, no train split, ...
        close = difflib.get_close_matches(cfg.name, DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            "data.name",
            f"{cfg.name!r} is not a registered dataset{hint} and could not be loaded from "
            f"the hub ({type(exc).__name__}: {exc}). Registered names: "
            f"{', '.join(sorted(DATASETS))}. Hub names need hub access; put local "
            "JSON/JSONL/CSV/Parquet files in data.path instead.",
        ) from exc
    return _map_fields(table, cfg, source=f"hub dataset {cfg.name!r}")


def _map_fields(table: datasets.Dataset, cfg: DataConfig, *, source: str) -> list[QAPair]:
    columns = list(table.column_names)
    for key, name in (
        ("data.prompt-field", cfg.prompt_field),
        ("data.answer-field", cfg.answer_field),
    ):
        if name not in columns:
            raise ConfigError(
                key,
                f"field {name!r} is not in {source}; its columns are {columns}. "
                f"Set {key} to one of them.",
            )
    # A missing category column is fine: everything falls into one category.
    category = cfg.category_field if cfg.category_field in columns else None
    return _to_pairs(
        table,
        prompt_field=cfg.prompt_field,
        answer_field=cfg.answer_field,
        category_field=category,
    )


def _to_pairs(
    rows: Any, *, prompt_field: str, answer_field: str, category_field: str | None
) -> list[QAPair]:
    """Convert mapping rows to pairs, dropping rows with an empty prompt or answer.

    Ids are source row positions, so they stay stable when rows are dropped.
    """
    pairs = []
    for position, row in enumerate(rows):
        prompt = _text(row.get(prompt_field))
        answer = _text(row.get(answer_field))
        if not prompt or not answer:
            continue
        category = _text(row.get(category_field)) if category_field else ""
        pairs.append(QAPair(position, prompt, answer, category or DEFAULT_CATEGORY))
    return pairs


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


# ---------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Partition
# ---------------------------------------------------------------------------

# Builds a flwr-datasets partitioner bound to the pool's table (columns
# "index" and "category"): (table, num_partitions, alpha, seed) -> partitioner.
PartitionerFactory = Callable[[datasets.Dataset, int, float, int], Partitioner]
PARTITIONER_FACTORIES: dict[str, PartitionerFactory] = {}


def register_partitioner(name: str) -> Callable[[PartitionerFactory], PartitionerFactory]:
    """Register a partitioner factory under ``name`` (usable as ``data.partitioner``).

    Parameters
    ----------
    name
        The ``data.partitioner`` value that selects this factory.

    Returns
    -------
    Callable
        A decorator that records the factory and returns it unchanged.

    """

    def decorator(factory: PartitionerFactory) -> PartitionerFactory:
        if name in PARTITIONER_FACTORIES:
            raise ValueError(f"partitioner {name!r} is already registered")
        PARTITIONER_FACTORIES[name] = factory
        return factory

    return decorator


@register_partitioner("iid")
def _iid(table: datasets.Dataset, num_partitions: int, alpha: float, seed: int) -> Partitioner:
    # Contiguous shards of the pool; the pool is already in seeded random order.
    partitioner = IidPartitioner(num_partitions=num_partitions)
    partitioner.dataset = table
    return partitioner


@register_partitioner("dirichlet")
def _dirichlet(
    table: datasets.Dataset, num_partitions: int, alpha: float, seed: int
) -> Partitioner:
    # min_partition_size=1: every client gets data, yet small pools still succeed
    # within the partitioner's 10 resampling attempts. self_balancing stops a
    # client from taking more rows once it holds the average, which keeps the
    # label skew of alpha while avoiding one client owning most of the pool.
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="category",
        alpha=alpha,
        min_partition_size=1,
        self_balancing=True,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = table
    return partitioner


@register_partitioner("category")
def _category(table: datasets.Dataset, num_partitions: int, alpha: float, seed: int) -> Partitioner:
    # Each category must belong to exactly one client. PathologicalPartitioner
    # splits a category among every partition that draws it, and
    # GroupedNaturalIdPartitioner cannot be told the number of groups, so we
    # assign categories to clients here and let NaturalIdPartitioner cut by owner.
    owner_of = _assign_categories(table["category"], num_partitions)
    partitioner = NaturalIdPartitioner(partition_by="owner")
    partitioner.dataset = table.add_column("owner", [owner_of[c] for c in table["category"]])
    return partitioner


def _assign_categories(categories: Sequence[str], num_partitions: int) -> dict[str, int]:
    """Give each category to one client, balancing row counts.

    Greedy largest-first: categories by descending size (ties by name) each go to
    the client with the fewest rows so far (ties: lowest id). Deterministic, and
    with at least ``num_partitions`` categories every client gets one, because an
    empty client is always the smallest.
    """
    sizes = Counter(categories)
    if len(sizes) < num_partitions:
        raise ConfigError(
            "data.partitioner",
            f"'category' gives each client whole categories, but the private pool has "
            f"{len(sizes)} categories for {num_partitions} clients; use 'dirichlet' "
            "or 'iid', or fewer clients",
        )
    load = [0] * num_partitions
    owner_of = {}
    for category, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        client = load.index(min(load))
        owner_of[category] = client
        load[client] += size
    return owner_of


def partition_private(
    private: Sequence[QAPair],
    partitioner: str,
    num_partitions: int,
    partition_id: int,
    *,
    alpha: float = 0.5,
    seed: int = 42,
) -> list[QAPair]:
    """One client's slice of the private pool.

    Parameters
    ----------
    private
        The private pool (:attr:`DataSplit.private`).
    partitioner
        ``"iid"`` (equal random shards), ``"dirichlet"`` (category proportions
        drawn from Dirichlet(``alpha``)) or ``"category"`` (each category owned
        by exactly one client, row counts balanced greedily).
    num_partitions, partition_id
        How many clients share the pool and which one asks.
    alpha
        Dirichlet concentration (``dirichlet`` only): smaller is more skewed.
    seed
        Seeds the Dirichlet draws and shuffling; same inputs, same partition.

    Returns
    -------
    list[QAPair]
        The partition's pairs. Partitions are disjoint and together cover the pool.

    Raises
    ------
    ConfigError
        Unknown partitioner, bad partition ids, more partitions than records (or
        than categories for ``category``), or a Dirichlet draw that leaves a client
        empty after the partitioner's retries.

    """
    if partitioner not in PARTITIONER_FACTORIES:
        raise ConfigError(
            "data.partitioner",
            f"got {partitioner!r}; allowed values: {', '.join(sorted(PARTITIONER_FACTORIES))}",
        )
    if not 0 <= partition_id < num_partitions:
        raise ConfigError("partition-id", f"must be in [0, {num_partitions}), got {partition_id}")
    if num_partitions > len(private):
        raise ConfigError(
            "num-partitions",
            f"{num_partitions} clients but only {len(private)} private records; use fewer "
            "clients, a larger dataset or smaller data.test-fraction / data.public-fraction",
        )
    # Partitioners work on a table of pool positions; rows map back to the pairs.
    table = datasets.Dataset.from_dict(
        {"index": list(range(len(private))), "category": [r.category for r in private]}
    )
    factory = PARTITIONER_FACTORIES[partitioner]
    try:
        part = factory(table, num_partitions, alpha, seed).load_partition(partition_id)
    except ConfigError:
        raise
    except ValueError as exc:  # flwr-datasets gives up, e.g. a Dirichlet draw left a client empty
        raise ConfigError(
            "data.dirichlet-alpha" if partitioner == "dirichlet" else "data.partitioner",
            f"could not build {num_partitions} non-empty {partitioner!r} partitions of "
            f"{len(private)} records ({exc}); raise data.dirichlet-alpha, use fewer "
            "clients or data.partitioner='iid'",
        ) from exc
    return [private[i] for i in part["index"]]


def load_partition(
    cfg: DataConfig, seed: int, num_partitions: int, partition_id: int
) -> list[QAPair]:
    """Load, split and partition: the private data of client ``partition_id``.

    Parameters
    ----------
    cfg
        Dataset, split fractions and partitioner settings.
    seed
        The run seed (split and partition).
    num_partitions, partition_id
        How many clients share the private pool and which one asks.

    Returns
    -------
    list[QAPair]
        That client's private pairs.

    """
    split = load_split(cfg, seed)
    return partition_private(
        split.private,
        cfg.partitioner,
        num_partitions,
        partition_id,
        alpha=cfg.dirichlet_alpha,
        seed=seed,
    )
