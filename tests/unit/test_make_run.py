"""`make run`'s configuration (local/make_run.py `plan` and `banner`): what the app gets from the developer's
environment, how runs end, and what the banner says. Nothing is started here; tests/service/test_make_run.py
starts the stack once."""

from __future__ import annotations

import stat

import pytest

from local.make_run import WIRING, banner, dev_secrets, make_run_stack, plan
from local.stack import Ports, new_webhook_secrets
from shared.settings import SettingsError

DEV = {
    "RUN_TOKEN_KEY": "dev-token-key-" + "t" * 40,
    "WEBHOOK_SIGNING_SECRETS": new_webhook_secrets(1)[0],
    "RESPONSES_API_KEYS": "dev:" + "d" * 43 + ":operator",
    "PROVIDER_WEBHOOK_SECRETS": new_webhook_secrets(1)[0],
}
USER_KEY = "u" * 40
OPENAI_KEY = "sk-test-" + "o" * 30


def test_an_exported_responses_api_key_wins_over_the_generated_one_and_the_banner_says_so():
    run = plan({"RESPONSES_API_KEYS": f"me:{USER_KEY}:operator app1:{'a' * 40}"}, DEV)
    assert run.env["RESPONSES_API_KEYS"] == f"me:{USER_KEY}:operator app1:{'a' * 40}"
    assert {key.caller for key in run.settings.facade.api_keys} == {"me", "app1"}
    assert run.from_user == ("RESPONSES_API_KEYS",)
    text = banner(run)
    assert "RESPONSES_API_KEYS from your environment (callers: app1, me)" in text
    assert ".local/secrets.env" not in text  # the generated key is not the one to use
    assert USER_KEY not in text and DEV["RESPONSES_API_KEYS"].split(":")[1] not in text  # no key is printed


def test_without_an_export_the_generated_key_is_used_and_the_banner_says_where_it_is():
    run = plan({}, DEV)
    assert run.env["RESPONSES_API_KEYS"] == DEV["RESPONSES_API_KEYS"]
    assert run.from_user == ()
    text = banner(run)
    assert "generated into .local/secrets.env" in text and "sed -n" in text
    assert DEV["RESPONSES_API_KEYS"].split(":")[1] not in text
    assert "From your environment" not in text


def test_every_secret_and_choice_of_make_run_yields_to_the_environment():
    user = {
        "RUN_TOKEN_KEY": "mine-" + "r" * 40,
        "WEBHOOK_SIGNING_SECRETS": " ".join(new_webhook_secrets(2)),
        "SWEEP_SCHEDULE": "*/5 * * * * *",
        "WEBHOOK_ALLOW_HTTP": "false",
    }
    run = plan(user, DEV)
    for name, value in user.items():
        assert run.env[name] == value, name
    # The receiver verifies what the app signs with: the exported secrets, not the generated one.
    assert run.webhook_secrets == tuple(user["WEBHOOK_SIGNING_SECRETS"].split())
    assert set(run.from_user) == set(user)
    assert "From your environment (instead of make run's own): RUN_TOKEN_KEY, SWEEP_SCHEDULE" in banner(run)


def test_an_empty_export_counts_as_unset():
    run = plan({"RESPONSES_API_KEYS": "  ", "RUN_TOKEN_KEY": ""}, DEV)
    assert run.env["RESPONSES_API_KEYS"] == DEV["RESPONSES_API_KEYS"]
    assert run.env["RUN_TOKEN_KEY"] == DEV["RUN_TOKEN_KEY"]
    assert run.from_user == ()


def test_the_wiring_between_the_processes_is_make_runs_own():
    run = plan(
        {
            "AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=prod;AccountKey=eA==",
            "EMULATOR_BASE_URL": "http://elsewhere:9/v1",
        },
        DEV,
    )
    assert not set(WIRING) & set(run.env) and not set(WIRING) & set(run.from_user)


def test_the_emulator_reaches_the_app_so_runs_end_on_push():
    run = plan({}, DEV)
    assert (run.provider, run.strategy) == ("emulator", "push")
    assert run.env["PROVIDER_WEBHOOK_SECRETS"] == DEV["PROVIDER_WEBHOOK_SECRETS"]
    assert run.emulator_push_secret == DEV["PROVIDER_WEBHOOK_SECRETS"]  # the emulator signs what the app verifies
    text = banner(run)
    assert "Completion: push (the emulator sends signed provider webhooks" in text
    assert "the local emulator (nothing leaves this machine)" in text and "REAL" not in text


@pytest.mark.parametrize(
    "environ, kind, variable",
    [
        ({"OPENAI_API_KEY": OPENAI_KEY}, "openai", "OPENAI_API_KEY"),
        ({"AZURE_OPENAI_ENDPOINT": "https://my-aoai.openai.azure.com"}, "azure_openai", "AZURE_OPENAI_ENDPOINT"),
        ({"MODEL_PROVIDER": "openai", "OPENAI_API_KEY": OPENAI_KEY}, "openai", "MODEL_PROVIDER"),
    ],
)
def test_a_real_provider_cannot_reach_127_0_0_1_so_runs_are_watched_and_the_banner_warns(environ, kind, variable):
    run = plan(environ, DEV)
    assert (run.provider, run.strategy) == (kind, "watch")
    assert run.env["PROVIDER_WEBHOOK_SECRETS"] == "" and run.emulator_push_secret is None
    text = banner(run)
    assert f"REAL, BILLED MODEL PROVIDER: {kind}" in text and f"{variable} is set in your environment" in text
    assert "Completion: watch. The provider cannot reach 127.0.0.1" in text
    assert OPENAI_KEY not in text  # the key that switched the provider is named, never shown


def test_runs_the_app_executes_itself_are_polled_with_a_real_provider():
    compatible = plan({"OPENAI_COMPATIBLE_BASE_URL": "http://localhost:11434/v1"}, DEV)
    assert (compatible.provider, compatible.settings.executor.backend, compatible.strategy) == (
        "openai_compatible",
        "executor",
        "poll",
    )
    text = banner(compatible)
    assert "REAL MODEL SERVER: openai_compatible at http://localhost:11434/v1" in text and "BILLED MODEL" not in text
    executor = plan({"OPENAI_API_KEY": OPENAI_KEY, "RUN_BACKEND": "executor"}, DEV)
    assert (executor.settings.executor.backend, executor.strategy) == ("executor", "poll")


def test_a_strategy_you_set_is_used_as_it_is():
    polled = plan({"OPENAI_API_KEY": OPENAI_KEY, "COMPLETION_STRATEGY": "poll"}, DEV)
    assert polled.strategy == "poll" and "Completion: poll, as you set it." in banner(polled)
    # With the emulator too, and then it does not push either: poll means poll.
    local = plan({"COMPLETION_STRATEGY": "poll"}, DEV)
    assert local.strategy == "poll" and local.env["PROVIDER_WEBHOOK_SECRETS"] == ""
    assert local.emulator_push_secret is None


def test_provider_webhook_secrets_you_set_mean_push_and_the_banner_says_the_provider_must_reach_you():
    secret = new_webhook_secrets(1)[0]
    run = plan({"OPENAI_API_KEY": OPENAI_KEY, "PROVIDER_WEBHOOK_SECRETS": secret}, DEV)
    assert run.strategy == "push" and run.env["PROVIDER_WEBHOOK_SECRETS"] == secret
    assert run.emulator_push_secret is None
    assert "The provider must reach http://127.0.0.1:7071/api/provider/webhooks" in banner(run)
    # The emulator signs with the first secret you export, so the app verifies its webhooks.
    assert plan({"PROVIDER_WEBHOOK_SECRETS": secret}, DEV).emulator_push_secret == secret


def test_settings_the_app_would_refuse_are_refused_before_anything_starts():
    with pytest.raises(SettingsError, match="PROVIDER_WEBHOOK_SECRETS"):
        plan({"OPENAI_API_KEY": OPENAI_KEY, "COMPLETION_STRATEGY": "push"}, DEV)
    with pytest.raises(SettingsError, match="RESPONSES_API_KEYS"):
        plan({"RESPONSES_API_KEYS": "me:short"}, DEV)


def test_the_emulator_is_told_to_push_only_when_the_plan_says_so(tmp_path):
    ports = Ports.free()
    pushing = make_run_stack(plan({}, DEV), ports=ports, log_dir=tmp_path)
    assert pushing.emulator_config["webhook_url"] == f"http://127.0.0.1:{ports.host}/api/provider/webhooks"
    assert pushing.emulator_config["webhook_secret"] == DEV["PROVIDER_WEBHOOK_SECRETS"]
    watching = make_run_stack(plan({"OPENAI_API_KEY": OPENAI_KEY}, DEV), ports=ports, log_dir=tmp_path)
    assert "webhook_url" not in watching.emulator_config


def test_dev_secrets_are_made_once_private_and_kept(tmp_path):
    path = tmp_path / "secrets.env"
    first = dev_secrets(path)
    assert set(first) == set(DEV) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dev_secrets(path) == first
