"""Bounded retry with exponential backoff for HCN operations that need settling.

HCN is known to answer transiently right after a change: an endpoint created
just after its network can fail with ``HCN_E_ADDR_INVALID_OR_RESERVED`` (ZL
sleeps a fixed 2 s; docs/reference/hcn.rst §4), an object can read as not found right after a
create or delete (hcsshim#95), and a delete can fail while references are still
being released (``HCN_E_ENTITY_HAS_REFERENCES``). Retry those few codes a bounded
number of times instead of sleeping a fixed time; everything else fails at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from overlayd_hcn.errors import HCN_E_ADDR_INVALID_OR_RESERVED
from overlayd_hcn.errors import HcnError
from overlayd_hcn.errors import HcnInUseError
from overlayd_hcn.errors import HcnNotFoundError

__all__ = ["in_use", "retry_hcn", "settling", "settling_after_create"]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)


def settling_after_create(exc: HcnError) -> bool:
    """Not found, or the network's static IPAM is not ready yet (docs/reference/hcn.rst §4)."""
    return isinstance(exc, HcnNotFoundError) or exc.hresult == HCN_E_ADDR_INVALID_OR_RESERVED


def settling(exc: HcnError) -> bool:
    """Static IPAM not ready yet (``HCN_E_ADDR_INVALID_OR_RESERVED``) only."""
    return exc.hresult == HCN_E_ADDR_INVALID_OR_RESERVED


def in_use(exc: HcnError) -> bool:
    """The object still has references (``HCN_E_ENTITY_HAS_REFERENCES``)."""
    return isinstance(exc, HcnInUseError)


def retry_hcn(
    operation: Callable[[], _T],
    *,
    retry_if: Callable[[HcnError], bool],
    what: str,
    attempts: int = 6,
    initial_delay: float = 0.05,
    max_delay: float = 1.0,
    multiplier: float = 2.0,
    deadline: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> _T:
    """Run ``operation``; retry, with backoff, the ``HcnError``s ``retry_if`` accepts.

    At most ``attempts`` calls; delays ``initial_delay * multiplier**n`` capped at
    ``max_delay``; never sleeps past ``deadline`` seconds from the first call. When
    the budget is spent the last error is raised with a note saying so.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    start = clock()
    delay = initial_delay
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except HcnError as exc:
            if not retry_if(exc):
                raise
            remaining = None if deadline is None else deadline - (clock() - start)
            if attempt == attempts or (remaining is not None and remaining <= 0):
                exc.add_note(f"{what}: gave up after {attempt} attempt(s).")
                raise
            pause = min(delay, max_delay)
            if remaining is not None:
                pause = min(pause, remaining)
            _log.debug(
                "%s: %s (%s), retrying in %.3f s (attempt %d of %d)",
                what,
                exc.name or exc.hresult_hex,
                exc.function,
                pause,
                attempt,
                attempts,
            )
            sleep(pause)
            delay *= multiplier
    raise AssertionError("unreachable: the loop returns or raises")
