"""Round-time model: expected values worked out by hand (no timing is measured)."""

from __future__ import annotations

import math

import pytest

from fedsem_app.tools.roundtime import (
    crossover_bandwidth,
    decode_seconds,
    round_seconds,
    transfer_seconds,
)


def test_transfer_seconds_is_bits_over_bandwidth():
    # 1 MB = 8,000,000 bits at 8 Mbit/s: 1 s
    assert transfer_seconds(1_000_000, 8e6) == pytest.approx(1.0)


def test_transfer_seconds_of_nodes_sharing_one_link_add_up():
    # three nodes' 1 MB each over one 8 Mbit/s link: 3 s
    assert transfer_seconds(1_000_000, 8e6, nodes_per_link=3) == pytest.approx(3.0)


def test_round_seconds_adds_both_directions_to_the_fixed_part():
    # 2 MB up + 3 MB down = 40,000,000 bits at 20 Mbit/s: 2 s; plus 10 s fixed
    assert round_seconds(10.0, 2e6, 3e6, 20e6) == pytest.approx(12.0)


def test_crossover_is_where_both_rounds_take_equally_long():
    # FedSem: 15 s fixed, 20 kB; FedAvg-LoRA: 10 s fixed, 10.02 MB.
    # 8 * (10,020,000 - 20,000) = 80,000,000 bits over 15 - 10 = 5 s: 16 Mbit/s.
    bw = crossover_bandwidth(15.0, 20_000, 10.0, 10_020_000)
    assert bw == pytest.approx(16e6)
    # At 16 Mbit/s: FedSem 15 + 160,000 / 16e6 = 15.01 s; LoRA 10 + 80.16e6 / 16e6 = 15.01 s
    assert round_seconds(15.0, 20_000, 0, bw) == pytest.approx(
        round_seconds(10.0, 10_020_000, 0, bw)
    )
    # Below it FedSem is faster, above it slower.
    assert round_seconds(15.0, 20_000, 0, 8e6) < round_seconds(10.0, 10_020_000, 0, 8e6)
    assert round_seconds(15.0, 20_000, 0, 32e6) > round_seconds(10.0, 10_020_000, 0, 32e6)


def test_crossover_scales_with_the_nodes_sharing_a_link():
    # four nodes on one link carry four times the extra bits: 4 * 16 = 64 Mbit/s
    assert crossover_bandwidth(15.0, 20_000, 10.0, 10_020_000, 4) == pytest.approx(64e6)


def test_crossover_edge_cases():
    # fewer bytes and less compute: faster at every bandwidth
    assert crossover_bandwidth(5.0, 20_000, 10.0, 1e6) == math.inf
    # more bytes: never faster on slow links
    assert crossover_bandwidth(15.0, 2e6, 10.0, 1e6) == 0.0
    assert crossover_bandwidth(5.0, 2e6, 10.0, 1e6) == 0.0
    # same bytes, same compute: no bandwidth where it is faster
    assert crossover_bandwidth(10.0, 1e6, 10.0, 1e6) == 0.0


def test_decode_seconds_reads_every_weight_per_step():
    # 1 GB of weights at 1 TB/s: 1 ms a step at the bound; half of it: 2 ms; 10 steps: 20 ms
    assert decode_seconds(1e9, 10, 1e12, 0.5) == pytest.approx(0.02)


@pytest.mark.parametrize(
    "call",
    [
        lambda: transfer_seconds(1.0, 0.0),
        lambda: transfer_seconds(-1.0, 1e6),
        lambda: transfer_seconds(1.0, 1e6, nodes_per_link=0),
        lambda: decode_seconds(1e9, 10, 1e12, 0.0),
        lambda: decode_seconds(1e9, 10, 0.0, 0.5),
    ],
)
def test_bad_arguments_are_refused(call):
    with pytest.raises(ValueError):
        call()
