"""The fake driver's record of hook calls stays bounded in a long-running daemon."""

from __future__ import annotations

from overlayd.model import ReconcileRequest
from overlayd_fake.driver import FakeDriver


def test_the_call_log_keeps_only_the_latest_calls() -> None:
    fake = FakeDriver(call_log_size=10)
    for _ in range(25):
        fake.overlayd_reconcile(request=ReconcileRequest())
    fake.overlayd_shutdown()
    assert len(fake.calls) == 10
    assert fake.calls[-1].name == "overlayd_shutdown"
    assert len(fake.calls_to("overlayd_reconcile")) == 9


def test_the_default_call_log_is_bounded() -> None:
    fake = FakeDriver()
    for _ in range(FakeDriver.CALL_LOG_SIZE + 100):
        fake.overlayd_reconcile(request=ReconcileRequest())
    assert len(fake.calls) == FakeDriver.CALL_LOG_SIZE
