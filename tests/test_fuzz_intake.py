"""Hostile queue entries: the decoder takes any field map and raises only MessageError.

Upstream apps (or anyone with XADD rights) can push any flat field map onto a priority
stream; ``parse_message`` must turn each into a clean OutboundMessage or a MessageError
naming a field (which sends the entry to the dead-letter stream). Anything else would
fail the whole batch and, after max_deliveries, dead-letter its innocent neighbours.
Also checked: what it accepts round-trips through the stream encoding (``to_fields``)
unchanged, so a deferred or retried message is the same message when read again.
"""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.errors import MessageError
from gatewayd.model import OutboundMessage
from gatewayd.pipeline.intake import parse_message, to_fields

CLASSES = ["otp", "transactional", "marketing"]
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
FIELD_NAMES = sorted(f.encode_name for f in msgspec.structs.fields(OutboundMessage))
OPTIONAL = [n for n in FIELD_NAMES if n not in ("to", "text")]

# Values an attacker (or a buggy producer) might put in a field: stream values are
# strings, but the HTTP path hands JSON values straight in.
_HOSTILE_STR = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e309", "-1", "0", "+", "+0",
                     "1970-01-01T00:00:00", "2024-13-45T99:99:99Z", "9" * 400,
                     "+8613800138000", "【京东】验证码 482913", "\x00", "\ud800"
                     .encode("utf-8", "surrogatepass").decode("utf-8", "replace")]),
    st.from_regex(r"\+?[0-9]{1,20}", fullmatch=True),
    st.from_regex(r"-?[0-9]{1,12}(\.[0-9]{0,6})?", fullmatch=True),
)
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _HOSTILE_STR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=6,
)


def check(raw: object) -> None:
    try:
        msg = parse_message(raw, classes=CLASSES, max_segments=10, now=1_700_000_000.0)
    except MessageError as e:
        assert isinstance(e.field, str) and e.reason  # field may be an empty unknown key
        return
    assert msg.id and msg.category in CLASSES and msg.text
    # What the decoder accepted survives the stream encoding unchanged.
    again = parse_message(to_fields(msg), classes=CLASSES, max_segments=10,
                          now=1_700_000_000.0)
    assert again == msg


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), _HOSTILE_STR,
                       max_size=12))
def test_any_flat_stream_entry_decodes_or_raises_message_error(
    fields: dict[str, str],
) -> None:
    check(fields)


@FUZZ
@given(st.fixed_dictionaries({"to": _HOSTILE_STR, "text": _HOSTILE_STR},
                             optional={n: _HOSTILE_STR for n in OPTIONAL}))
def test_entries_with_to_and_text_go_deep(fields: dict[str, str]) -> None:
    check(fields)


@FUZZ
@given(st.fixed_dictionaries({"to": _JSONISH, "text": _JSONISH},
                             optional={n: _JSONISH for n in OPTIONAL}) | _JSONISH)
def test_any_json_value_decodes_or_raises_message_error(raw: object) -> None:
    """The HTTP path hands parsed JSON in: any shape, any type in any field."""
    check(raw)
