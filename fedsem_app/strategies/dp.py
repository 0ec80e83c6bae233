"""Differential privacy for the parameter strategies: Flower's DP wrappers plus an accountant.

Runs on the server; the clients' clipping mod is
:func:`fedsem_app.clients.mods.dp_clipping_mod`.

``dp.noise-multiplier > 0`` wraps ``fedavg-lora`` / ``fedprox-lora`` in Flower's
central-DP strategy with fixed clipping (DP-FedAvg, McMahan et al. 2018): every
client's adapter update (trained adapter minus the global one it received) is
clipped to L2 norm ``dp.clipping-norm``, on the server
(:class:`~flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping`) or
on each client with Flower's ``fixedclipping_mod``
(:class:`~flwr.serverapp.strategy.DifferentialPrivacyClientSideFixedClipping`),
the clipped updates are averaged with equal weights, and the server adds Gaussian
noise of standard deviation ``noise-multiplier x clipping-norm / clients`` to the
mean. Each round is then a Gaussian mechanism of noise multiplier ``z`` on the
sum of clipped updates; Google's ``dp-accounting`` (RDP) composes the rounds into
the ``(epsilon, delta)`` reported per round and in total.

What it protects: whether any one client took part, and so anything in its data,
in the **global adapters the server releases** (to the clients, in ``final/``),
client-level DP under add-or-remove-one-client adjacency, without sampling
amplification (every client trains every round). It does **not** protect
against the server: it receives every client's update before the noise (clipped,
with client-side clipping, but not noised).
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedsem_app.config.sections import DPConfig
from fedsem_app.registry import Registry

# dp.clip-side -> Flower's fixed-clipping wrapper that clips on that side.
DP_WRAPPERS: Registry[type[Strategy]] = Registry("DP clip side", key="dp.clip-side")
DP_WRAPPERS.register("server", DifferentialPrivacyServerSideFixedClipping)
DP_WRAPPERS.register("client", DifferentialPrivacyClientSideFixedClipping)


def wrap(strategy: Strategy, cfg: DPConfig, num_clients: int) -> Strategy:
    """Flower's fixed-clipping DP wrapper around ``strategy``, for ``num_clients`` a round."""
    return DP_WRAPPERS[cfg.clip_side](
        strategy, cfg.noise_multiplier, cfg.clipping_norm, num_clients
    )


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon after ``rounds`` Gaussian releases of ``noise_multiplier``, at ``delta``.

    Google's ``dp-accounting`` RDP accountant (default orders, add-or-remove-one
    adjacency), ``rounds`` self-composed ``GaussianDpEvent``s: no sampling, as
    every client trains every round.

    Parameters
    ----------
    noise_multiplier
        Noise standard deviation over the clipping norm (the sensitivity of the sum).
    rounds
        Releases so far (0 gives 0.0).
    delta
        The target delta.

    Returns
    -------
    float
        The smallest epsilon the accountant can certify.
    """
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    if rounds <= 0:
        return 0.0
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), count=rounds)
    return float(accountant.get_epsilon(delta))


def round_metrics(cfg: DPConfig, server_round: int) -> dict[str, float]:
    """The round row's DP columns: epsilon of this round alone and after all rounds so far."""
    return {
        "dp-epsilon-round": epsilon(cfg.noise_multiplier, 1, cfg.delta),
        "dp-epsilon": epsilon(cfg.noise_multiplier, server_round, cfg.delta),
        "dp-delta": cfg.delta,
    }
