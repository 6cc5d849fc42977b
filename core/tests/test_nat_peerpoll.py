"""One read of the device's peers for every path waiting on a handshake (``nat.peerpoll``)."""

from __future__ import annotations

import asyncio
import contextlib

from overlayd.errors import PeerError
from overlayd.model import PeerStatus
from overlayd.nat.peerpoll import PeerPoll

KEY = "A" * 43 + "="


class _Device:
    """A device whose reads take ``delay`` seconds and report the handshake as it is then."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.handshake = 0
        self.reads = 0
        self.fail = False

    async def read(self) -> list[PeerStatus]:
        self.reads += 1
        seen = self.handshake  # what the dump holds: the state when the read began
        await asyncio.sleep(self.delay)
        if self.fail:
            raise PeerError("the device is gone")
        return [PeerStatus(public_key=KEY, last_handshake_unix_secs=seen)]


async def test_waiters_of_one_moment_share_one_read() -> None:
    device = _Device()
    poll = PeerPoll(device.read)
    results = await asyncio.gather(*(poll.fresh() for _ in range(200)))
    assert device.reads == poll.reads == 1
    assert all(r is results[0] for r in results)
    assert results[0][KEY].public_key == KEY


async def test_a_read_begun_before_the_call_does_not_answer_it() -> None:
    device = _Device(delay=0.05)
    poll = PeerPoll(device.read)
    early = asyncio.ensure_future(poll.fresh())
    await asyncio.sleep(0.01)  # that read is under way, and saw no handshake
    device.handshake = 1700000000
    late = await poll.fresh()
    assert (await early)[KEY].last_handshake_unix_secs == 0
    assert late[KEY].last_handshake_unix_secs == 1700000000
    assert device.reads == 2


async def test_a_failed_read_reaches_its_waiters_and_the_next_call_reads_again() -> None:
    device = _Device()
    device.fail = True
    poll = PeerPoll(device.read)
    outcomes = await asyncio.gather(poll.fresh(), poll.fresh(), return_exceptions=True)
    assert all(isinstance(o, PeerError) for o in outcomes)
    device.fail = False
    assert KEY in await poll.fresh()
    assert device.reads == 2


async def test_a_cancelled_waiter_leaves_the_read_to_the_others() -> None:
    device = _Device(delay=0.03)
    poll = PeerPoll(device.read)
    first = asyncio.ensure_future(poll.fresh())
    second = asyncio.ensure_future(poll.fresh())
    await asyncio.sleep(0.005)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert KEY in await second
    assert device.reads == 1


async def test_reads_follow_time_not_the_number_of_waiters() -> None:
    """Fifty waiters polling for 0.2 s cause about as many reads as one does."""

    async def reads_for(waiters: int) -> int:
        device = _Device(delay=0.01)
        poll = PeerPoll(device.read)

        async def watch() -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + 0.2
            while loop.time() < end:
                await poll.fresh()
                await asyncio.sleep(0.005)

        await asyncio.gather(*(watch() for _ in range(waiters)))
        return device.reads

    alone, crowd = await reads_for(1), await reads_for(50)
    # Reads follow one another (each 10 ms long) whoever waits for them: at
    # most one read more per read one waiter makes, where fifty polling each
    # for itself would read fifty times as often.
    assert crowd <= 2 * alone + 2, (alone, crowd)
    assert crowd <= 0.2 / 0.01 + 2


async def test_reads_begin_at_most_every_gap() -> None:
    device = _Device(delay=0.0)
    poll = PeerPoll(device.read, gap=0.02)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(5):
        await poll.fresh()
    assert device.reads == 5
    assert loop.time() - start >= 4 * 0.02 * 0.9
