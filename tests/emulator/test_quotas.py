"""Quotas like the real services: RPM/TPM windows per model, token estimates at admission, OpenAI's rate-limit
headers (and Azure's broken ones), retry-after(-ms) the SDK honours, insufficient_quota; all through real HTTP
and the official openai SDK, all settable at runtime."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from local.emulator import EmulatorServer
from local.emulator.control import EmulatorControl
from shared.provider.errors import classify

DEFAULTS = {
    "rpm_limit": 0,
    "tpm_limit": 0,
    "model_limits": {},
    "quota_window_s": 60.0,
    "quota_style": "openai",
    "quota_default_output_tokens": 1024,
    "quota_counts_gets": False,
    "ratelimit_headers": "openai",
    "insufficient_quota": False,
}
QUICK = {"emulator_duration_ms": "0"}  # the create answer is already completed


@pytest.fixture(scope="module")
def qemu():
    server = EmulatorServer(port=0, time_scale=0.02).start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def ctl(qemu) -> EmulatorControl:
    control = EmulatorControl(qemu.base_url)
    control.reset(responses=True)
    yield control
    control.configure(**DEFAULTS)


@pytest.fixture
def sdk(qemu) -> openai.OpenAI:
    with openai.OpenAI(base_url=qemu.base_url, api_key="k", max_retries=0) as client:
        yield client


def ratelimit(headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith(("x-ratelimit-", "retry-after"))}


def create(sdk: openai.OpenAI, model: str = "m", **kw):
    """A background create; its raw answer (headers) and the parsed Response."""
    raw = sdk.responses.with_raw_response.create(
        model=model, input=kw.pop("input", "x"), background=True, metadata=kw.pop("metadata", QUICK), **kw
    )
    return raw.headers, raw.parse()


def test_requests_per_window_rolling_with_openai_headers(ctl, sdk):
    ctl.set_quota(rpm=3, quota_window_s=300)  # refills one request every 100 s
    seen = [ratelimit(create(sdk)[0]) for _ in range(3)]
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["2", "1", "0"]
    assert all(h["x-ratelimit-limit-requests"] == "3" for h in seen)
    assert seen[0]["x-ratelimit-reset-requests"] == "1m40s"  # one used: 100 s until full again
    assert seen[2]["x-ratelimit-reset-requests"][:2] in ("4m", "5m") and "retry-after" not in seen[2]
    assert not any(k.endswith("-tokens") for k in seen[0])  # no token limit set: no token headers
    with pytest.raises(openai.RateLimitError) as exc:
        create(sdk)
    e = exc.value
    assert e.code == "rate_limit_exceeded" and e.type == "requests"
    assert "on requests per min (RPM): Limit 3, Used 3, Requested 1" in e.message
    h = ratelimit(e.response.headers)
    assert h["x-ratelimit-remaining-requests"] == "0"
    ms = int(h["retry-after-ms"])  # until the oldest request has refilled
    assert 60_000 < ms <= 100_000 and h["retry-after"] == str(-(-ms // 1000))
    assert classify(e).retry_after == ms / 1000  # the service reads retry-after-ms
    assert len(ctl.responses()) == 3  # the refused create left no trace
    assert ctl.stats()["quota"]["limited_requests"] == 1


def test_sdk_waits_exactly_retry_after_ms_then_gets_through(ctl, qemu):
    ctl.set_quota(rpm=1, quota_window_s=6)
    with openai.OpenAI(base_url=qemu.base_url, api_key="k") as retrying:  # the SDK's default 2 retries
        retrying.responses.create(model="m", input="x", background=True, metadata=QUICK)
        t0 = time.monotonic()
        retrying.responses.create(model="m", input="x", background=True, metadata=QUICK)
        waited = time.monotonic() - t0
    # The SDK's own backoff (0.5 s, then 1 s) would spend both retries long before the 6-s window refills and
    # fail; it got through after one 429 because it slept what retry-after-ms said.
    assert ctl.stats()["quota"]["limited_requests"] == 1
    assert 2 <= waited < 20
    assert len(ctl.responses()) == 2


def test_tokens_estimated_at_admission_from_prompt_and_cap(ctl, sdk):
    ctl.set_quota(tpm=1000, quota_window_s=6000)  # refills a token every 6 s
    headers, first = create(sdk, input="y" * 400, max_output_tokens=500)
    assert first.usage.input_tokens == 100  # the estimate is usage.input_tokens + the cap
    assert 400 <= int(headers["x-ratelimit-remaining-tokens"]) <= 405
    assert headers["x-ratelimit-limit-tokens"] == "1000" and "x-ratelimit-limit-requests" not in headers
    with pytest.raises(openai.RateLimitError) as exc:  # another 600 does not fit, whatever its real use
        create(sdk, input="y" * 400, max_output_tokens=500)
    assert exc.value.type == "tokens" and "tokens per min (TPM): Limit 1000" in exc.value.message
    assert int(exc.value.response.headers["retry-after-ms"]) > 600_000  # ~200 tokens at one per 6 s
    headers, _ = create(sdk, input="z" * 8, max_output_tokens=16)  # 2 + 16 tokens still fit
    assert 380 <= int(headers["x-ratelimit-remaining-tokens"]) <= 390
    ctl.configure(quota_default_output_tokens=300)  # no cap: the configured default counts
    headers, _ = create(sdk, input="z" * 8)
    assert 80 <= int(headers["x-ratelimit-remaining-tokens"]) <= 90


def test_request_too_large_is_a_429_that_waiting_cannot_fix(ctl, sdk):
    ctl.set_quota(tpm=1000)
    with pytest.raises(openai.RateLimitError) as exc:
        create(sdk, max_output_tokens=5000)
    assert exc.value.code == "rate_limit_exceeded" and "Request too large" in exc.value.message
    assert "retry-after" not in exc.value.response.headers and "retry-after-ms" not in exc.value.response.headers
    assert ctl.stats()["quota"]["too_large"] == 1


def test_windows_are_per_model_and_shared_by_responses_and_chat(ctl, sdk, qemu):
    ctl.set_quota(model="gpt-a", rpm=2)
    create(sdk, model="gpt-a")
    chat = sdk.chat.completions.with_raw_response.create(model="gpt-a", messages=[{"role": "user", "content": "hi"}])
    assert chat.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError):
        create(sdk, model="gpt-a")
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="gpt-a", messages=[{"role": "user", "content": "hi"}])
    headers, _ = create(sdk, model="gpt-b")  # another model: its own (unlimited) budget
    assert "x-ratelimit-remaining-requests" not in headers
    # Azure's deployment path: the deployment name is the key
    ctl.set_quota(model="dep-1", rpm=1)
    azure = openai.AzureOpenAI(azure_endpoint=qemu.root_url, api_key="k", api_version="2024-10-21", max_retries=0)
    azure.chat.completions.create(model="dep-1", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError):
        azure.chat.completions.create(model="dep-1", messages=[{"role": "user", "content": "hi"}])
    quotas = {row["model"]: row for row in ctl.quotas()["data"]}
    assert quotas["gpt-a"]["rpm"] == 2 and quotas["gpt-a"]["remaining_requests"] == 0
    assert quotas["dep-1"]["remaining_requests"] == 0


def test_streamed_create_counts_and_carries_the_headers(ctl, sdk):
    ctl.set_quota(rpm=5, tpm=100_000, quota_window_s=600)
    with sdk.responses.with_streaming_response.create(
        model="m", input="x", stream=True, background=True, metadata=QUICK
    ) as raw:
        assert raw.headers["x-ratelimit-remaining-requests"] == "4"
        assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 100_000
        events = [line for line in raw.iter_lines() if line.startswith("data:")]
    assert "response.completed" in events[-1]
    with sdk.chat.completions.with_streaming_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as raw:
        assert raw.headers["x-ratelimit-remaining-requests"] == "3"


def test_background_responses_count_at_create_not_when_polled(ctl, sdk):
    ctl.set_quota(rpm=1, quota_window_s=600)
    _, r = create(sdk, metadata={"emulator_duration_ms": "1000000"})  # 20 s at this scale
    for _ in range(5):
        sdk.responses.retrieve(r.id)
    assert sdk.responses.cancel(r.id).status == "cancelled"
    assert [e.type for e in sdk.responses.retrieve(r.id, stream=True)]  # a resumed stream is a GET too
    ctl.configure(quota_counts_gets=True)  # where a provider counts GETs
    with pytest.raises(openai.RateLimitError):
        sdk.responses.retrieve(r.id)


def test_azure_style_fixed_windows_refuse_a_burst_early(ctl, sdk, qemu):
    # 60 a "minute" evaluated over sixths admits 10 per sixth: a burst of 30 is cut at 10 (20 if it straddles a
    # boundary), where OpenAI's rolling window would admit all 30. (A 600-s "minute": sixths of 100 s.)
    ctl.set_quota(rpm=60, quota_style="azure", quota_window_s=600)
    admitted = 0
    for _ in range(30):
        try:
            create(sdk)
            admitted += 1
        except openai.RateLimitError as exc:
            refused = exc
            break
    assert 10 <= admitted <= 20
    assert refused.code == "429" and refused.type is None  # Azure's error body
    assert "have exceeded call rate limit" in refused.message and "Please retry after" in refused.message
    assert 0 < int(refused.response.headers["retry-after-ms"]) <= 100_000
    ctl.set_quota(rpm=60, quota_style="openai")
    ctl.reset()
    for _ in range(30):
        create(sdk)  # a rolling window takes the whole burst


def test_azure_style_tokens_count_per_fixed_window(ctl, sdk):
    ctl.set_quota(tpm=100, quota_style="azure", quota_window_s=4, quota_default_output_tokens=40)
    admitted, refused = 0, None
    while refused is None and admitted < 6:
        try:
            create(sdk)
            admitted += 1
        except openai.RateLimitError as exc:
            refused = exc
    # 41 tokens each: two per window, so the third is refused (a window that turns in between adds up to two)
    assert 2 <= admitted <= 4 and refused.code == "429"
    time.sleep(float(refused.response.headers["retry-after-ms"]) / 1000)
    create(sdk)  # the count restarted with the window


def test_azure_responses_header_switch(ctl, sdk):
    ctl.set_quota(rpm=1, ratelimit_headers="azure_responses")
    headers, _ = create(sdk)
    assert ratelimit(headers) == {
        "x-ratelimit-limit-requests": "-1",
        "x-ratelimit-remaining-requests": "-1",
        "x-ratelimit-reset-requests": "0",
        "x-ratelimit-limit-tokens": "-1",
        "x-ratelimit-remaining-tokens": "-1",
        "x-ratelimit-reset-tokens": "0",
    }
    with pytest.raises(openai.RateLimitError) as exc:
        create(sdk)
    assert "retry-after" not in exc.value.response.headers and "retry-after-ms" not in exc.value.response.headers
    assert exc.value.response.headers["x-ratelimit-remaining-requests"] == "-1"
    with pytest.raises(openai.RateLimitError) as exc:  # injected 429s look the same on Responses
        create(sdk, model="other", extra_headers={"x-emulator-fault": "429"})
    assert "retry-after-ms" not in exc.value.response.headers
    ctl.set_quota(model="chat-m", rpm=2)  # Chat Completions keep OpenAI's headers
    chat = sdk.chat.completions.with_raw_response.create(model="chat-m", messages=[{"role": "user", "content": "x"}])
    assert chat.headers["x-ratelimit-remaining-requests"] == "1"
    # what the service makes of it: transient, with no retry_after to go by
    error = classify(exc.value)
    assert error.transient and error.status == 429 and error.retry_after is None


def test_no_ratelimit_headers_mode_keeps_retry_after(ctl, sdk):
    ctl.set_quota(rpm=1, ratelimit_headers="none")
    headers, _ = create(sdk)
    assert ratelimit(headers) == {}
    with pytest.raises(openai.RateLimitError) as exc:
        create(sdk)
    assert set(ratelimit(exc.value.response.headers)) == {"retry-after", "retry-after-ms"}
    error = classify(exc.value)
    assert error.transient and 0 < error.retry_after <= 60


def test_insufficient_quota_is_a_429_no_waiting_fixes(ctl, qemu, sdk):
    _, before = create(sdk)
    ctl.configure(insufficient_quota=True)
    with openai.OpenAI(base_url=qemu.base_url, api_key="k") as retrying:
        with pytest.raises(openai.RateLimitError) as exc:
            retrying.responses.create(model="m", input="x", background=True)
        e = exc.value
        assert e.code == "insufficient_quota" and e.type == "insufficient_quota"
        assert "retry-after" not in e.response.headers and "retry-after-ms" not in e.response.headers
        # the SDK retries it anyway (3 attempts): only the caller can tell it apart, by its code
        assert ctl.stats()["quota"]["insufficient_quota"] == 3
        with pytest.raises(openai.RateLimitError):
            retrying.with_options(max_retries=0).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
        assert retrying.responses.retrieve(before.id).status == "completed"  # reading still works
    error = classify(e)
    assert not error.transient and error.code == "insufficient_quota"
    ctl.configure(insufficient_quota=False)
    with pytest.raises(openai.RateLimitError) as exc:  # or for one request, by header
        create(sdk, extra_headers={"x-emulator-fault": "insufficient_quota"})
    assert exc.value.code == "insufficient_quota"
    assert len(ctl.responses()) == 1


def test_quota_settings_are_validated_and_all_or_nothing(ctl, qemu):
    url = f"{qemu.base_url}/_emulator/config"
    for bad, name in (
        ({"quota_style": "gcp"}, "quota_style"),
        ({"rpm_limit": -1}, "rpm_limit"),
        ({"model_limits": {"m": {"rpm": "ten"}}}, "model_limits"),
        ({"model_limits": "not json"}, "model_limits"),
        ({"quota_window_s": 0}, "quota_window_s"),
        ({"ratelimit_headers": "azure"}, "ratelimit_headers"),
        ({"tpm_limit": 1.5}, "tpm_limit"),
    ):
        reply = httpx.post(url, json={"rpm_limit": 7, **bad})
        assert reply.status_code == 400 and name in reply.json()["error"]["message"], bad
    assert ctl.config()["rpm_limit"] == 0  # nothing was applied
    assert ctl.set_quota(model="m", tpm=10)["model_limits"] == {"m": {"tpm": 10}}


def test_reset_refills_every_window(ctl, sdk):
    ctl.set_quota(rpm=1, quota_window_s=600)
    create(sdk)
    with pytest.raises(openai.RateLimitError):
        create(sdk)
    ctl.reset()
    create(sdk)
