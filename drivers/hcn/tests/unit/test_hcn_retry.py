"""Bounded retry with backoff for HCN settling (docs/reference/hcn.rst §4)."""

from __future__ import annotations

import uuid

import pytest

from overlayd_hcn.errors import E_ACCESSDENIED
from overlayd_hcn.errors import HCN_E_ADDR_INVALID_OR_RESERVED
from overlayd_hcn.errors import HCN_E_ENTITY_HAS_REFERENCES
from overlayd_hcn.errors import HCN_E_NETWORK_NOT_FOUND
from overlayd_hcn.errors import HcnAccessDeniedError
from overlayd_hcn.errors import HcnAddressError
from overlayd_hcn.errors import HcnInUseError
from overlayd_hcn.errors import HcnNotFoundError
from overlayd_hcn.errors import error_from_hresult
from overlayd_hcn.retry import in_use
from overlayd_hcn.retry import retry_hcn
from overlayd_hcn.retry import settling_after_create
from overlayd_hcn.schema import HostComputeNetwork
from overlayd_hcn.simulator import SimulatedHcn


def test_retries_not_found_after_create_with_growing_delays(sim: SimulatedHcn) -> None:
    net = sim.create_network(HostComputeNetwork(name="n", type="Internal"))
    assert net.id is not None
    net_id = net.id
    sim.fail_next("HcnOpenNetwork", HCN_E_NETWORK_NOT_FOUND, times=3)
    sleeps: list[float] = []
    result = retry_hcn(
        lambda: sim.open_network(net_id),
        retry_if=settling_after_create,
        what="open base network",
        initial_delay=0.1,
        max_delay=0.25,
        sleep=sleeps.append,
    )
    assert result.id == net_id
    assert sleeps == [0.1, 0.2, 0.25]


def test_gives_up_after_attempts_with_a_note(sim: SimulatedHcn) -> None:
    sim.fail_next("HcnDeleteNetwork", HCN_E_ENTITY_HAS_REFERENCES, times=10)
    sleeps: list[float] = []
    with pytest.raises(HcnInUseError) as info:
        retry_hcn(
            lambda: sim.delete_network(uuid.uuid4()),
            retry_if=in_use,
            what="delete network",
            attempts=3,
            sleep=sleeps.append,
        )
    assert len(sleeps) == 2
    assert "delete network: gave up after 3 attempt(s)." in info.value.__notes__


def test_does_not_retry_other_errors(sim: SimulatedHcn) -> None:
    sim.fail_next("HcnEnumerateNetworks", E_ACCESSDENIED)
    sleeps: list[float] = []
    with pytest.raises(HcnAccessDeniedError):
        retry_hcn(
            sim.enumerate_networks,
            retry_if=settling_after_create,
            what="list",
            sleep=sleeps.append,
        )
    assert sleeps == []


def test_deadline_bounds_total_waiting() -> None:
    now = [0.0]
    calls = 0

    def always_reserved() -> None:
        nonlocal calls
        calls += 1
        raise error_from_hresult("HcnCreateEndpoint", HCN_E_ADDR_INVALID_OR_RESERVED)

    def fake_sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(HcnAddressError, match="0x803B002F"):
        retry_hcn(
            always_reserved,
            retry_if=settling_after_create,
            what="create endpoint",
            attempts=100,
            initial_delay=0.5,
            max_delay=0.5,
            deadline=1.2,
            sleep=fake_sleep,
            clock=lambda: now[0],
        )
    assert now[0] == pytest.approx(1.2)
    assert calls == 4


def test_settling_predicate_matches_not_found_and_reserved() -> None:
    assert settling_after_create(error_from_hresult("f", HCN_E_NETWORK_NOT_FOUND))
    assert settling_after_create(error_from_hresult("f", HCN_E_ADDR_INVALID_OR_RESERVED))
    assert not settling_after_create(error_from_hresult("f", E_ACCESSDENIED))
    assert isinstance(error_from_hresult("f", 0x80070490), HcnNotFoundError)
