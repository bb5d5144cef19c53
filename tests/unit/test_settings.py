import pytest

from shared.settings import Settings, SettingsError, declared_settings

BASE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "RUN_TOKEN_KEY": "r" * 40}


def test_defaults_give_the_local_emulator():
    settings = Settings.from_env(BASE)
    assert settings.provider.kind == "emulator"
    assert settings.webhook_schedule == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    assert not settings.webhook_allow_http and not settings.webhook_allow_private


@pytest.mark.parametrize("override,named", [
    ({"RUN_TOKEN_KEY": ""}, "RUN_TOKEN_KEY"),
    ({"RUN_TOKEN_KEY": "short"}, "RUN_TOKEN_KEY"),
    ({"AzureWebJobsStorage": ""}, "AzureWebJobsStorage"),
    ({"POLL_MAX_DELAY_SECONDS": "soon"}, "POLL_MAX_DELAY_SECONDS"),
    ({"POLL_INITIAL_DELAY_SECONDS": "0"}, "POLL_INITIAL_DELAY_SECONDS"),
    ({"WEBHOOK_ALLOW_HTTP": "maybe"}, "WEBHOOK_ALLOW_HTTP"),
    ({"WEBHOOK_SIGNING_SECRETS": "plain"}, "WEBHOOK_SIGNING_SECRETS"),
    ({"WEBHOOK_SIGNING_SECRETS": "whsec_c2hvcnQ="}, "WEBHOOK_SIGNING_SECRETS"),
    ({"WEBHOOK_RETRY_SCHEDULE": "1,x"}, "WEBHOOK_RETRY_SCHEDULE"),
    ({"MODEL_PROVIDER": "llama"}, "MODEL_PROVIDER"),
    ({"MODEL_PROVIDER": "openai"}, "OPENAI_API_KEY"),
    ({"MODEL_PROVIDER": "azure_openai", "AZURE_OPENAI_ENDPOINT": "http://x"}, "AZURE_OPENAI_ENDPOINT"),
])
def test_a_bad_setting_is_named(override, named):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**BASE, **override})
    assert str(raised.value).startswith(named)


def test_azure_openai_uses_the_v1_path_and_entra_id_without_a_key():
    settings = Settings.from_env({**BASE, "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com"})
    assert settings.provider.kind == "azure_openai"
    assert settings.provider.base_url == "https://res.openai.azure.com/openai/v1/"
    assert settings.provider.api_key is None


def test_identity_storage_wins_over_an_injected_connection_string():
    env = {**BASE, "AzureWebJobsStorage__credential": "managedidentity", "AzureWebJobsStorage__clientId": "cid",
           **{f"AzureWebJobsStorage__{k}ServiceUri": f"https://acct.{k}.core.windows.net" for k in ("blob", "queue", "table")}}
    storage = Settings.from_env(env).storage
    assert storage.uses_identity and storage.client_id == "cid"


def test_secrets_never_show_in_repr():
    settings = Settings.from_env({**BASE, "OPENAI_API_KEY": "sk-secret-value", "MODEL_PROVIDER": "openai"})
    assert "sk-secret-value" not in repr(settings) and "rrrr" not in repr(settings)


def test_every_declared_setting_has_a_description():
    assert all(s.description for s in declared_settings())


def test_the_readme_configuration_table_is_the_generated_one():
    from pathlib import Path

    from shared.settings import markdown_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert markdown_table() in readme


def test_no_secret_appears_in_the_settings_repr():
    # The defect: repr(Settings) showed the storage connection string with its account key.
    account_key = "c2VjcmV0LWFjY291bnQta2V5LXRoYXQtbXVzdC1uZXZlci1iZS1sb2dnZWQ="
    env = {**BASE, "AzureWebJobsStorage": f"DefaultEndpointsProtocol=http;AccountName=a;AccountKey={account_key};",
           "WEBHOOK_SIGNING_SECRETS": "whsec_" + "B" * 43, "MODEL_PROVIDER": "openai", "OPENAI_API_KEY": "sk-top-secret"}
    text = repr(Settings.from_env(env)) + str(Settings.from_env(env))
    for secret in (account_key, "B" * 43, "sk-top-secret", BASE["RUN_TOKEN_KEY"]):
        assert secret not in text


def test_webhooks_are_optional():
    settings = Settings.from_env({**BASE, "WEBHOOK_SIGNING_SECRETS": ""})
    assert settings.webhook_secrets == ()


@pytest.mark.parametrize("schedule", ["", "1,-2", "nan", "1,inf"])
def test_a_webhook_schedule_must_be_finite_delays(schedule):
    with pytest.raises(SettingsError):
        Settings.from_env({**BASE, "WEBHOOK_RETRY_SCHEDULE": schedule or ","})
