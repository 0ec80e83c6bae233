"""Question-answer data: loading, the deterministic split and client partitions (shared).

Every run derives its data from ``(dataset, seed)`` alone:

1. :func:`~fedsem_app.data.records.load_records` reads the dataset as
   :class:`~fedsem_app.data.records.QAPair` rows (packaged FAQ, a local JSON/JSONL/CSV/Parquet
   file, or a hub dataset).
2. :func:`~fedsem_app.data.split.split_dataset` cuts them into held-out *test*
   pairs, *public* prompts (answers dropped: the server owns only the prompts) and a *private* pool
   (at random by fractions, or by each row's role where the data fixes it: ``data.role-field``
   or the generated private facts of :mod:`~fedsem_app.data.facts`).
3. :func:`~fedsem_app.data.partition.partition_private` gives each client its slice of
   the private pool with a flwr-datasets partitioner (``iid``, ``dirichlet`` by
   category, ``category``).

Server and clients call the same functions with the same seed, so they agree on
the split without exchanging any data.
"""
