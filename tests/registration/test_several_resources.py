"""The registration hook with a second Azure OpenAI resource (main.bicep's second account, AZURE_PROVIDER_DEPLOYMENTS):
the endpoint registered on each resource, each resource's secret in PROVIDER_WEBHOOK_SECRETS so that the app
accepts the events of both, told apart by the provider's `signing_secret_hint`; rotation, the drop of the previous
secrets, a run that stops half-way, a resource added later, a stale secret at one of them, and turning push off.
Two emulator deployments on their own ports stand for the two resources (each signs with its own secrets), over
real HTTP; the azd environment and the Azure side are the in-memory fakes of fakes.py."""

from __future__ import annotations

import json
import re
import time

import pytest

from infra.hooks import provider_webhook as hook
from local.emulator import EmulatorServer

from .fakes import MemoryApp, MemoryEnvironment
from .test_provider_webhook import (
    HOURS,
    NO_FAULTS,
    SECRET_URI,
    accepts,
    admin,
    azd_values,
    end_a_response,
    registered,
)

NAMES = ("primary", "spillover")


@pytest.fixture(scope="module")
def emu() -> EmulatorServer:
    server = EmulatorServer(
        port=0, time_scale=0.02, webhook_time_scale=0.01, deployments={name: {} for name in NAMES}
    ).start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def resources(emu):
    """The two resources, each as the hook sees it (Azure's dashboard route) and as the emulator's admin API does."""
    deployments = [emu.deployment(name) for name in NAMES]
    for dep in deployments:
        admin(dep, "POST", "reset", json={"webhook_endpoints": True})
    yield deployments
    for dep in deployments:
        admin(dep, "POST", "config", json=NO_FAULTS)


@pytest.fixture
async def providers(resources):
    made = [hook.ProviderEndpoints.for_azure(dep.root_url + "/", "k", max_retries=0) for dep in resources]
    yield made
    for provider in made:
        await provider.close()


async def register(providers, env, app, url, **kw) -> list[hook.Outcome]:
    return await hook.reconcile(providers, env, app, url=url, secret_uri=SECRET_URI, name="background-runs test", **kw)


def secrets_at(resources) -> list[str]:
    """The secret each resource signs with now."""
    return [only(registered(dep))["signing_secret"] for dep in resources]


def only(endpoints: list[dict]) -> dict:
    [endpoint] = endpoints
    return endpoint


async def test_the_first_run_registers_on_each_resource_and_the_app_accepts_the_events_of_both(
    resources, providers, url, receiver
):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)

    outcomes = await register(providers, env, app, url)

    first, second = secrets_at(resources)
    assert first != second and all(only(registered(dep))["url"] == url for dep in resources)
    assert (
        sorted(hook.split_secrets(env.get(hook.SECRETS_VAR)))
        == sorted([first, second])
        == sorted(app.versions[-1].split())
    )
    assert app.setting_value == f"@Microsoft.KeyVault(SecretUri={SECRET_URI})" and env.get(hook.PENDING_VAR) == ""
    assert [(o.action, o.secret_count, o.where) for o in outcomes] == [
        ("created", 2, dep.root_url) for dep in resources
    ]
    for dep, own, other in ((resources[0], first, second), (resources[1], second, first)):
        delivery = await end_a_response(dep, receiver)
        assert accepts(app.resolved(), delivery)
        assert accepts(own, delivery) and not accepts(other, delivery)  # one resource's secret is not enough


async def test_a_second_run_changes_nothing_at_either_resource(resources, providers, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    await register(providers, env, app, url)
    before, env_writes, app_writes = [registered(dep) for dep in resources], list(env.writes), list(app.writes)

    outcomes = await register(providers, env, app, url)

    assert [(o.action, o.app_updated) for o in outcomes] == [("unchanged", False)] * 2
    assert [registered(dep) for dep in resources] == before
    assert env.writes == env_writes and app.writes == app_writes


async def test_rotation_rotates_each_resource_and_keeps_each_previous_secret_for_72_hours(resources, providers, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    await register(providers, env, app, url)
    old = secrets_at(resources)
    t0 = time.time()

    rotated = await register(providers, env, app, url, rotate=True, now=t0)

    new = secrets_at(resources)
    assert set(new).isdisjoint(old) and [o.action for o in rotated] == ["rotated"] * 2
    assert sorted(app.resolved().split()) == sorted(new + old) and rotated[-1].secret_count == 4
    assert env.get(hook.ROTATED_AT_VAR) == str(int(t0))

    kept = await register(providers, env, app, url, now=t0 + 71 * HOURS)
    assert [o.action for o in kept] == ["unchanged"] * 2 and len(app.resolved().split()) == 4
    assert any("previous secret stays" in note for note in kept[-1].notes)

    # Which secret is whose, the hints tell, not the order (a pipeline's copy or a hand edit may have any).
    env.values[hook.SECRETS_VAR] = " ".join([old[0], new[1], old[1], new[0]])
    dropped = await register(providers, env, app, url, now=t0 + 72 * HOURS)
    assert [o.action for o in dropped] == ["dropped-previous"] * 2
    assert sorted(app.resolved().split()) == sorted(new) == sorted(env.get(hook.SECRETS_VAR).split())
    assert env.get(hook.ROTATED_AT_VAR) == "" and secrets_at(resources) == new


async def test_a_run_that_stops_at_the_second_resource_keeps_the_first_ones_secret(resources, providers, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    admin(resources[1], "POST", "config", json={"fault_endpoints": "webhook_endpoints", "fault_500_rate": 1.0})

    with pytest.raises(hook.RegistrationError, match="HTTP 500"):
        await register(providers, env, app, url)
    # The first resource showed its secret once: it is kept before the second is asked.
    first = only(registered(resources[0]))["signing_secret"]
    assert env.get(hook.SECRETS_VAR) == first and env.get(hook.PENDING_VAR) == "true"
    assert app.setting_value == ""  # the app keeps polling meanwhile

    admin(resources[1], "POST", "config", json=NO_FAULTS)
    outcomes = await register(providers, env, app, url)

    assert [o.action for o in outcomes] == ["unchanged", "created"]
    assert sorted(app.resolved().split()) == sorted(secrets_at(resources)) and secrets_at(resources)[0] == first


async def test_a_resource_added_later_is_registered_and_the_first_keeps_its_secret(resources, providers, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    await register(providers[:1], env, app, url)
    first = only(registered(resources[0]))

    outcomes = await register(providers, env, app, url)

    assert [o.action for o in outcomes] == ["unchanged", "created"]
    assert only(registered(resources[0])) == first
    assert sorted(app.resolved().split()) == sorted(secrets_at(resources))


async def test_a_stale_secret_at_one_resource_is_taken_over_there_only(resources, providers, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    await register(providers, env, app, url)
    first = only(registered(resources[0]))
    # Another machine rotated the second resource's secret: the stored one no longer matches its hint.
    admin(resources[1], "POST", "reset", json={"webhook_endpoints": True})
    await register(providers[1:], MemoryEnvironment(), MemoryApp(SECRET_URI), url)

    outcomes = await register(providers, env, app, url)

    assert [o.action for o in outcomes] == ["unchanged", "adopted"]
    assert only(registered(resources[0])) == first  # the first resource is not touched
    assert sorted(app.resolved().split()) == sorted(secrets_at(resources))  # and the stale secret is gone


async def test_turning_off_deletes_the_endpoint_at_each_resource(resources, providers, url):
    env, app = MemoryEnvironment(), MemoryApp(SECRET_URI)
    await register(providers, env, app, url)

    outcomes = await hook.turn_off(providers, env, app, url=url)

    assert [o.action for o in outcomes] == ["removed"] * 2
    assert all(registered(dep) == [] for dep in resources) and app.setting_value == ""
    assert env.get(hook.SECRETS_VAR) == ""


async def test_the_hook_command_registers_on_every_resource_main_bicep_lists(resources, receiver, capsys):
    async def entra_token() -> str:
        return "entra-token"

    # The shape of main.bicep's output AZURE_PROVIDER_DEPLOYMENTS (tests/infra/test_spillover.py checks the template).
    pool = [
        {"name": name, "provider": "azure_openai", "endpoint": dep.root_url + "/", "deployment": "gpt-4.1-mini",
         "priority": n, "weight": 1}
        for n, (name, dep) in enumerate(zip(NAMES, resources, strict=True))
    ]  # fmt: skip
    # AZURE_OPENAI_ENDPOINT (with a key: the emulator takes any) is the first resource; the second gets the token.
    values = azd_values(resources[0], receiver, **{hook.POOL_VAR: json.dumps(pool)})
    env, app = MemoryEnvironment(values), MemoryApp(SECRET_URI)
    providers = hook.providers_from(values, entra_token)
    try:
        assert [p.where for p in providers] == [dep.root_url for dep in resources]
        outcomes = await hook.run(hook._parser().parse_args(["--allow-http"]), env, app, providers, values)
    finally:
        for provider in providers:
            await provider.close()
    assert [o.action for o in outcomes] == ["created"] * 2
    assert sorted(app.resolved().split()) == sorted(secrets_at(resources))
    out = capsys.readouterr().out
    for dep in resources:
        assert f"at {dep.root_url}" in out and only(registered(dep))["signing_secret_hint"] in out
        assert only(registered(dep))["signing_secret"] not in out


def test_the_resources_are_the_distinct_azure_openai_endpoints_of_the_pool():
    pool = [
        {"name": "ptu", "endpoint": "https://a.openai.azure.com/", "deployment": "d1"},
        {"name": "ptu-2", "endpoint": "https://a.openai.azure.com/openai/v1", "deployment": "d2"},  # same resource
        {"name": "local", "provider": "openai_compatible", "endpoint": "https://vllm.example/v1"},  # no webhooks
        {"name": "payg", "provider": "azure_openai", "endpoint": "https://b.openai.azure.com", "deployment": "d1"},
    ]
    assert hook.pool_resources(json.dumps(pool)) == ["https://a.openai.azure.com", "https://b.openai.azure.com"]
    assert hook.pool_resources(" ") == []
    with pytest.raises(hook.RegistrationError, match=f"{hook.POOL_VAR} is not JSON"):
        hook.pool_resources("[{")
    with pytest.raises(hook.RegistrationError, match="'x' has no endpoint"):
        hook.pool_resources(json.dumps([{"name": "x"}]))


async def test_a_key_is_used_only_at_the_resource_it_belongs_to():
    values = {
        "AZURE_OPENAI_ENDPOINT": "https://a.openai.azure.com/",
        "AZURE_OPENAI_API_KEY": "key-of-a",
        hook.POOL_VAR: json.dumps(
            [
                {"name": "p", "endpoint": "https://a.openai.azure.com/"},
                {"name": "s", "endpoint": "https://b.openai.azure.com/"},
            ]
        ),
    }
    with pytest.raises(
        hook.RegistrationError, match=re.escape("no Azure credential for Azure OpenAI https://b.openai.azure.com")
    ):
        hook.providers_from(values, None)

    async def entra_token() -> str:
        return "entra-token"

    providers = hook.providers_from(values, entra_token)
    try:
        assert [p._client.api_key for p in providers] == ["key-of-a", ""]  # the SDK calls the provider for the token
    finally:
        for provider in providers:
            await provider.close()
