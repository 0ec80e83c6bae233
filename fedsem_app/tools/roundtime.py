"""Round time on a network of a given bandwidth: compute plus bytes over bandwidth (offline tool).

Pure functions, used by ``bench/shaped_network.py`` to check the model against
rounds measured on shaped links and to find the crossover bandwidth below which
FedSem's round is faster than FedAvg-LoRA's.

Model
-----
A round is a fixed part (client compute, server work, Flower's own scheduling and
process start-up) plus the time its bytes take on the links::

    round_seconds = fixed_s + 8 * (bytes_up + bytes_down) * nodes_per_link / bandwidth

* ``bytes_up`` / ``bytes_down`` are one node's bytes in one round (all messages of
  the round, train and evaluate). Every node moves the same bytes (true for
  FedSem and FedAvg-LoRA with equal prompt budgets).
* ``bandwidth`` is the payload rate of one link in bit/s, the same in both
  directions. ``nodes_per_link = 1``: every node has its own link (the measured
  layout, one shaped veth pair per SuperNode), so the nodes' transfers run in
  parallel and the round waits for one node's bytes. ``nodes_per_link = K``: all K
  nodes share one link of that bandwidth (the server's), so it carries K nodes'
  bytes.
* Up and down are not overlapped: in each phase the server sends, the clients
  compute, then they reply. Latency and TCP slow start are ignored (a round has a
  handful of messages; on the measured links they cost well under a second).

Crossover: FedSem computes more (it answers the public prompts) and sends fewer
bytes; FedAvg-LoRA the reverse. With fixed parts ``C_s``, ``C_l`` and bytes
``B_s``, ``B_l``, FedSem is faster when ``C_s + 8 B_s k / bw < C_l + 8 B_l k / bw``,
that is below ``bw* = 8 k (B_l - B_s) / (C_s - C_l)``.
"""

from __future__ import annotations

import math


def transfer_seconds(bytes_per_node: float, bandwidth_bps: float, nodes_per_link: int = 1) -> float:
    """Seconds that ``bytes_per_node`` (each node's bytes) take on links of ``bandwidth_bps``.

    Parameters
    ----------
    bytes_per_node : float
        Bytes one node sends and receives in the round (up + down).
    bandwidth_bps : float
        Payload rate of a link in bit/s (per direction).
    nodes_per_link : int
        How many nodes share one link (1: each node its own link).

    Returns
    -------
    float
        ``8 * bytes_per_node * nodes_per_link / bandwidth_bps``.
    """
    if bandwidth_bps <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth_bps}")
    if bytes_per_node < 0 or nodes_per_link < 1:
        raise ValueError("bytes must be >= 0 and nodes_per_link >= 1")
    return 8.0 * bytes_per_node * nodes_per_link / bandwidth_bps


def round_seconds(
    fixed_s: float,
    bytes_up: float,
    bytes_down: float,
    bandwidth_bps: float,
    nodes_per_link: int = 1,
) -> float:
    """Predicted round time: the fixed part plus one node's bytes over the bandwidth.

    Parameters
    ----------
    fixed_s : float
        Seconds that do not depend on the network: client compute (the slowest
        node's train + generate, then its evaluate), server work, scheduling.
    bytes_up, bytes_down : float
        One node's bytes in the round, to and from the server.
    bandwidth_bps : float
        Payload rate of a link in bit/s.
    nodes_per_link : int
        Nodes sharing one link (see the module docstring).

    Returns
    -------
    float
        Seconds.
    """
    return fixed_s + transfer_seconds(bytes_up + bytes_down, bandwidth_bps, nodes_per_link)


def crossover_bandwidth(
    fedsem_fixed_s: float,
    fedsem_bytes: float,
    lora_fixed_s: float,
    lora_bytes: float,
    nodes_per_link: int = 1,
) -> float:
    """The bandwidth (bit/s) below which FedSem's round is faster than FedAvg-LoRA's.

    Parameters
    ----------
    fedsem_fixed_s, lora_fixed_s : float
        Each strategy's network-independent seconds per round.
    fedsem_bytes, lora_bytes : float
        Each strategy's bytes per node and round (up + down).
    nodes_per_link : int
        Nodes sharing one link.

    Returns
    -------
    float
        ``8 * nodes_per_link * (lora_bytes - fedsem_bytes) / (fedsem_fixed_s -
        lora_fixed_s)``; ``inf`` if FedSem is faster at every bandwidth (no more
        compute, fewer bytes); ``0.0`` if no such bandwidth exists (FedSem sends
        more bytes, or the same bytes with no less compute).
    """
    extra_bits = 8.0 * nodes_per_link * (lora_bytes - fedsem_bytes)
    extra_seconds = fedsem_fixed_s - lora_fixed_s
    if extra_bits < 0:  # FedSem sends more: the slower the link, the worse it does
        return 0.0
    if extra_seconds <= 0:  # no more compute (and no more bytes)
        return math.inf if extra_bits > 0 or extra_seconds < 0 else 0.0
    return extra_bits / extra_seconds


def decode_seconds(
    weight_bytes: float,
    steps: int,
    memory_bandwidth: float,
    fraction_of_bound: float,
) -> float:
    """Seconds for ``steps`` decoding steps of one batch when each step reads all weights.

    The bound: a decoding step reads every weight once, so it takes at least
    ``weight_bytes / memory_bandwidth``; a real implementation reaches
    ``fraction_of_bound`` of that speed (KV cache, activations, prefill and kernel
    launch costs are folded into the fraction).

    Parameters
    ----------
    weight_bytes : float
        Bytes of the weights read per step (parameters x bytes per parameter).
    steps : int
        Decoding steps (new tokens per answer; the batch runs until its longest answer).
    memory_bandwidth : float
        Bytes per second the weights are read at.
    fraction_of_bound : float
        Measured or assumed fraction of the bound, in (0, 1].

    Returns
    -------
    float
        ``steps * weight_bytes / (memory_bandwidth * fraction_of_bound)``.
    """
    if memory_bandwidth <= 0 or not 0 < fraction_of_bound <= 1:
        raise ValueError("memory bandwidth must be > 0 and the fraction in (0, 1]")
    return steps * weight_bytes / (memory_bandwidth * fraction_of_bound)
