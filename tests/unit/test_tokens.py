import pytest

from shared.errors import InvalidRequest
from shared.runs.tokens import TokenClaims, TokenCodec

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


def test_a_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key():
    old_key, new_key = b"o" * 40, b"n" * 40
    before = TokenCodec(old_key).encode("run_abc", 5)
    rotated = TokenCodec((new_key, old_key))
    assert rotated.decode(before) == TokenClaims("run_abc", 5)  # minted before the rotation: still valid
    after = rotated.encode("run_abc", 6)
    assert TokenCodec(new_key).decode(after).position == 6  # signed with the first key...
    with pytest.raises(InvalidRequest):
        TokenCodec(old_key).decode(after)  # ...not the old one
    with pytest.raises(InvalidRequest):
        TokenCodec(new_key).decode(before)  # and once the old key is dropped, its tokens stop working
