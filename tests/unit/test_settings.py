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
    ({"RUN_TOKEN_KEY": "n" * 40 + " short"}, "RUN_TOKEN_KEY: too short (key 2 of 2)"),
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


def test_the_token_keys_during_a_rotation_are_new_then_old():
    settings = Settings.from_env({**BASE, "RUN_TOKEN_KEY": f" {'n' * 40}  {'o' * 40} "})
    assert settings.token_keys == (b"n" * 40, b"o" * 40)
    assert Settings.from_env(BASE).token_keys == (b"r" * 40,)


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


def test_the_configuration_table_of_the_docs_is_the_generated_one():
    from pathlib import Path

    from shared.settings import markdown_table

    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    marker = "<!-- generated: python -c 'from shared.settings import markdown_table; print(markdown_table())' -->"
    assert f"{marker}\n{markdown_table()}\n" in page  # right under the command that makes it


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


# ---- unresolved Key Vault references ----------------------------------------------------------------------------

UNRESOLVED = "@Microsoft.KeyVault(SecretUri=https://kv-x.vault.azure.net/secrets/run-token-key)"


@pytest.mark.parametrize("name", ["RUN_TOKEN_KEY", "WEBHOOK_SIGNING_SECRETS", "AZURE_OPENAI_API_KEY", "DEFAULT_MODEL"])
def test_an_unresolved_key_vault_reference_is_refused_by_name(name):
    # A 90-character reference would otherwise pass the RUN_TOKEN_KEY length check as if it were a key.
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**BASE, name: UNRESOLVED})
    message = str(raised.value)
    assert message.startswith(f"{name}: ") and "unresolved Key Vault reference" in message
    assert "kv-x.vault.azure.net" not in message  # the reference itself is not echoed


def test_the_vault_name_form_and_odd_spacing_are_also_refused():
    from shared.settings import refuse_unresolved_key_vault_references

    with pytest.raises(SettingsError, match="^RUN_TOKEN_KEY: is an unresolved Key Vault reference"):
        refuse_unresolved_key_vault_references({"RUN_TOKEN_KEY": "  @microsoft.keyvault(VaultName=kv;SecretName=s)"})
    refuse_unresolved_key_vault_references({"RUN_TOKEN_KEY": "x" * 40, "UNDECLARED": UNRESOLVED})


# ---- STREAM_MAX_SECONDS below functionTimeout -------------------------------------------------------------------

def _host_json(tmp_path, **fields):
    import json

    path = tmp_path / "host.json"
    path.write_text(json.dumps({"version": "2.0", **fields}))
    return path


@pytest.mark.parametrize("timeout,seconds", [("00:10:00", 600), ("1.00:00:00", 86400), ("00:03:20.5", 200.5)])
def test_function_timeout_is_read_from_host_json(tmp_path, timeout, seconds):
    from shared.settings import function_timeout_seconds

    assert function_timeout_seconds(_host_json(tmp_path, functionTimeout=timeout)) == seconds


def test_function_timeout_absent_is_the_flex_default_and_minus_one_is_unbounded(tmp_path):
    from shared.settings import FLEX_DEFAULT_FUNCTION_TIMEOUT_SECONDS, function_timeout_seconds

    assert function_timeout_seconds(_host_json(tmp_path)) == FLEX_DEFAULT_FUNCTION_TIMEOUT_SECONDS == 1800
    assert function_timeout_seconds(tmp_path / "missing.json") == 1800
    assert function_timeout_seconds(_host_json(tmp_path, functionTimeout="-1")) is None
    assert function_timeout_seconds(_host_json(tmp_path, functionTimeout=-1)) is None
    with pytest.raises(SettingsError, match="functionTimeout"):
        function_timeout_seconds(_host_json(tmp_path, functionTimeout="ten minutes"))


def test_stream_max_seconds_must_stay_below_the_function_timeout(tmp_path):
    from shared.settings import check_stream_below_function_timeout

    ten_minutes = _host_json(tmp_path, functionTimeout="00:10:00")
    check_stream_below_function_timeout(599, ten_minutes)
    for too_long in (600, 900):
        with pytest.raises(SettingsError, match=r"^STREAM_MAX_SECONDS: .*functionTimeout \(600 s\)"):
            check_stream_below_function_timeout(too_long, ten_minutes)
    check_stream_below_function_timeout(10_000, _host_json(tmp_path, functionTimeout="-1"))  # unbounded
    with pytest.raises(SettingsError):
        check_stream_below_function_timeout(1800, _host_json(tmp_path))  # absent: Flex's 30 min


def test_the_apps_own_host_json_leaves_room_for_the_default_stream():
    from shared.settings import HOST_JSON, function_timeout_seconds

    assert HOST_JSON.name == "host.json" and (HOST_JSON.parent / "function_app.py").exists()
    assert Settings.from_env(BASE).stream_max_seconds < function_timeout_seconds()
    with pytest.raises(SettingsError, match="^STREAM_MAX_SECONDS"):
        Settings.from_env({**BASE, "STREAM_MAX_SECONDS": str(function_timeout_seconds())})


def test_an_openai_compatible_server_is_run_by_the_executor():
    settings = Settings.from_env({**BASE, "OPENAI_COMPATIBLE_BASE_URL": "http://vllm:8000/v1/"})
    assert settings.provider.kind == "openai_compatible" and not settings.provider.has_background_mode
    assert settings.provider.base_url == "http://vllm:8000/v1" and settings.provider.api_key is None
    assert settings.executor.backend == "executor" and settings.executor.api == "chat_completions"


@pytest.mark.parametrize("override,named", [
    ({"RUN_BACKEND": "threads"}, "RUN_BACKEND"),
    ({"MODEL_PROVIDER": "openai_compatible", "OPENAI_COMPATIBLE_BASE_URL": "http://x", "RUN_BACKEND": "background"},
     "RUN_BACKEND"),
    ({"MODEL_PROVIDER": "openai_compatible"}, "OPENAI_COMPATIBLE_BASE_URL"),
    ({"EXECUTOR_API": "completions"}, "EXECUTOR_API"),
    ({"EXECUTOR_MAX_ATTEMPTS": "0"}, "EXECUTOR_MAX_ATTEMPTS"),
])
def test_a_bad_executor_setting_is_named(override, named):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**BASE, **override})
    assert str(raised.value).startswith(named)


def test_the_executor_knows_the_function_timeout_it_must_stay_under():
    settings = Settings.from_env({**BASE, "RUN_BACKEND": "executor"})
    assert settings.executor.backend == "executor"
    assert settings.executor.function_timeout_seconds == 600  # host.json: 00:10:00
