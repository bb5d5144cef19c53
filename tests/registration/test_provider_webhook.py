"""The registration hook (infra/hooks/provider_webhook.py) against the emulator's management API over real HTTP, in
both shapes (OpenAI `/v1/webhook_endpoints`, Azure `/openai/v1/dashboard/webhook_endpoints`): the first run, a
second run that changes nothing, rotation and the drop of the previous secret, management API failures, lost
state, refused access, and events the emulator signs, verified with the openai SDK against what the hook stored.
The azd environment and the Azure side (Key Vault through ARM, the app setting) are in-memory fakes (fakes.py)."""

from __future__ import annotations

import asyncio
import base64
import os
import time

import httpx
import openai
import pytest

from infra.hooks import provider_webhook as hook
from local.emulator import EmulatorServer
from tests.emulator.receiver import Delivery, Receiver

from .fakes import MemoryApp, MemoryEnvironment

SECRET_URI = "https://kv-test.vault.azure.net/secrets/provider-webhook-secrets"
REFERENCE = f"@Microsoft.KeyVault(SecretUri={SECRET_URI})"
NO_FAULTS = {
    "fault_429_rate": 0,
    "fault_500_rate": 0,
    "fault_503_rate": 0,
    "api_keys": "",
    "fault_endpoints": "create,retrieve,stream,cancel,delete,input_items,chat",
}
HOURS = 3600


@pytest.fixture(scope="module")
def emu() -> EmulatorServer:
    # webhook_time_scale: deliveries (and their retries) within milliseconds of a response's end.
    server = EmulatorServer(port=0, time_scale=0.02, webhook_time_scale=0.01).start_in_thread()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_emulator(emu):
    admin(emu, "POST", "reset", json={"webhook_endpoints": True})
    yield
    admin(emu, "POST", "config", json=NO_FAULTS)


@pytest.fixture(params=["openai", "azure"])
async def provider(request, emu):
    p = make_provider(emu, request.param)
    yield p
    await p.close()


def make_provider(emu: EmulatorServer, flavour: str, *, key: str = "k", max_retries: int = 0):
    if flavour == "openai":
        return hook.ProviderEndpoints.for_openai(key, emu.base_url, max_retries=max_retries)
    # As AZURE_OPENAI_ENDPOINT reads: the resource root, https://NAME.openai.azure.com/
    return hook.ProviderEndpoints.for_azure(emu.root_url + "/", key, max_retries=max_retries)


def admin(emu: EmulatorServer, method: str, path: str, **kw) -> dict:
    r = httpx.request(method, f"{emu.base_url}/_emulator/{path}", timeout=30, **kw)
    r.raise_for_status()
    return r.json()


def registered(emu: EmulatorServer) -> list[dict]:
    """The emulator's endpoints with their current secret (introspection, not the management API)."""
    return admin(emu, "GET", "webhook_endpoints")["data"]


async def register(provider, env, app, url, **kw) -> hook.Outcome:
    [outcome] = await hook.reconcile(
        [provider], env, app, url=url, secret_uri=SECRET_URI, name="background-runs test", **kw
    )
    return outcome


async def end_a_response(emu: EmulatorServer, receiver: Receiver) -> Delivery:
    """A background response that ends at once; the provider's webhook for it, as the app would receive it."""
    async with openai.AsyncOpenAI(base_url=emu.base_url, api_key="k") as client:
        response = await client.responses.create(
            model="gpt-4.1-mini", input="hi", background=True, metadata={"emulator_duration_ms": "200"}
        )
    await asyncio.to_thread(receiver.wait_for, lambda _: receiver.for_response(response.id), 20.0)
    return receiver.for_response(response.id)[0]


def accepts(setting: str, delivery: Delivery) -> bool:
    """What the app does with PROVIDER_WEBHOOK_SECRETS: accept when any of its secrets verifies the delivery."""
    verifier = openai.OpenAI(api_key="unused").webhooks
    for secret in hook.split_secrets(setting):
        try:
            verifier.verify_signature(delivery.body, delivery.headers, secret=secret)
            return True
        except openai.InvalidWebhookSignatureError:
            continue
    return False


def other_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


# ---- the first run and the second -----------------------------------------------------------------------------------


async def test_first_run_registers_the_endpoint_and_switches_the_app_to_push(emu, provider, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    outcome = await register(provider, env, app, url)

    [endpoint] = registered(emu)
    assert endpoint["url"] == url and sorted(endpoint["event_types"]) == sorted(hook.EVENT_TYPES)
    assert endpoint["name"] == "background-runs test"
    secret = endpoint["signing_secret"]
    assert env.get(hook.SECRETS_VAR) == secret  # azd environment -> main.bicep -> later provisions
    assert app.versions == [secret] and app.setting_value == REFERENCE  # Key Vault, then the app points at it
    assert app.resolved() == secret
    assert env.get(hook.PENDING_VAR) == ""
    assert (outcome.action, outcome.endpoint_id, outcome.secret_count) == ("created", endpoint["id"], 1)
    assert outcome.secret_hint == endpoint["signing_secret_hint"] and outcome.app_updated


async def test_the_azure_client_uses_the_dashboard_route(emu):
    azure = make_provider(emu, "azure")
    try:
        assert str(azure._client.base_url).rstrip("/") == f"{emu.root_url}/openai/v1/dashboard"
    finally:
        await azure.close()


async def test_a_second_run_changes_nothing(emu, provider, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    await register(provider, env, app, url)
    before, env_writes, app_writes = registered(emu), list(env.writes), list(app.writes)

    outcome = await register(provider, env, app, url)

    assert (outcome.action, outcome.app_updated) == ("unchanged", False)
    assert registered(emu) == before  # same endpoint, same secret, same updated_at
    assert env.writes == env_writes and app.writes == app_writes


# ---- rotation -------------------------------------------------------------------------------------------------------


async def test_rotation_keeps_the_previous_secret_for_72_hours_then_drops_it(emu, provider, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    await register(provider, env, app, url)
    old = env.get(hook.SECRETS_VAR)
    t0 = time.time()

    outcome = await register(provider, env, app, url, rotate=True, now=t0)

    [endpoint] = registered(emu)
    new = endpoint["signing_secret"]
    assert new != old and endpoint["old_secret_active"]  # the provider signs with both for 24 h
    assert (outcome.action, outcome.secret_count) == ("rotated", 2)
    assert env.get(hook.SECRETS_VAR) == f"{new} {old}" == app.resolved()
    assert env.get(hook.ROTATED_AT_VAR) == str(int(t0))
    assert app.writes[-2:] == ["store_secret", "refresh_references"]  # already a reference: re-read, no restart

    kept = await register(provider, env, app, url, now=t0 + 71 * HOURS)
    assert kept.action == "unchanged" and app.resolved() == f"{new} {old}"

    dropped = await register(provider, env, app, url, now=t0 + 72 * HOURS)
    assert (dropped.action, dropped.secret_count) == ("dropped-previous", 1)
    assert env.get(hook.SECRETS_VAR) == new == app.resolved()
    assert env.get(hook.ROTATED_AT_VAR) == ""
    assert registered(emu)[0]["signing_secret"] == new  # the provider is not touched by the drop


async def test_drop_previous_drops_it_at_once(emu, provider, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    await register(provider, env, app, url)
    await register(provider, env, app, url, rotate=True)
    outcome = await register(provider, env, app, url, drop_previous=True)
    assert outcome.action == "dropped-previous"
    assert env.get(hook.SECRETS_VAR) == registered(emu)[0]["signing_secret"] == app.resolved()


async def test_events_verify_against_the_stored_secret_also_during_a_rotation(emu, receiver, provider, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    await register(provider, env, app, url)

    delivery = await end_a_response(emu, receiver)
    assert accepts(env.get(hook.SECRETS_VAR), delivery) and accepts(app.resolved(), delivery)
    assert not accepts(other_secret(), delivery)

    before = app.resolved()  # an instance that has not re-read its Key Vault reference yet
    await register(provider, env, app, url, rotate=True)
    during = await end_a_response(emu, receiver)
    assert len(during.headers["webhook-signature"].split()) == 2
    new_only = env.get(hook.SECRETS_VAR).split()[0]
    for setting in (before, app.resolved(), new_only):  # no event is refused, whichever the app has
        assert accepts(setting, during), setting

    await register(provider, env, app, url, drop_previous=True)
    after = await end_a_response(emu, receiver)
    assert accepts(app.resolved(), after)


# ---- failures -------------------------------------------------------------------------------------------------------


async def test_a_failing_management_api_changes_nothing_and_the_next_run_registers(emu, provider, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    admin(emu, "POST", "config", json={"fault_endpoints": "webhook_endpoints", "fault_500_rate": 1.0})

    with pytest.raises(hook.RegistrationError, match="HTTP 500"):
        await register(provider, env, app, url)
    assert env.writes == [] and app.writes == [] and app.setting_value == ""  # the app keeps polling

    admin(emu, "POST", "config", json=NO_FAULTS)
    assert registered(emu) == []
    assert (await register(provider, env, app, url)).action == "created"
    assert app.resolved() == registered(emu)[0]["signing_secret"]


async def test_a_failed_rotation_keeps_the_current_secret(emu, provider, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    await register(provider, env, app, url)
    before, env_writes, app_writes = registered(emu), list(env.writes), list(app.writes)
    admin(emu, "POST", "config", json={"fault_endpoints": "webhook_endpoints", "fault_503_rate": 1.0})

    with pytest.raises(hook.RegistrationError, match="HTTP 503"):
        await register(provider, env, app, url, rotate=True)

    admin(emu, "POST", "config", json=NO_FAULTS)
    assert registered(emu) == before
    assert env.writes == env_writes and app.writes == app_writes


async def test_transient_faults_are_retried_by_the_sdk(emu, url):
    admin(
        emu,
        "POST",
        "config",
        json={"fault_endpoints": "webhook_endpoints", "fault_503_rate": 0.5, "seed": 7, "retry_after_ms": 50},
    )
    provider = make_provider(emu, "azure", max_retries=4)
    try:
        env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
        assert (await register(provider, env, app, url)).action == "created"
    finally:
        await provider.close()
    assert admin(emu, "GET", "stats")["faults"]["503"] >= 1
    assert app.resolved() == registered(emu)[0]["signing_secret"]


async def test_a_secret_lost_after_create_is_replaced_by_a_rotation(emu, provider, url):
    env, app = MemoryEnvironment(fail_sets=1), MemoryApp(SECRET_URI)
    with pytest.raises(hook.RegistrationError, match="azd env set"):
        await register(provider, env, app, url)
    [endpoint] = registered(emu)  # created, but its secret was never kept
    assert env.get(hook.SECRETS_VAR) == "" and app.writes == []

    outcome = await register(provider, env, app, url)

    [after] = registered(emu)
    assert outcome.action == "adopted" and after["id"] == endpoint["id"]
    assert after["signing_secret"] != endpoint["signing_secret"] and after["old_secret_active"]
    assert env.get(hook.SECRETS_VAR) == after["signing_secret"] == app.resolved()


async def test_a_key_vault_failure_is_finished_by_the_next_run(emu, provider, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI, fail_store=1)
    with pytest.raises(hook.RegistrationError, match="PUT secret"):
        await register(provider, env, app, url)
    secret = registered(emu)[0]["signing_secret"]
    assert env.get(hook.SECRETS_VAR) == secret and env.get(hook.PENDING_VAR) == "true"
    assert app.setting_value == ""  # still polling, never a reference to a missing secret

    outcome = await register(provider, env, app, url)

    assert (outcome.action, outcome.app_updated) == ("unchanged", True)
    assert app.resolved() == secret and env.get(hook.PENDING_VAR) == ""


async def test_a_stale_secret_in_the_environment_is_replaced(emu, provider, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    await register(provider, env, app, url)
    env.values[hook.SECRETS_VAR] = other_secret()  # e.g. a pipeline's copy from before a rotation elsewhere

    outcome = await register(provider, env, app, url)

    assert outcome.action == "adopted"
    assert env.get(hook.SECRETS_VAR) == registered(emu)[0]["signing_secret"] == app.resolved()


async def test_missing_event_types_are_added(emu, provider, url):
    async with openai.AsyncOpenAI(base_url=emu.base_url, api_key="k") as client:
        created = await client.webhooks.create(url=url, name="by hand", event_types=["response.completed"])
    env, app = MemoryEnvironment({hook.SECRETS_VAR: created.signing_secret}), MemoryApp(SECRET_URI)

    outcome = await register(provider, env, app, url)

    [endpoint] = registered(emu)
    assert sorted(endpoint["event_types"]) == sorted(hook.EVENT_TYPES)
    assert outcome.action == "unchanged" and endpoint["signing_secret"] == created.signing_secret
    assert any("event types" in note for note in outcome.notes)


async def test_refused_access_is_retried_then_names_what_is_missing(emu, provider, url):
    admin(emu, "POST", "config", json={"api_keys": "another-key"})
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    started = time.monotonic()
    with pytest.raises(hook.AccessDenied) as refused:
        await register(provider, env, app, url, access_wait=0.5, retry_delay=0.1)
    assert time.monotonic() - started >= 0.3
    assert admin(emu, "GET", "stats")["unauthorized"] >= 3
    expected = hook.AZURE_ROLE if provider.flavour == "azure_openai" else "API key"
    assert expected in str(refused.value) and "HTTP 401" in str(refused.value)
    assert env.writes == [] and app.writes == []


async def test_access_granted_while_waiting_lets_the_run_finish(emu, url):
    admin(emu, "POST", "config", json={"api_keys": "another-key"})
    provider = make_provider(emu, "azure")

    async def grant_later() -> None:
        await asyncio.sleep(0.3)  # the role assignment propagates
        await asyncio.to_thread(admin, emu, "POST", "config", json={"api_keys": "another-key,k"})

    try:
        env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
        grant = asyncio.create_task(grant_later())
        outcome = await register(provider, env, app, url, access_wait=10, retry_delay=0.1)
        await grant
    finally:
        await provider.close()
    assert outcome.action == "created" and app.resolved() == registered(emu)[0]["signing_secret"]


# ---- turning push off -----------------------------------------------------------------------------------------------


async def test_turning_off_deletes_the_endpoint_and_empties_the_setting(emu, provider, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    await register(provider, env, app, url, rotate=False)

    [outcome] = await hook.turn_off([provider], env, app, url=url)

    assert (outcome.action, outcome.app_updated) == ("removed", True)
    assert registered(emu) == [] and app.setting_value == ""
    assert env.get(hook.SECRETS_VAR) == env.get(hook.ROTATED_AT_VAR) == ""
    writes = (list(env.writes), list(app.writes))
    [again] = await hook.turn_off([provider], env, app, url=url)
    assert again.action == "off" and (env.writes, app.writes) == writes


# ---- the command azd runs -------------------------------------------------------------------------------------------


def azd_values(emu: EmulatorServer, receiver: Receiver, **extra: str) -> dict[str, str]:
    """What `azd env get-values` holds after a provision (outputs of main.bicep), pointed at the emulator."""
    return {
        "AZURE_ENV_NAME": "dev",
        "AZURE_FUNCTION_APP_URL": f"http://127.0.0.1:{receiver.port}",
        "AZURE_PROVIDER_WEBHOOK_SECRET_URI": SECRET_URI,
        "AZURE_SUBSCRIPTION_ID": "sub",
        "AZURE_RESOURCE_GROUP": "rg-dev",
        "AZURE_FUNCTION_NAME": "func-api-x",
        "AZURE_KEY_VAULT_NAME": "kv-x",
        "AZURE_OPENAI_ENDPOINT": emu.root_url + "/",
        "AZURE_OPENAI_API_KEY": "k",
        **extra,
    }


async def test_the_hook_command_registers_rotates_and_turns_off(emu, receiver, capsys):
    values = azd_values(emu, receiver)
    env, app = MemoryEnvironment(values), MemoryApp(SECRET_URI)
    [provider] = providers = hook.providers_from(values, azure_token=None)
    try:
        assert provider.flavour == "azure_openai"
        [created] = await hook.run(hook._parser().parse_args(["--allow-http"]), env, app, providers, values)
        [endpoint] = registered(emu)
        assert endpoint["url"] == values["AZURE_FUNCTION_APP_URL"] + "/api/provider/webhooks"
        assert endpoint["name"] == "background-runs dev" and created.action == "created"

        [rotated] = await hook.run(hook._parser().parse_args(["--allow-http", "--rotate"]), env, app, providers, values)
        assert rotated.action == "rotated" and len(app.resolved().split()) == 2

        off = {**values, hook.SWITCH_VAR: "off"}
        [removed] = await hook.run(hook._parser().parse_args(["--allow-http"]), env, app, providers, off)
        assert removed.action == "removed" and registered(emu) == [] and app.setting_value == ""
    finally:
        await provider.close()
    out = capsys.readouterr()
    assert endpoint["signing_secret_hint"] in out.out and "whsec_" in out.out
    for secret in (endpoint["signing_secret"], *hook.split_secrets(env.writes[-1].get(hook.SECRETS_VAR))):
        assert secret not in out.out + out.err
    assert all(len(s) > 20 for w in env.writes for s in hook.split_secrets(w.get(hook.SECRETS_VAR, "")))


def test_the_app_url_must_be_provisioned_and_https(emu, receiver):
    values = azd_values(emu, receiver)
    with pytest.raises(hook.RegistrationError, match="must be https"):
        hook.endpoint_url(values)
    assert hook.endpoint_url(values, allow_http=True).endswith("/api/provider/webhooks")
    with pytest.raises(hook.RegistrationError, match=r"AZURE_KEY_VAULT_NAME.*azd provision"):
        hook.endpoint_url({**values, "AZURE_KEY_VAULT_NAME": ""})


async def test_the_provider_is_chosen_like_the_service_chooses_it(emu, receiver):
    async def token() -> str:
        return "entra-token"

    azure = hook.provider_from({"AZURE_OPENAI_ENDPOINT": "https://cog-x.openai.azure.com/"}, token)
    openai_ = hook.provider_from(
        {
            "AZURE_OPENAI_ENDPOINT": "https://cog-x.openai.azure.com/",
            "MODEL_PROVIDER": "openai",
            "OPENAI_API_KEY": "sk-x",
        },
        token,
    )
    try:
        assert (azure.flavour, azure.where) == ("azure_openai", "https://cog-x.openai.azure.com")
        assert str(azure._client.base_url) == "https://cog-x.openai.azure.com/openai/v1/dashboard/"
        assert openai_.flavour == "openai" and str(openai_._client.base_url) == "https://api.openai.com/v1/"
    finally:
        await azure.close()
        await openai_.close()
    with pytest.raises(hook.RegistrationError, match="OPENAI_API_KEY"):
        hook.provider_from({"MODEL_PROVIDER": "openai"}, token)
    with pytest.raises(hook.RegistrationError, match="no model provider"):
        hook.provider_from({}, token)


async def test_an_azure_resource_without_rotate_secret_says_what_to_do_instead(emu, url):
    azure = make_provider(emu, "azure")
    # Azure's article documents create, list, update and delete; a resource may answer 404 to rotate_secret.
    without_rotate = hook.ProviderEndpoints(
        openai.AsyncOpenAI(
            api_key="k",
            base_url=f"{emu.root_url}/openai/v1/dashboard",
            max_retries=0,
            default_headers={"x-emulator-fault": "404"},
        ),
        flavour="azure_openai",
        where=emu.root_url,
    )
    without_rotate.find = azure.find  # listing works; every other call answers 404
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    try:
        await register(azure, env, app, url)
        before = (registered(emu), list(env.writes), list(app.writes))
        with pytest.raises(hook.ApiError, match=f"HTTP 404.*does not offer rotate_secret.*{hook.SWITCH_VAR}"):
            await register(without_rotate, env, app, url, rotate=True)
    finally:
        await azure.close()
        await without_rotate.close()
    assert (registered(emu), env.writes, app.writes) == before


def test_only_secrets_the_service_accepts_are_taken():
    assert hook.is_usable_secret(other_secret())
    assert hook.is_usable_secret("whsec_" + base64.b64encode(os.urandom(24)).decode().rstrip("="))  # unpadded
    for bad in (
        "sk-123",
        "whsec_",
        "whsec_not*base64",
        "whsec_" + base64.b64encode(os.urandom(16)).decode(),
        "whsec_" + base64.b64encode(os.urandom(65)).decode(),
    ):
        assert not hook.is_usable_secret(bad), bad
