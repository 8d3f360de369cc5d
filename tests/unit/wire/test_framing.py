"""Typed-phase framing: SECURITY.md row 4 (lengths), bounded memory and linear buffering."""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Callable

import pytest

from proxy import wire as w
from proxy.wire import sqlstate
from proxy.wire.limits import DEFAULT_MAX_MESSAGE_LENGTH, MAX_PREAUTH_MESSAGE_LENGTH


def header(type_byte: bytes, length: int) -> bytes:
    return type_byte + struct.pack("!I", length)


BAD_LENGTHS = [0, 3, 0xFFFFFFFF, 0x80000000, 0x80000005]


@pytest.mark.parametrize("length", BAD_LENGTHS)
def test_message_reader_rejects_impossible_length_before_reading_the_body(length: int) -> None:
    reader = w.MessageReader()
    reader.feed(header(b"Q", length))
    with pytest.raises(w.RemoteProtocolError) as info:
        reader.next_message()
    assert info.value.sqlstate == sqlstate.PROTOCOL_VIOLATION
    assert info.value.severity == "FATAL"


@pytest.mark.parametrize("length", BAD_LENGTHS)
def test_frame_scanner_rejects_impossible_length(length: int) -> None:
    with pytest.raises(w.RemoteProtocolError):
        w.FrameScanner(b"Q").scan(header(b"D", length))


def test_message_above_the_preauth_cap_is_rejected_before_reading_the_body() -> None:
    reader = w.MessageReader(max_length=MAX_PREAUTH_MESSAGE_LENGTH)
    reader.feed(header(b"p", MAX_PREAUTH_MESSAGE_LENGTH + 5))
    with pytest.raises(w.RemoteProtocolError, match="exceeds the limit of 65535"):
        reader.next_message()


def test_message_at_the_preauth_cap_is_accepted() -> None:
    reader = w.MessageReader(max_length=MAX_PREAUTH_MESSAGE_LENGTH)
    payload = b"x" * MAX_PREAUTH_MESSAGE_LENGTH
    reader.feed(header(b"p", MAX_PREAUTH_MESSAGE_LENGTH + 4))
    assert reader.next_message() is w.NEED_DATA
    reader.feed(payload)
    assert reader.next_message() == w.Frame(ord("p"), payload)


def test_cap_can_be_raised_after_authentication() -> None:
    reader = w.MessageReader(max_length=MAX_PREAUTH_MESSAGE_LENGTH)
    reader.max_length = 1 << 20
    assert reader.max_length == 1 << 20
    reader.feed(header(b"Q", 100_000))
    assert reader.next_message() is w.NEED_DATA


@pytest.mark.parametrize("cap", [-1, 2**31])
def test_invalid_cap_is_a_programming_error(cap: int) -> None:
    with pytest.raises(ValueError, match="max_length"):
        w.MessageReader(max_length=cap)
    with pytest.raises(ValueError, match="max_length"):
        w.FrameScanner(b"", max_length=cap)


def test_header_claiming_1_gb_buffers_nothing_beyond_the_header() -> None:
    reader = w.MessageReader()
    tracemalloc.start()
    try:
        reader.feed(header(b"d", 1_000_000_000))
        assert reader.next_message() is w.NEED_DATA
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reader.buffered == 5
    assert peak < 64 * 1024


def test_header_claiming_more_than_the_cap_is_rejected_and_later_bytes_are_dropped() -> None:
    reader = w.MessageReader(max_length=1024)
    reader.feed(header(b"d", 1_000_000_000))
    with pytest.raises(w.RemoteProtocolError) as first:
        reader.next_message()
    reader.feed(b"x" * 100_000)
    assert reader.buffered == 5
    with pytest.raises(w.RemoteProtocolError) as again:
        reader.next_message()
    assert again.value is first.value


def test_frame_scanner_skips_a_huge_uninteresting_message_without_buffering_it() -> None:
    scanner = w.FrameScanner(b"Z")
    chunk = bytes(65536)
    assert scanner.scan(header(b"d", 4 + 101 * len(chunk))) == []
    for _ in range(100):
        assert scanner.scan(chunk) == []
        assert scanner.buffered == 0
    ready = w.ReadyForQuery(w.TransactionStatus.IDLE).encode()
    assert scanner.scan(chunk + ready) == [w.Frame(ord("Z"), b"I")]
    assert scanner.messages_seen == 2


def test_frame_scanner_carries_only_a_partial_header_between_chunks() -> None:
    scanner = w.FrameScanner(b"Q")
    stream = w.Sync().encode() + w.Query("SELECT 1").encode()
    assert scanner.scan(stream[:7]) == []
    assert scanner.buffered == 2
    assert scanner.scan(stream[7:8]) == []
    assert scanner.scan(stream[8:]) == [w.Frame(ord("Q"), b"SELECT 1\0")]
    assert scanner.buffered == 0


def test_frame_scanner_assembles_an_interesting_message_across_chunks() -> None:
    scanner = w.FrameScanner([ord("Q")])
    wire = w.Query("x" * 50).encode()
    assert scanner.scan(wire[:20]) == []
    assert scanner.buffered == 15
    assert scanner.scan(wire[20:30]) == []
    assert scanner.scan(b"") == []
    frames = scanner.scan(wire[30:] + w.Sync().encode())
    assert frames == [w.Frame(ord("Q"), ("x" * 50).encode() + b"\0")]
    assert scanner.messages_seen == 2


def test_frame_scanner_tracks_the_last_ready_for_query_status() -> None:
    scanner = w.FrameScanner(b"Z")
    in_transaction = w.ReadyForQuery(w.TransactionStatus.IN_TRANSACTION).encode()
    failed = w.ReadyForQuery(w.TransactionStatus.FAILED).encode()
    statuses = []
    for chunk in (in_transaction, failed[:3], failed[3:]):
        scanner.scan(chunk)
        statuses.append(scanner.last_ready_status)
    assert statuses == ["T", "T", "E"]


@pytest.mark.parametrize("payload", [b"", b"X", b"II"])
def test_frame_scanner_rejects_a_malformed_ready_for_query(payload: bytes) -> None:
    scanner = w.FrameScanner(b"Z")
    with pytest.raises(w.RemoteProtocolError):
        scanner.scan(w.UnknownMessage(ord("Z"), payload).encode())
    with pytest.raises(w.RemoteProtocolError):
        scanner.scan(b"")


def test_frame_scanner_checks_the_length_of_a_header_split_across_chunks() -> None:
    scanner = w.FrameScanner(b"Q", max_length=10)
    scanner.scan(b"d\x00")
    with pytest.raises(w.RemoteProtocolError):
        scanner.scan(b"\x00\x00\xff")


def test_frame_scanner_does_not_track_status_unless_z_is_interesting() -> None:
    scanner = w.FrameScanner(b"Q")
    scanner.scan(w.ReadyForQuery(w.TransactionStatus.IDLE).encode())
    assert scanner.last_ready_status is None
    assert scanner.messages_seen == 1


def growth(run: Callable[[int], object], size: int) -> float:
    """How much longer `run` takes on 4x the input: about 4 if linear, about 16 if quadratic.

    A ratio, not a wall-clock bound, so that slow machines and coverage tracing do not matter;
    of CPU time (`process_time`), so that other processes on a busy machine (`make unit` runs
    tests on every core) do not either.
    """

    def timed(n: int) -> float:
        best = float("inf")
        for _ in range(2):
            started = time.process_time()
            run(n)
            best = min(best, time.process_time() - started)
        return best

    return timed(4 * size) / max(timed(size), 1e-4)


def feed_byte_by_byte(size: int) -> None:
    stream = w.Query("x" * size).encode()
    reader = w.MessageReader()
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        frame = reader.next_message()
    assert isinstance(frame, w.Frame)
    assert len(frame.payload) == size + 1


def consume_small_messages(count: int) -> None:
    reader = w.MessageReader()
    reader.feed(w.Sync().encode() * count)
    seen = 0
    while reader.next_message() is not w.NEED_DATA:
        seen += 1
    assert seen == count
    assert not reader.has_pending_data()


def scan_byte_by_byte(count: int) -> None:
    stream = (w.Sync().encode() + w.Query("q").encode()) * count
    scanner = w.FrameScanner(b"Q")
    frames = [frame for i in range(len(stream)) for frame in scanner.scan(stream[i : i + 1])]
    assert len(frames) == count
    assert scanner.messages_seen == 2 * count


def test_feeding_one_byte_at_a_time_stays_linear() -> None:
    feed_byte_by_byte(100_000)  # the 1e5 single-byte feeds of the requirement
    assert growth(feed_byte_by_byte, 25_000) < 8


def test_consuming_many_small_messages_from_one_big_feed_stays_linear() -> None:
    assert growth(consume_small_messages, 50_000) < 8


def test_scanning_one_byte_at_a_time_stays_linear() -> None:
    assert growth(scan_byte_by_byte, 2_000) < 8


def test_default_cap_is_postgres_large_message_limit() -> None:
    assert DEFAULT_MAX_MESSAGE_LENGTH == 0x3FFFFFFE
    assert w.MessageReader().max_length == DEFAULT_MAX_MESSAGE_LENGTH


@pytest.mark.parametrize("interesting", [b"", b"DZ"])
def test_frame_scanner_knows_whether_the_stream_stands_at_a_message_boundary(
    interesting: bytes,
) -> None:
    stream = w.DataRow((b"abc", None)).encode() + w.ReadyForQuery(w.TransactionStatus.IDLE).encode()
    boundaries = {0, len(stream) - 6, len(stream)}
    for cut in range(len(stream) + 1):
        scanner = w.FrameScanner(interesting)
        scanner.scan(stream[:cut])
        assert scanner.at_boundary == (cut in boundaries), cut


def test_message_reader_hands_over_the_unread_bytes_once() -> None:
    reader = w.MessageReader()
    query = w.Query("SELECT 1").encode()
    reader.feed(w.Sync().encode() + query[:6])
    assert reader.next_message() == w.Frame(ord("S"), b"")
    assert reader.take_pending_data() == query[:6]
    assert not reader.has_pending_data()
    assert reader.next_message() is w.NEED_DATA


@pytest.mark.parametrize("interesting", [b"", b"DZ"])
def test_frame_scanner_says_where_the_message_in_progress_ends(interesting: bytes) -> None:
    stream = (
        w.DataRow((b"x" * 300, None)).encode()
        + w.CommandComplete("SELECT 1").encode()
        + w.ReadyForQuery(w.TransactionStatus.IDLE).encode()
    )
    ends = [0, 1 + 4 + 2 + (4 + 300) + 4]  # type, length, count, a value, a NULL
    ends.append(ends[-1] + 1 + 4 + len("SELECT 1") + 1)
    ends.append(len(stream))
    for cut in range(len(stream)):
        scanner = w.FrameScanner(interesting)
        scanner.scan(stream[:cut])
        rest = stream[cut:]
        next_end = min(end for end in ends if end >= cut)
        assert scanner.boundary_offset(rest) == next_end - cut, cut
        if next_end > cut:
            assert scanner.boundary_offset(rest[: next_end - cut - 1]) is None, cut


def test_frame_scanner_cannot_place_the_boundary_before_the_header_is_complete() -> None:
    scanner = w.FrameScanner(b"")
    scanner.scan(w.Sync().encode()[:2])
    assert scanner.boundary_offset(b"\x00") is None
    assert scanner.boundary_offset(b"\x00\x00\x04") == 3


def test_message_reader_shows_the_type_byte_before_the_body_arrives() -> None:
    reader = w.MessageReader()
    assert reader.peek_type() is None
    reader.feed(b"Q")
    assert reader.peek_type() == ord("Q")
    assert reader.next_message() is w.NEED_DATA
    reader.feed(b"\x00\x00\x00\x05x")
    assert reader.next_message() == w.Frame(ord("Q"), b"x")
    assert reader.peek_type() is None


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 100_000])
def test_frame_scanner_counts_one_type_s_payload_bytes_without_keeping_them(
    chunk_size: int,
) -> None:
    rows = [w.CopyData(b"x" * size).encode() for size in (0, 1, 10, 5000)]
    stream = b"".join(rows) + w.CopyDone().encode() + w.Sync().encode()
    scanner = w.FrameScanner(b"", count_type=ord("d"))
    for start in range(0, len(stream), chunk_size):
        scanner.scan(stream[start : start + chunk_size])
        assert scanner.buffered <= 5
    assert scanner.counted_bytes == 5011
    assert scanner.messages_seen == 6
