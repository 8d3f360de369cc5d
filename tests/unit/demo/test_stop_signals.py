"""The demo's stop signals: the first one stops it; the next ones cannot cut its cleanup short."""

import signal
from collections.abc import Iterator

import pytest

from proxy.demo import walkthrough


@pytest.fixture
def stop_handlers() -> Iterator[None]:
    previous = {stop: signal.getsignal(stop) for stop in walkthrough.STOP_SIGNALS}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


@pytest.mark.usefixtures("stop_handlers")
@pytest.mark.parametrize(
    ("first", "said"),
    [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM"), (signal.SIGHUP, "SIGHUP")],
)
def test_a_stop_signal_interrupts_once_and_the_next_ones_are_ignored(
    first: signal.Signals, said: str
) -> None:
    for stop in walkthrough.STOP_SIGNALS:
        signal.signal(stop, walkthrough._stop_on)
    with pytest.raises(KeyboardInterrupt) as raised:
        signal.raise_signal(first)
    assert walkthrough._why(raised.value) == said
    # make forwards SIGTERM to the demo after the process group already had it: no second raise.
    for stop in walkthrough.STOP_SIGNALS:
        signal.raise_signal(stop)
    assert all(signal.getsignal(s) == signal.SIG_IGN for s in walkthrough.STOP_SIGNALS)
