"""Hypothesis strategies for every wire message, and the suite's shared settings."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from proxy import wire as w
from tests.fixtures.examples import examples

# Moderate example counts keep the whole wire suite to a few seconds; deadline=None because
# CI machines vary.
SETTINGS = settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Protocol Strings: any text without NUL or surrogates (surrogates stand for undecodable bytes and
# are not round-trip material).
text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=12
)
data = st.binary(max_size=24)
nullable = st.none() | data
int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
uint16 = st.integers(0, 2**16 - 1)
cancel_key = st.binary(min_size=4, max_size=256)


def small_tuples(elements: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.lists(elements, max_size=5).map(tuple)


field_code = st.characters(min_codepoint=1, max_codepoint=255)
fields = small_tuples(st.tuples(field_code, text))
target = st.sampled_from(["S", "P"])

frontend_messages: st.SearchStrategy[object] = st.one_of(
    st.builds(w.Query, text),
    st.builds(w.Parse, text, text, small_tuples(uint32)),
    st.builds(w.Bind, text, text, small_tuples(int16), small_tuples(nullable), small_tuples(int16)),
    st.builds(w.Execute, text, int32),
    st.builds(w.Describe, target, text),
    st.builds(w.Close, target, text),
    st.just(w.Sync()),
    st.just(w.Flush()),
    st.builds(w.FunctionCall, uint32, small_tuples(int16), small_tuples(nullable), int16),
    st.builds(w.CopyData, data),
    st.just(w.CopyDone()),
    st.builds(w.CopyFail, text),
    st.just(w.Terminate()),
    st.builds(w.AuthResponse, data),
)

authentication_requests: st.SearchStrategy[object] = st.one_of(
    st.just(w.AuthenticationOk()),
    st.just(w.AuthenticationKerberosV5()),
    st.just(w.AuthenticationCleartextPassword()),
    st.builds(w.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.just(w.AuthenticationGSS()),
    st.builds(w.AuthenticationGSSContinue, data),
    st.just(w.AuthenticationSSPI()),
    st.builds(w.AuthenticationSASL, small_tuples(text.filter(bool))),
    st.builds(w.AuthenticationSASLContinue, data),
    st.builds(w.AuthenticationSASLFinal, data),
)

field_descriptions = st.builds(w.FieldDescription, text, uint32, int16, uint32, int16, int32, int16)

backend_messages: st.SearchStrategy[object] = st.one_of(
    authentication_requests,
    st.builds(w.ParameterStatus, text, text),
    st.builds(w.BackendKeyData, int32, cancel_key),
    st.builds(w.ReadyForQuery, st.sampled_from(list(w.TransactionStatus))),
    st.builds(w.ErrorResponse, fields),
    st.builds(w.NoticeResponse, fields),
    st.builds(w.NegotiateProtocolVersion, uint16, uint16, small_tuples(text)),
    st.builds(w.CommandComplete, text),
    st.builds(w.RowDescription, small_tuples(field_descriptions)),
    st.builds(w.DataRow, small_tuples(nullable)),
    st.builds(w.CopyInResponse, st.integers(0, 255), small_tuples(int16)),
    st.builds(w.CopyOutResponse, st.integers(0, 255), small_tuples(int16)),
    st.builds(w.CopyBothResponse, st.integers(0, 255), small_tuples(int16)),
    st.builds(w.CopyData, data),
    st.just(w.CopyDone()),
    st.builds(w.NotificationResponse, int32, text, text),
    st.builds(w.ParameterDescription, small_tuples(uint32)),
    st.just(w.EmptyQueryResponse()),
    st.just(w.ParseComplete()),
    st.just(w.BindComplete()),
    st.just(w.CloseComplete()),
    st.just(w.NoData()),
    st.just(w.PortalSuspended()),
    # Type bytes the codec does not model in either direction.
    st.builds(w.UnknownMessage, st.sampled_from(b"V?~\x00\xff"), data),
)

# Startup parameter names: not empty, not a protocol option.
parameter_name = text.filter(lambda name: bool(name) and not name.startswith("_pq_."))


@st.composite
def startup_messages(draw: st.DrawFn) -> w.StartupMessage:
    parameters = draw(st.dictionaries(parameter_name, text, max_size=4))
    parameters["user"] = draw(text.filter(bool))
    options = draw(st.dictionaries(text.map(lambda name: "_pq_." + name), text, max_size=2))
    minor = draw(st.sampled_from([0, 0, 0, 2]) | uint16)
    return w.StartupMessage(tuple(parameters.items()), 3, minor, tuple(options.items()))


encryption_requests = st.sampled_from([w.SSLRequest(), w.GSSENCRequest()])
cancel_requests = st.builds(w.CancelRequest, int32, cancel_key)


@st.composite
def splits(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """`stream` cut at random points (empty chunks included)."""
    points = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]
