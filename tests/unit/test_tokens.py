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
        forged = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]
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


# A token minted before a deploy must keep working after it: the format is fixed (base64url without padding of
# compact JSON, a dot, base64url of HMAC-SHA256 over "run-token.v1." + that JSON).
MINTED = "eyJ2IjoxLCJyIjoicnVuX2FiYyIsInMiOjE3fQ.a5s3Xpca9GB8CSbDQ6LazMRgY-ik1zktO-YlR6_hLiw"


def _signed(payload: bytes, key: bytes = KEY) -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(payload)}.{b64(hmac.new(key, b'run-token.v1.' + payload, hashlib.sha256).digest())}"


def test_the_token_format_is_stable_across_versions():
    codec = TokenCodec(KEY)
    assert codec.decode(MINTED) == TokenClaims("run_abc", 17)
    assert codec.encode("run_abc", 17) == MINTED == _signed(b'{"v":1,"r":"run_abc","s":17}')
    for position in range(-1, 300):  # unpadded base64url whatever the payload's length
        token = codec.encode("run_abc", position)
        assert "=" not in token and codec.decode(token).position == position


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v":2,"r":"run_abc","s":1}',
        b'{"v":1,"r":5,"s":1}',
        b'{"v":1,"r":"run_abc","s":"1"}',
        b'{"v":1,"r":"run_abc"}',
        b"[1]",
        b'{"v":1',
    ],
)
def test_a_signed_token_with_claims_of_another_shape_is_invalid(payload):
    with pytest.raises(InvalidRequest):
        TokenCodec(KEY).decode(_signed(payload))


def test_an_invalid_token_is_refused_by_name_with_the_field_it_came_in():
    codec = TokenCodec(KEY)
    for param, expected in ((None, "continuation_token"), ("token", "token")):
        with pytest.raises(InvalidRequest) as refused:
            codec.decode("x.y") if param is None else codec.decode("x.y", param=param)
        error = refused.value
        assert (error.code, error.message, error.param) == (
            "invalid_token",
            "The continuation token is invalid or was altered.",
            expected,
        )


def test_tokens_are_accepted_up_to_512_characters_even_when_signed():
    codec = TokenCodec(KEY)
    longest = codec.encode("r" * 330)
    assert len(longest) == 512 and codec.decode(longest).run_id == "r" * 330
    with pytest.raises(InvalidRequest):
        codec.decode(codec.encode("r" * 331))


def test_a_codec_needs_a_key():
    with pytest.raises(ValueError, match=r"^a TokenCodec needs at least one key$"):
        TokenCodec(())
