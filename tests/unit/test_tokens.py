import pytest

from shared.errors import InvalidRequest
from shared.runs.tokens import TokenCodec

KEY = b"k" * 40


def test_a_token_round_trips_run_and_position():
    codec = TokenCodec(KEY)
    claims = codec.decode(codec.encode("run_abc", 17))
    assert (claims.run_id, claims.position) == ("run_abc", 17)


@pytest.mark.parametrize("bad", ["", "x", "a.b.c", "!!!.???", None, 42, "a" * 600])
def test_garbage_is_invalid(bad):
    with pytest.raises(InvalidRequest) as raised:
        TokenCodec(KEY).decode(bad)
    assert raised.value.code == "invalid_token"


def test_any_changed_byte_is_detected():
    codec = TokenCodec(KEY)
    token = codec.encode("run_abc", 3)
    for index in range(len(token)):
        if token[index] == ".":
            continue
        forged = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1:]
        try:
            claims = codec.decode(forged)
        except InvalidRequest:
            continue
        # base64 padding bits can absorb a change without changing the bytes; then nothing changed
        assert (claims.run_id, claims.position) == ("run_abc", 3)


def test_another_key_cannot_mint_tokens():
    forged = TokenCodec(b"x" * 40).encode("run_abc")
    with pytest.raises(InvalidRequest):
        TokenCodec(KEY).decode(forged)
