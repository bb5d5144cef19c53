"""Parity between the service (shared/settings/, the deployed Python) and the Bicep that deploys it.

- every `in_azure == "required"` setting is an app setting of the Function App; every optional one is an app
  setting or documented as optional in infra/README.md; no "local" setting (connection string, emulator) is set;
- every `secret=True` setting that is set is a Key Vault reference, wired to a Key Vault secret, and resolved
  with the user-assigned identity;
- `%NAME%` binding expressions in function_app.py resolve to app settings;
- every Azure data plane the deployed Python imports (plus those the platform uses for the host, Key Vault
  references and Application Insights) has its role assigned to the app's identity at the right scope;
- queue, table and container names match the constants in shared/settings/names.py;
- the host's telemetry mode and the worker's OpenTelemetry setting, and the telemetry table covers every queue and
  timer function.
"""

from __future__ import annotations

import ast
import json
import re

import pytest

from shared import settings as service_settings

from .bicep_model import (
    INFRA,
    MAIN,
    REPO,
    ROLES,
    app_settings,
    body,
    child_names,
    deployed_python_files,
    function_app,
    imported_modules,
    module_calls,
    parse,
    resources,
    role_assignments,
)

KEY_VAULT_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\(SecretUri=\$\{(\w+)\}\)$")

STORAGE = "Microsoft.Storage/storageAccounts"
VAULT = "Microsoft.KeyVault/vaults"
OPENAI = "Microsoft.CognitiveServices/accounts"
APPINSIGHTS = "Microsoft.Insights/components"

# Import prefix -> (data plane, acceptable roles, scope resource type). The first matching prefix wins.
DATA_PLANES = [
    ("azure.storage.blob", "blob", {"Storage Blob Data Owner", "Storage Blob Data Contributor"}, STORAGE),
    ("azure.storage.queue", "queue", {"Storage Queue Data Contributor"}, STORAGE),
    ("azure.data.tables", "table", {"Storage Table Data Contributor"}, STORAGE),
    ("azure.keyvault.secrets", "keyvault", {"Key Vault Secrets User"}, VAULT),
    ("openai", "openai", {"Cognitive Services OpenAI User"}, OPENAI),
    ("azure.ai.inference", "openai", {"Cognitive Services OpenAI User"}, OPENAI),
    ("azure.monitor", "monitoring", {"Monitoring Metrics Publisher"}, APPINSIGHTS),
]
# Imports that reach no Azure data plane by themselves.
NO_DATA_PLANE = ("azure.functions", "azure.identity", "azure.core", "azurefunctions")


def _planes_for(module: str):
    for prefix, plane, roles, scope in DATA_PLANES:
        if module == prefix or module.startswith(prefix + "."):
            return plane, roles, scope
    return None


@pytest.fixture(scope="module")
def settings_in_bicep() -> dict:
    return app_settings()


def test_required_settings_are_app_settings(settings_in_bicep):
    missing = [
        s.name
        for s in service_settings.declared_settings()
        if s.in_azure == "required" and s.name not in settings_in_bicep
    ]
    assert not missing, f"required settings missing from the Function App app settings: {missing}"
    empty = [name for name, value in settings_in_bicep.items() if value in ("", None)]
    assert not empty, f"app settings with empty literal values: {empty}"


def test_optional_settings_are_provided_or_documented(settings_in_bicep):
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Optional settings", 1)
    assert len(section) == 2, "infra/README.md needs an '## Optional settings' section"
    documented = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", section[1].split("\n## ", 1)[0]))
    undocumented = [
        s.name
        for s in service_settings.declared_settings()
        if s.in_azure == "optional" and s.name not in settings_in_bicep and s.name not in documented
    ]
    assert not undocumented, f"optional settings neither provided nor documented in infra/README.md: {undocumented}"


def test_local_only_settings_are_not_set_in_azure(settings_in_bicep):
    local = [
        s.name for s in service_settings.declared_settings() if s.in_azure == "local" and s.name in settings_in_bicep
    ]
    # e.g. an AzureWebJobsStorage connection string would switch the service off identity-based storage.
    assert not local, f"local-only settings must not be app settings in Azure: {local}"


def test_secrets_are_key_vault_references_only(settings_in_bicep):
    _, site = function_app()
    api_file = INFRA / "app" / "api.bicep"
    api_call = module_calls(parse(MAIN))["app/api.bicep"]
    secret_names = {s.name for s in service_settings.declared_settings() if s.secret}
    assert secret_names, "shared/settings/table.py declares no secrets?"
    required = {s.name for s in service_settings.declared_settings() if s.in_azure == "required"}
    for name in sorted(secret_names & set(settings_in_bicep)):
        value = (
            _reference_or_empty_until_set(settings_in_bicep[name]) if name not in required else settings_in_bicep[name]
        )
        match = KEY_VAULT_REFERENCE.match(value) if isinstance(value, str) else None
        assert match, f"{name} must be @Microsoft.KeyVault(SecretUri=${{<param>}}), got {value!r}"
        param = match.group(1)
        assert param in (parse(api_file).get("parameters") or {}), f"{name}: {param} is not a parameter of api.bicep"
        wired = api_call["params"].get(param)
        assert isinstance(wired, dict) and "keyVault" in str(wired) and "outputs" in str(wired), (
            f"{name}: main.bicep must pass a Key Vault module output as {param}, got {wired!r}"
        )
    # Secrets must not appear as literals anywhere in the templates either.
    for path in INFRA.rglob("*.bicep"):
        text = path.read_text(encoding="utf-8")
        literal = re.search(r"whsec_[A-Za-z0-9+/=]{16,}", text)
        assert not literal, f"{path.name}: literal webhook secret {literal.group(0)[:10]}..."
    props = body(site)["properties"]
    identity_ids = {k.strip("'") for k in body(site)["identity"]["userAssignedIdentities"]}
    assert props.get("keyVaultReferenceIdentity") and f"${{{props['keyVaultReferenceIdentity']}}}" in identity_ids, (
        "keyVaultReferenceIdentity must be the user-assigned identity of the app"
    )


def _reference_or_empty_until_set(value):
    """An optional secret may read `empty(p) ? '' : '@Microsoft.KeyVault(SecretUri=${p})'`: empty (the service
    uses its default) until the secret exists, never a reference to a secret that does not exist yet (the service
    refuses unresolved references). Returns the reference, or the value unchanged when it is not of that form."""
    operator = value.get("operator", {}) if isinstance(value, dict) else {}
    if operator.get("type") != "conditional":
        return value
    operands = operator["operands"]
    reference = operands["false_value"]
    match = KEY_VAULT_REFERENCE.match(reference) if isinstance(reference, str) else None
    tested = (operands["condition"].get("function") or {}) if isinstance(operands["condition"], dict) else {}
    assert (
        operands["true_value"] == ""
        and match
        and tested.get("type") == "empty"
        and tested["parameters"]["item_to_test"] == match.group(1)
    ), f"expected empty(p) ? '' : '@Microsoft.KeyVault(SecretUri=${{p}})', got {value!r}"
    return reference


def test_required_secrets_come_from_key_vault_secrets(settings_in_bicep):
    kv = parse(INFRA / "app" / "keyvault.bicep")
    secrets = [r for r in (kv.get("resources") or {}).values() if r["type"] == "Microsoft.KeyVault/vaults/secrets"]
    required_secrets = [s for s in service_settings.declared_settings() if s.secret and s.in_azure == "required"]
    assert len(secrets) >= len(required_secrets)
    vault = next(r for r in kv["resources"].values() if r["type"] == "Microsoft.KeyVault/vaults")
    assert body(vault)["properties"]["enableRbacAuthorization"] is True
    kv_params = kv.get("parameters") or {}
    for secret in secrets:
        value = body(secret)["properties"]["value"]
        assert isinstance(value, str) and value in kv_params, f"secret value must be a parameter, got {value!r}"
        assert any(d["type"] == "secure" for d in kv_params[value]["decorators"]), f"{value} must be @secure()"


def test_binding_expressions_resolve_to_app_settings(settings_in_bicep):
    source = (REPO / "function_app.py").read_text(encoding="utf-8") if (REPO / "function_app.py").exists() else ""
    names = set(re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)%", source))
    missing = sorted(names - set(settings_in_bicep))
    assert not missing, f"binding expressions without an app setting (the host cannot resolve them): {missing}"


def test_platform_settings_for_flex_python(settings_in_bicep):
    assert settings_in_bicep["PYTHON_ENABLE_INIT_INDEXING"] == "1"
    assert settings_in_bicep["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings_in_bicep["AzureWebJobsStorage__clientId"] == settings_in_bicep["AZURE_CLIENT_ID"]
    assert "Authorization=AAD" in settings_in_bicep["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in settings_in_bicep
    assert settings_in_bicep["MODEL_PROVIDER"] in ("azure_openai", "openai")
    for forbidden in (
        "FUNCTIONS_WORKER_RUNTIME",
        "FUNCTIONS_EXTENSION_VERSION",
        "AzureWebJobsStorage",
        "WEBSITE_RUN_FROM_PACKAGE",
    ):
        assert forbidden not in settings_in_bicep, f"{forbidden} must not be set on Flex Consumption"
    for flag in ("WEBHOOK_ALLOW_HTTP", "WEBHOOK_ALLOW_PRIVATE_ADDRESSES"):
        assert settings_in_bicep.get(flag, "false") == "false", f"{flag} is a development-only switch"
    _, site = function_app()
    config = body(site)["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert set(config["scaleAndConcurrency"]) >= {"instanceMemoryMB", "maximumInstanceCount"}
    assert config["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"


def test_resource_names_match_settings():
    tree = parse(INFRA / "app" / "storage.bicep")
    s = service_settings
    queues = child_names(tree, "Microsoft.Storage/storageAccounts/queueServices/queues")
    for queue in (s.POLL_QUEUE, s.WEBHOOK_QUEUE, s.EXECUTE_QUEUE):
        assert {queue, f"{queue}-poison"} <= queues, f"queue {queue} (and its poison queue) missing: {queues}"
    tables = child_names(tree, "Microsoft.Storage/storageAccounts/tableServices/tables")
    assert {s.RUNS_TABLE, s.SESSIONS_TABLE, s.IDEMPOTENCY_TABLE, s.INDEX_TABLE, s.EVENTS_TABLE} <= tables, tables
    containers = child_names(tree, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert s.PAYLOAD_CONTAINER in containers, containers
    account = next(r for r in tree["resources"].values() if r["type"] == STORAGE)
    props = body(account)["properties"]
    assert props["allowSharedKeyAccess"] is False and props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert all(k.startswith(s.STORAGE_CONNECTION + "__") for k in app_settings() if k.startswith(s.STORAGE_CONNECTION))


def test_a_lifecycle_rule_backs_up_retention_for_run_payloads():
    tree = parse(INFRA / "app" / "storage.bicep")
    (policy,) = resources(tree, "Microsoft.Storage/storageAccounts/managementPolicies").values()
    (rule,) = body(policy)["properties"]["policy"]["rules"]
    assert rule["definition"]["filters"]["prefixMatch"] == [f"{service_settings.PAYLOAD_CONTAINER}/"]
    days = rule["definition"]["actions"]["baseBlob"]["delete"]["daysAfterModificationGreaterThan"]
    assert "retentionDays" in str(days) and "31" in str(days)  # later than any run's life plus retention
    assert app_settings()["RETENTION_DAYS"]  # the app and the rule read the same parameter


def _touched_planes() -> dict[str, tuple[set[str], str, list[str]]]:
    planes: dict[str, tuple[set[str], str, list[str]]] = {}
    unmapped = []
    for path in deployed_python_files():
        for module in imported_modules(path):
            found = _planes_for(module)
            if found:
                plane, roles, scope = found
                planes.setdefault(plane, (roles, scope, []))[2].append(f"{path.relative_to(REPO)}: {module}")
            elif module.startswith(("azure.", "azure_")) and not module.startswith(NO_DATA_PLANE):
                unmapped.append(f"{path.relative_to(REPO)}: {module}")
    assert not unmapped, (
        "Azure SDK imports with no data-plane role mapping; add them to DATA_PLANES in "
        f"tests/infra/test_parity.py and the role to infra/app/rbac.bicep: {sorted(set(unmapped))}"
    )
    return planes


def test_every_touched_data_plane_has_its_role():
    planes = _touched_planes()
    settings_ = app_settings()
    # Used by the platform whatever the Python imports: host storage (blob leases and the deployment package,
    # queue triggers, table diagnostics), Key Vault references, Application Insights with Entra auth.
    planes.setdefault("blob", ({"Storage Blob Data Owner"}, STORAGE, ["Functions host storage"]))
    planes.setdefault("queue", ({"Storage Queue Data Contributor"}, STORAGE, ["queue triggers"]))
    planes.setdefault("table", ({"Storage Table Data Contributor"}, STORAGE, ["host diagnostic events"]))
    if any(isinstance(v, str) and v.startswith("@Microsoft.KeyVault(") for v in settings_.values()):
        planes.setdefault("keyvault", ({"Key Vault Secrets User"}, VAULT, ["Key Vault references"]))
    if "APPLICATIONINSIGHTS_AUTHENTICATION_STRING" in settings_:
        planes.setdefault("monitoring", ({"Monitoring Metrics Publisher"}, APPINSIGHTS, ["App Insights (Entra)"]))

    # The identity whose principal id main.bicep passes to the role modules.
    main_calls = module_calls(parse(MAIN))
    app_assignments = []
    for assignment in role_assignments():
        rel = assignment.file.relative_to(INFRA).as_posix()
        call = main_calls.get(rel)
        if call is None or not isinstance(assignment.principal, str):
            continue
        wired = call["params"].get(assignment.principal)
        if isinstance(wired, dict) and "identity" in str(wired) and "principalId" in str(wired):
            app_assignments.append(assignment)
    assert app_assignments, "no role assignment is wired to the app identity (identity.outputs.principalId)"

    problems = []
    for plane, (roles, scope_type, why) in sorted(planes.items()):
        wanted = {ROLES[r] for r in roles}
        hits = [a for a in app_assignments if a.role_ids & wanted]
        if not hits:
            problems.append(f"{plane}: none of {sorted(roles)} is assigned to the app identity (needed by {why[:3]})")
        elif not any(a.scope_type == scope_type for a in hits):
            problems.append(f"{plane}: role assigned but not scoped to a {scope_type}")
    assert not problems, "\n".join(problems)


def test_openai_role_covers_both_provider_modes():
    """A new account gets the role in rbac.bicep; an existing one (by resource id) in openai-rbac.bicep."""
    wanted = ROLES["Cognitive Services OpenAI User"]
    files = {
        a.file.name for a in role_assignments() if wanted in a.role_ids and a.principal == "managedIdentityPrincipalId"
    }
    assert {"rbac.bicep", "openai-rbac.bicep"} <= files, files


def test_the_worker_streams_opentelemetry_and_the_app_configures_the_distro(settings_in_bicep):
    """host.json telemetryMode OpenTelemetry with PYTHON_ENABLE_OPENTELEMETRY (the worker streams its own telemetry,
    no duplicate host entries), never PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: with that one the worker would
    configure the distro itself with every automatic instrumentation on (infra/README.md, "Telemetry")."""
    from shared.telemetry import setup

    assert json.loads((REPO / "host.json").read_text())["telemetryMode"] == "OpenTelemetry"
    assert settings_in_bicep["PYTHON_ENABLE_OPENTELEMETRY"] == "true"
    assert "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY" not in settings_in_bicep
    assert "azure_sdk" in setup._DISTRO_INSTRUMENTATIONS  # the app switches the storage-request spans off


def test_every_queue_and_timer_function_is_in_the_telemetry_table():
    """The host sends no request for queue and timer invocations: infra/README.md says what each one gets instead."""
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Telemetry") : readme.index("\n## ", readme.index("## Telemetry") + 1)]
    triggered = set()
    for path in (REPO / "shared" / "functions").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                isinstance(d, ast.Call) and getattr(d.func, "attr", "") in ("queue_trigger", "timer_trigger")
                for d in node.decorator_list
            ):
                triggered.add(node.name)
    assert {"poll_run", "deliver_webhook", "execute_run", "sweep_runs", "purge_expired"} <= triggered
    missing = sorted(name for name in triggered if f"`{name}`" not in section)
    assert not missing, f"queue/timer functions not in infra/README.md's telemetry table: {missing}"
