"""The typed train request: what a strategy sets is what goes on the wire, and back."""

import pytest

from fedsem_app import protocol as p


def test_only_the_fields_a_strategy_sets_go_on_the_wire():
    request = p.TrainRequest(return_adapter=True, quantize="none", quantize_scales="row")
    assert request.to_config() == {
        "return-adapter": True,
        "quantize": "none",
        "quantize-scales": "row",
    }
    assert p.TrainRequest().to_config() == {}


def test_the_client_reads_back_what_was_sent_and_ignores_other_keys():
    sent = p.TrainRequest(
        server_round=3, train_data=p.ALL_PARTITIONS, local_steps=12, template="alpaca"
    )
    config = {**sent.to_config(), "run-folder": "/runs/x", "proximal-mu": 0.5}
    received = p.TrainRequest.from_config(config)
    assert received == p.TrainRequest(
        server_round=3,
        train_data="all-partitions",
        local_steps=12,
        template="alpaca",
        proximal_mu=0.5,  # the key Flower's FedProx sends
    )
    # Fields nobody set stay None: the client falls back to its run config.
    assert received.return_adapter is None and received.quantize is None


def test_an_unknown_train_data_source_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="train-data='everything'; known: own, all-partitions"):
        p.TrainRequest.from_config({"train-data": "everything"})
