import pytest

from shared.settings import Settings, SettingsError, declared_settings

BASE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "RUN_TOKEN_KEY": "r" * 40}


def test_defaults_give_the_local_emulator():
    settings = Settings.from_env(BASE)
    assert settings.provider.kind == "emulator"
    assert settings.webhook_schedule == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    assert not settings.webhook_allow_http and not settings.webhook_allow_private


@pytest.mark.parametrize(
    "override,named",
    [
        ({"RUN_TOKEN_KEY": ""}, "RUN_TOKEN_KEY"),
        ({"RUN_TOKEN_KEY": "short"}, "RUN_TOKEN_KEY"),
        ({"RUN_TOKEN_KEY": "n" * 40 + " short"}, "RUN_TOKEN_KEY: too short (key 2 of 2)"),
        ({"AzureWebJobsStorage": ""}, "AzureWebJobsStorage"),
        ({"WEBHOOK_SIGNING_SECRETS": "plain"}, "WEBHOOK_SIGNING_SECRETS"),
        ({"WEBHOOK_SIGNING_SECRETS": "whsec_c2hvcnQ="}, "WEBHOOK_SIGNING_SECRETS"),
        ({"MODEL_PROVIDER": "openai"}, "OPENAI_API_KEY"),
        ({"MODEL_PROVIDER": "azure_openai", "AZURE_OPENAI_ENDPOINT": "http://x"}, "AZURE_OPENAI_ENDPOINT"),
    ],
)
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
    env = {
        **BASE,
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": "cid",
        **{
            f"AzureWebJobsStorage__{k}ServiceUri": f"https://acct.{k}.core.windows.net"
            for k in ("blob", "queue", "table")
        },
    }
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
    env = {
        **BASE,
        "AzureWebJobsStorage": f"DefaultEndpointsProtocol=http;AccountName=a;AccountKey={account_key};",
        "WEBHOOK_SIGNING_SECRETS": "whsec_" + "B" * 43,
        "MODEL_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-top-secret",
    }
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

    with pytest.raises(SettingsError, match=r"^RUN_TOKEN_KEY: is an unresolved Key Vault reference"):
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
    ten_minutes = _host_json(tmp_path, functionTimeout="00:10:00")
    Settings.from_env({**BASE, "STREAM_MAX_SECONDS": "599"}, host_json=ten_minutes)
    for too_long in ("600", "900"):
        with pytest.raises(SettingsError, match=r"^STREAM_MAX_SECONDS: .*functionTimeout \(600 s\)"):
            Settings.from_env({**BASE, "STREAM_MAX_SECONDS": too_long}, host_json=ten_minutes)
    unbounded = _host_json(tmp_path, functionTimeout="-1")
    assert Settings.from_env({**BASE, "STREAM_MAX_SECONDS": "10000"}, host_json=unbounded).stream_max_seconds == 10000
    with pytest.raises(SettingsError, match=r"^STREAM_MAX_SECONDS"):  # absent: Flex's 30 min
        Settings.from_env({**BASE, "STREAM_MAX_SECONDS": "1800"}, host_json=_host_json(tmp_path))


def test_the_apps_own_host_json_leaves_room_for_the_default_stream():
    from shared.settings import HOST_JSON, function_timeout_seconds

    assert HOST_JSON.name == "host.json" and (HOST_JSON.parent / "function_app.py").exists()
    assert Settings.from_env(BASE).stream_max_seconds < function_timeout_seconds()
    with pytest.raises(SettingsError, match=r"^STREAM_MAX_SECONDS"):
        Settings.from_env({**BASE, "STREAM_MAX_SECONDS": str(function_timeout_seconds())})


def test_an_openai_compatible_server_is_run_by_the_executor():
    settings = Settings.from_env({**BASE, "OPENAI_COMPATIBLE_BASE_URL": "http://vllm:8000/v1/"})
    assert settings.provider.kind == "openai_compatible" and not settings.provider.has_background_mode
    assert settings.provider.base_url == "http://vllm:8000/v1" and settings.provider.api_key is None
    assert settings.executor.backend == "executor" and settings.executor.api == "chat_completions"


@pytest.mark.parametrize(
    "override,named",
    [
        (
            {
                "MODEL_PROVIDER": "openai_compatible",
                "OPENAI_COMPATIBLE_BASE_URL": "http://x",
                "RUN_BACKEND": "background",
            },
            "RUN_BACKEND",
        ),
        ({"MODEL_PROVIDER": "openai_compatible"}, "OPENAI_COMPATIBLE_BASE_URL"),
    ],
)
def test_a_bad_executor_setting_is_named(override, named):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**BASE, **override})
    assert str(raised.value).startswith(named)


def test_the_executor_knows_the_function_timeout_it_must_stay_under():
    settings = Settings.from_env({**BASE, "RUN_BACKEND": "executor"})
    assert settings.executor.backend == "executor"
    assert settings.executor.function_timeout_seconds == 600  # host.json: 00:10:00


def test_the_watch_window_must_end_before_the_function_timeout(tmp_path):
    ten_minutes = _host_json(tmp_path, functionTimeout="00:10:00")
    watch = {**BASE, "COMPLETION_STRATEGY": "watch"}
    settings = Settings.from_env({**watch, "WATCH_WINDOW_SECONDS": "569"}, host_json=ten_minutes)
    assert settings.completion.watch_window == 569
    with pytest.raises(
        SettingsError,
        match=r"^WATCH_WINDOW_SECONDS: 570 must end at least 30 s before host.json "
        r"functionTimeout \(600 s\)$",
    ):
        Settings.from_env({**watch, "WATCH_WINDOW_SECONDS": "570"}, host_json=ten_minutes)
    # Only a watching poll step holds the stream that long.
    Settings.from_env({**BASE, "WATCH_WINDOW_SECONDS": "570"}, host_json=ten_minutes)


def test_host_json_is_read_once_per_start(monkeypatch):
    from shared.settings import model

    reads = []
    monkeypatch.setattr(model, "function_timeout_seconds", lambda path: reads.append(path) or 600.0)
    settings = Settings.from_env({**BASE, "COMPLETION_STRATEGY": "watch", "RUN_BACKEND": "executor"})
    assert len(reads) == 1 and settings.executor.function_timeout_seconds == 600


# ---- one test per kind of rule: each fails if its rule is removed -----------------------------------------------


@pytest.mark.parametrize(
    "override,message",
    [
        ({"POLL_MAX_DELAY_SECONDS": "soon"}, "POLL_MAX_DELAY_SECONDS: expected a number, got 'soon'"),
        ({"EXECUTOR_MAX_ATTEMPTS": "2.5"}, "EXECUTOR_MAX_ATTEMPTS: expected a number, got '2.5'"),
        ({"POLL_INITIAL_DELAY_SECONDS": "nan"}, "POLL_INITIAL_DELAY_SECONDS: expected a finite number, got 'nan'"),
        ({"RUN_DEADLINE_SECONDS": "inf"}, "RUN_DEADLINE_SECONDS: expected a finite number, got 'inf'"),
        ({"WEBHOOK_ALLOW_HTTP": "Maybe"}, "WEBHOOK_ALLOW_HTTP: expected true or false, got 'maybe'"),
        (
            {"WEBHOOK_RETRY_SCHEDULE": "1,x"},
            "WEBHOOK_RETRY_SCHEDULE: expected comma-separated seconds, none negative, got '1,x'",
        ),
        (
            {"EMULATOR_BASE_URL": "127.0.0.1:7070/v1"},
            "EMULATOR_BASE_URL: expected an http(s) URL, got '127.0.0.1:7070/v1'",
        ),
        (
            {"AZURE_OPENAI_ENDPOINT": "http://res.openai.azure.com"},
            "AZURE_OPENAI_ENDPOINT: expected an https:// URL, got 'http://res.openai.azure.com'",
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(override, message):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**BASE, **override})
    assert str(raised.value) == message


@pytest.mark.parametrize(
    "name,below,lowest",
    [
        ("POLL_INITIAL_DELAY_SECONDS", "0.04", "0.05"),
        ("MAX_REQUEST_BYTES", "1023", "1024"),
        ("EXECUTOR_MAX_ATTEMPTS", "0", "1"),
        ("POLL_BACKOFF_MULTIPLIER", "0.9", "1.0"),
    ],
)
def test_a_value_below_its_minimum_is_refused(name, below, lowest):
    with pytest.raises(SettingsError, match=f"^{name}: must be at least {lowest}, got "):
        Settings.from_env({**BASE, name: below})
    Settings.from_env({**BASE, name: lowest})


def test_a_value_above_its_maximum_is_refused():
    assert Settings.from_env({**BASE, "RESPONSES_MAX_WAIT_SECONDS": "225"}).facade.max_wait_seconds == 225
    with pytest.raises(SettingsError, match=r"^RESPONSES_MAX_WAIT_SECONDS: must be at most 225, got 226$"):
        Settings.from_env({**BASE, "RESPONSES_MAX_WAIT_SECONDS": "226"})


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("MODEL_PROVIDER", "llama", "emulator, openai, azure_openai or openai_compatible"),
        ("RUN_BACKEND", "threads", "background or executor"),
        ("EXECUTOR_API", "completions", "chat_completions or responses"),
        ("COMPLETION_STRATEGY", "sometimes", "poll, push or watch"),
    ],
)
def test_a_value_outside_its_choices_is_refused(name, value, expected):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**BASE, name: value})
    assert str(raised.value) == f"{name}: expected {expected}, got {value!r}"


def test_choices_are_read_in_any_case():
    settings = Settings.from_env({**BASE, "COMPLETION_STRATEGY": " Watch ", "EXECUTOR_API": "RESPONSES"})
    assert settings.completion.strategy == "watch" and settings.executor.api == "responses"


@pytest.mark.parametrize(
    "name,value,problem",
    [
        ("RUN_TOKEN_KEY", "", "required"),
        ("RUN_TOKEN_KEY", "s3cr3t-but-short", "too short"),
        ("WEBHOOK_SIGNING_SECRETS", "s3cr3t-without-prefix", "entry 1 does not start with whsec_"),
        ("WEBHOOK_SIGNING_SECRETS", "whsec_" + "A" * 43 + " whsec_s3cr3t!", "entry 2 is not base64 after whsec_"),
        ("PROVIDER_WEBHOOK_SECRETS", "whsec_c2hvcnQ=", "entry 1 must decode to 24-64 bytes"),
        ("RESPONSES_API_KEYS", "me:s3cr3t-but-short", "entry 1 (me): the key must be 32-256 characters"),
    ],
)
def test_a_secret_in_the_wrong_format_is_refused_without_repeating_it(name, value, problem):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**BASE, name: value})
    assert str(raised.value).startswith(f"{name}: {problem}")
    assert "s3cr3t" not in str(raised.value) and "c2hvcnQ" not in str(raised.value)


@pytest.mark.parametrize("setting", [s for s in declared_settings() if s.secret], ids=lambda s: s.name)
def test_no_secret_kind_repeats_the_value_it_refuses(setting):
    """The error of a setting reaches the log and the 503 body: a secret's kind must never quote the value."""
    for junk in ("s3cr3t", "whsec_s3cr3t", "whsec_" + "s3cr3t" * 10, "a:s3cr3t", "a:s3cr3t:root", "http://s3cr3t"):
        try:
            setting.parse(junk)
        except SettingsError as error:
            message = str(error)
        else:
            continue  # accepted: nothing reaches a log
        assert "s3cr3t" not in message, message


@pytest.mark.parametrize(
    "present,kind",
    [
        ({}, "emulator"),
        ({"OPENAI_API_KEY": "sk-x"}, "openai"),
        ({"OPENAI_COMPATIBLE_BASE_URL": "http://vllm/v1", "OPENAI_API_KEY": "sk-x"}, "openai_compatible"),
        (
            {"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "OPENAI_COMPATIBLE_BASE_URL": "http://vllm/v1"},
            "azure_openai",
        ),
        (
            {
                "MODEL_PROVIDER": "OpenAI",
                "OPENAI_API_KEY": "sk-x",
                "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com",
            },
            "openai",
        ),
    ],
)
def test_the_provider_is_inferred_from_the_settings_present(present, kind):
    settings = Settings.from_env({**BASE, **present})
    assert settings.provider.kind == kind
    assert settings.executor.backend == ("executor" if kind == "openai_compatible" else "background")


def test_the_completion_strategy_is_inferred_from_the_provider_webhook_secrets():
    secret = "whsec_" + "A" * 43
    assert Settings.from_env(BASE).completion.strategy == "poll"
    assert Settings.from_env({**BASE, "PROVIDER_WEBHOOK_SECRETS": secret}).completion.strategy == "push"
    assert (
        Settings.from_env(
            {**BASE, "PROVIDER_WEBHOOK_SECRETS": secret, "COMPLETION_STRATEGY": "watch"}
        ).completion.strategy
        == "watch"
    )
    with pytest.raises(SettingsError, match=r"^PROVIDER_WEBHOOK_SECRETS: required when COMPLETION_STRATEGY is push"):
        Settings.from_env({**BASE, "COMPLETION_STRATEGY": "push"})


def test_the_safety_net_never_polls_sooner_at_its_cap_than_at_its_start():
    env = {**BASE, "SAFETY_POLL_INITIAL_SECONDS": "60", "SAFETY_POLL_MAX_SECONDS": "5"}
    completion = Settings.from_env(env).completion
    assert completion.safety_poll_initial == completion.safety_poll_max == 60


# ---- the table is the whole specification -------------------------------------------------------------------------


def test_every_setting_is_in_a_group_and_its_default_is_valid():
    for setting in declared_settings():
        assert setting.group is not None, setting.name
        if setting.default is not None:
            setting.parse(None)  # raises SettingsError, naming it, if the declared default breaks its own rule


def test_each_setting_is_read_by_its_group_and_none_is_declared_in_vain(monkeypatch):
    """`Settings` reads every setting of its groups (under some configuration) and none of telemetry's or the host's:
    a declared setting that nothing reads, or a group that lies about its reader, fails here."""
    from shared.settings import Setting

    read = set()
    parse = Setting.parse
    monkeypatch.setattr(Setting, "parse", lambda self, value: read.add(self.name) or parse(self, value))
    identity = {
        "AzureWebJobsStorage": "",
        "AzureWebJobsStorage__credential": "managedidentity",
        **{
            f"AzureWebJobsStorage__{k}ServiceUri": f"https://a.{k}.core.windows.net" for k in ("blob", "queue", "table")
        },
    }
    for env in (
        {},
        identity,
        {"MODEL_PROVIDER": "openai", "OPENAI_API_KEY": "sk-x"},
        {"MODEL_PROVIDER": "azure_openai", "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"},
        {"MODEL_PROVIDER": "openai_compatible", "OPENAI_COMPATIBLE_BASE_URL": "http://vllm/v1"},
    ):
        Settings.from_env({**BASE, **env})
    assert read == {s.name for s in declared_settings() if s.group not in ("telemetry", "host")}


def test_a_reader_refuses_a_setting_of_another_group():
    from shared.settings.table import reader

    assert reader(BASE, "executor")("EXECUTOR_API") == "chat_completions"
    with pytest.raises(LookupError, match="MODEL_PROVIDER belongs to provider"):
        reader(BASE, "executor")("MODEL_PROVIDER")


KEYS = "app:" + "a" * 32 + " batch:" + "b" * 32


def test_caller_quotas_are_unlimited_by_default_and_overridden_by_name():
    from shared.settings import Quota

    assert Settings.from_env(BASE).quotas.of("anyone") == Quota(0, 0)
    settings = Settings.from_env(
        {
            **BASE,
            "RESPONSES_API_KEYS": KEYS,
            "CALLER_MAX_ACTIVE_RUNS": "5",
            "CALLER_STARTS_PER_MINUTE": "60",
            "CALLER_QUOTAS": "batch:50:600, @native:0:10",
        }
    )
    quotas = settings.quotas
    assert quotas.of("app") == Quota(5, 60) and quotas.of("batch") == Quota(50, 600)
    assert quotas.of("@native") == Quota(0, 10) and quotas.caps_active


@pytest.mark.parametrize(
    "value,problem",
    [
        ("batch:50", "entry 1 ('batch:50') is not name:active:per_minute"),
        ("batch:-1:0", "entry 1: active must be a whole number from 0 (unlimited) to 1000, got '-1'"),
        ("batch:1001:0", "entry 1: active must be a whole number from 0 (unlimited) to 1000, got '1001'"),
        ("batch:1:1.5", "entry 1: per_minute must be a whole number"),
        ("batch:1:1 batch:2:2", "entry 2: caller batch is named twice"),
        ("ba/tch:1:1", "entry 1: 'ba/tch' is neither a caller name"),
        ("bathc:1:1", "bathc is not a caller of RESPONSES_API_KEYS"),
    ],
)
def test_a_bad_caller_quota_is_named(value, problem):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**BASE, "RESPONSES_API_KEYS": KEYS, "CALLER_QUOTAS": value})
    assert str(raised.value).startswith("CALLER_QUOTAS: ") and problem in str(raised.value)
