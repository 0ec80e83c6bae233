"""Partitions of the private pool, one per client, with flwr-datasets partitioners.

Runs on the client (each takes its own partition) and in the benchmarks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import datasets
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
)

from fedsem_app.config.errors import ConfigError
from fedsem_app.config.sections import DataConfig
from fedsem_app.data.records import QAPair
from fedsem_app.data.split import load_split
from fedsem_app.registry import Registry

# Builds a flwr-datasets partitioner bound to the pool's table (columns
# "index" and "category"): (table, num_partitions, alpha, seed) -> partitioner.
PartitionerFactory = Callable[[datasets.Dataset, int, float, int], Partitioner]
PARTITIONERS: Registry[PartitionerFactory] = Registry("partitioner", key="data.partitioner")


@PARTITIONERS.register("iid")
def _iid(table: datasets.Dataset, num_partitions: int, alpha: float, seed: int) -> Partitioner:
    # Contiguous shards of the pool; the pool is already in seeded random order.
    partitioner = IidPartitioner(num_partitions=num_partitions)
    partitioner.dataset = table
    return partitioner


@PARTITIONERS.register("dirichlet")
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


@PARTITIONERS.register("category")
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
    factory = PARTITIONERS.lookup(partitioner)
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
