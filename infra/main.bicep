// Background responses as a service: everything `azd up` needs on Azure Functions Flex Consumption.
// Layout follows the azd Flex Consumption Python quickstart (subscription scope, resource group, resourceToken
// naming, app/*.bicep modules). Azure Verified Modules are used for the identity, plan, Log Analytics and
// Application Insights; storage, Key Vault, Azure OpenAI, the Function App and the role assignments are plain
// resources in app/*.bicep so that offline scanners (checkov, the parity tests in tests/infra) can see their
// security settings: `br/public:` modules cannot be restored without network access.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; hashed into every resource name.')
param environmentName string

@minLength(1)
@description('Region of every resource (Azure OpenAI: see openAiLocation). Only regions that offer Flex Consumption, so azd does not offer one where the plan cannot be created; check with az functionapp list-flexconsumption-locations.')
// The list of the azd Flex Consumption Python quickstart (Azure-Samples/functions-quickstart-python-http-azd,
// 2025-11) without its canary region eastus2euap. A region added to Flex later needs adding here.
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the deploying user or service principal; gets the same data roles as the app for local debugging against Azure. Empty: none.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
param principalType string = 'User'

// ---- Function App sizing -------------------------------------------------------------------------------------
@allowed([
  512
  2048
  4096
])
@description('Flex Consumption instance memory (MB).')
param instanceMemoryMB int = 2048

@minValue(40)
@maxValue(1000)
@description('Flex Consumption maximum instance count (scale-out cap).')
param maximumInstanceCount int = 40

// Flex runs a Python app's HTTP functions at ONE request per instance unless this is set, and an SSE stream or a
// `Prefer: wait` request holds its instance for the whole response (up to STREAM_MAX_SECONDS). The handlers are
// async and I/O-bound (they wait on storage and the model provider), so one instance serves many at once; see
// infra/README.md "HTTP concurrency" for the measured figures behind the default.
@minValue(1)
@maxValue(1000)
@description('HTTP requests one instance serves at once (functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency); more requests scale out to more instances.')
param httpPerInstanceConcurrency int = 16

@description('NCRONTAB schedule of the sweeper that repairs lost poll chains. Each run wakes the app: every minute keeps telemetry and storage transactions flowing at rest (see infra/README.md).')
param sweepSchedule string = '0 */1 * * * *'

@minValue(1)
@maxValue(3650)
@description('Days ended runs, idle sessions and old Idempotency-Keys are kept (RETENTION_DAYS). A blob lifecycle rule deletes run payloads 31 days later still, as a backstop (a run may last up to 30 days before it ends).')
param retentionDays int = 30

// ---- Model provider ------------------------------------------------------------------------------------------
@description('Use an existing Azure OpenAI endpoint (https://NAME.openai.azure.com/) instead of creating an account here.')
param existingOpenAiEndpoint string = ''

@description('Resource id of that existing account; when given, the app identity gets Cognitive Services OpenAI User on it. Otherwise assign the role yourself.')
param existingOpenAiResourceId string = ''

@description('Region of the new Azure OpenAI account (model availability differs by region). Empty: location.')
param openAiLocation string = ''

@description('Model deployment name; also the service DEFAULT_MODEL.')
param openAiDeploymentName string = 'gpt-4.1-mini'

@description('Model of the new deployment.')
param openAiModelName string = 'gpt-4.1-mini'

@description('Model version of the new deployment.')
param openAiModelVersion string = '2025-04-14'

@allowed([
  'GlobalStandard'
  'DataZoneStandard'
  'Standard'
])
param openAiDeploymentSku string = 'GlobalStandard'

@minValue(1)
@description('Deployment capacity in thousands of tokens per minute.')
param openAiDeploymentCapacity int = 10

// An optional second account in another region with the same model: its own quota and failure domain. The app gets
// PROVIDER_DEPLOYMENTS listing both (the first account before it), its identity the same role on it, and the
// postprovision hook registers the provider webhook on both. Empty: nothing extra, the same resources as without it.
@description('Region of an optional second Azure OpenAI account that takes the runs the first cannot (spillover); one with the Responses API, not the first account\'s. Empty: no second account.')
param spilloverOpenAiLocation string = ''

@minValue(1)
@description('Capacity of the second account\'s deployment, in thousands of tokens per minute.')
param spilloverOpenAiDeploymentCapacity int = 10

// ---- Key Vault ---------------------------------------------------------------------------------------------------
// Purge protection keeps a deleted vault's name for the whole soft-delete period (7 days): right for production
// (secrets cannot be destroyed by mistake), but a dev environment's `azd down` + `azd up` would then fail until it
// expires. Off by default; set it for production environments. Once on it cannot be switched off again.
@description('Key Vault purge protection: true for production environments; false lets `azd down --purge` free the vault name at once.')
param keyVaultPurgeProtection bool = false

// ---- Secrets ---------------------------------------------------------------------------------------------------
// No default: when the mapped azd environment variable (main.parameters.json) is unset, azd generates each value
// once (crypto/rand, [A-Za-z0-9]), stores it in the environment's secret config and reuses it on every later
// `azd provision`, so the secrets stay stable; `azd pipeline config` copies it into the pipeline's secret of the
// same name, so CI provisions with the same value. Outside azd, pass them explicitly (see infra/README.md). They
// only ever reach Key Vault.
@secure()
@minLength(32)
@description('HMAC key for continuation tokens (RUN_TOKEN_KEY).')
@metadata({
  azd: {
    type: 'generate'
    config: {
      length: 64
      noSpecial: true
    }
  }
})
param runTokenKey string

@secure()
@maxLength(200)
@description('During a token key rotation only: the previous RUN_TOKEN_KEY, kept after the new one so continuation tokens minted before the rotation stay valid. Empty otherwise.')
param previousRunTokenKey string = ''

@secure()
@minLength(24)
@maxLength(64)
@description('Random material of the webhook signing secret; stored as whsec_ + base64(material), i.e. 48 bytes.')
@metadata({
  azd: {
    type: 'generate'
    config: {
      length: 48
      noSpecial: true
    }
  }
})
param webhookSecretMaterial string

@secure()
@maxLength(200)
@description('During a webhook secret rotation only: the previous whsec_ secret, kept next to the new one so receivers that still have it verify every delivery. Empty otherwise.')
param previousWebhookSigningSecret string = ''

// The signing secret of the provider's webhook endpoint, one per Azure OpenAI resource (PROVIDER_WEBHOOK_SECRETS).
// Not generated: the provider returns it only when the postprovision hook (infra/hooks/provider_webhook.py) creates
// or rotates the endpoint. Empty on the first provision: no Key Vault secret, an empty app setting, and the app
// polls. The hook then stores it in the azd environment (AZURE_PROVIDER_WEBHOOK_SECRETS) and in Key Vault through
// ARM, and points the app at it; every later provision (and CI, azure.yaml pipeline.secrets) writes the same value
// back from here.
@secure()
@maxLength(1000)
@description('PROVIDER_WEBHOOK_SECRETS: space-separated whsec_ signing secrets of the provider webhook endpoints, one per Azure OpenAI resource (two per resource during a rotation). Written by the postprovision hook; empty until it has registered the endpoint (the app then polls).')
param providerWebhookSecrets string = ''

@secure()
@minLength(32)
@description('Key of the Responses API facade\'s caller `default`, an operator (RESPONSES_API_KEYS gets default:<key>:operator).')
@metadata({
  azd: {
    type: 'generate'
    config: {
      length: 48
      noSpecial: true
    }
  }
})
param responsesApiKey string

@secure()
@maxLength(4000)
@description('More Responses API callers, and during a rotation the previous key: space-separated name:key[:operator] entries (RESPONSES_API_KEYS). Empty otherwise.')
param additionalResponsesApiKeys string = ''

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-api-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(toLower(uniqueString(functionAppName, resourceToken)), 7)}'
var createOpenAi = empty(existingOpenAiEndpoint)
var createSpillover = !empty(spilloverOpenAiLocation)
var openAiEndpoint = createOpenAi ? openAi.outputs.endpoint : existingOpenAiEndpoint
// PROVIDER_DEPLOYMENTS when the second account exists: the first account first (priority 0), the second when the
// first is saturated or failing (priority 1). Microsoft Entra ID for both (no api_key_setting), as for
// AZURE_OPENAI_ENDPOINT: the app's identity has OpenAI User on each account.
var providerDeployments = [
  {
    name: 'primary'
    provider: 'azure_openai'
    endpoint: openAiEndpoint
    deployment: openAiDeploymentName
    priority: 0
    weight: 1
  }
  {
    name: 'spillover'
    provider: 'azure_openai'
    endpoint: createSpillover ? openAiSpillover.outputs.endpoint : ''
    deployment: openAiDeploymentName
    priority: 1
    weight: 1
  }
]
var providerDeploymentsSetting = createSpillover ? string(providerDeployments) : ''
var webhookSigningSecret = 'whsec_${base64(webhookSecretMaterial)}'
var responsesApiKeys = empty(additionalResponsesApiKeys) ? 'default:${responsesApiKey}:operator' : 'default:${responsesApiKey}:operator ${additionalResponsesApiKeys}'
// ARM evaluates a module's scope even when its condition is false: split a placeholder id when none is given.
var existingOpenAiIdParts = split(!empty(existingOpenAiResourceId) ? existingOpenAiResourceId : '/subscriptions/${subscription().subscriptionId}/resourceGroups/none/providers/Microsoft.CognitiveServices/accounts/none', '/')

resource rg 'Microsoft.Resources/resourceGroups@2021-04-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-api-${resourceToken}'
    location: location
    tags: tags
  }
}

module plan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'plan'
  scope: rg
  params: {
    name: 'plan-${resourceToken}'
    location: location
    tags: tags
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
  }
}

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.7.0' = {
  name: 'loganalytics'
  scope: rg
  params: {
    name: 'log-${resourceToken}'
    location: location
    tags: tags
    dataRetention: 30
  }
}

module appInsights 'br/public:avm/res/insights/component:0.4.1' = {
  name: 'appinsights'
  scope: rg
  params: {
    name: 'appi-${resourceToken}'
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true
    retentionInDays: 30
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    retentionDays: retentionDays
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    // The service signs tokens with the first key and accepts every one, so a rotation has no gap.
    runTokenKey: empty(previousRunTokenKey) ? runTokenKey : '${runTokenKey} ${previousRunTokenKey}'
    // The service signs with every secret in the list (new first), so a rotation has no gap.
    webhookSigningSecrets: empty(previousWebhookSigningSecret) ? webhookSigningSecret : '${webhookSigningSecret} ${previousWebhookSigningSecret}'
    responsesApiKeys: responsesApiKeys
    purgeProtection: keyVaultPurgeProtection
    providerWebhookSecrets: providerWebhookSecrets
  }
}

module openAi 'app/openai.bicep' = if (createOpenAi) {
  name: 'openai'
  scope: rg
  params: {
    name: 'cog-${resourceToken}'
    location: empty(openAiLocation) ? location : openAiLocation
    tags: tags
    deploymentName: openAiDeploymentName
    modelName: openAiModelName
    modelVersion: openAiModelVersion
    deploymentSku: openAiDeploymentSku
    deploymentCapacity: openAiDeploymentCapacity
  }
}

// The second account: same model and SKU, its own region and capacity, and a name of its own (cog-spill-<token>).
module openAiSpillover 'app/openai.bicep' = if (createSpillover) {
  name: 'openai-spillover'
  scope: rg
  params: {
    name: 'cog-spill-${resourceToken}'
    location: spilloverOpenAiLocation
    tags: tags
    deploymentName: openAiDeploymentName
    modelName: openAiModelName
    modelVersion: openAiModelVersion
    deploymentSku: openAiDeploymentSku
    deploymentCapacity: spilloverOpenAiDeploymentCapacity
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    appInsightsName: appInsights.outputs.name
    openAiAccountName: createOpenAi ? openAi.outputs.name : ''
    managedIdentityPrincipalId: identity.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

// An existing Azure OpenAI account may live in another resource group or subscription.
module existingOpenAiRbac 'app/openai-rbac.bicep' = if (!createOpenAi && !empty(existingOpenAiResourceId)) {
  name: 'existing-openai-rbac'
  scope: resourceGroup(existingOpenAiIdParts[2], existingOpenAiIdParts[4])
  params: {
    openAiAccountName: last(existingOpenAiIdParts)
    managedIdentityPrincipalId: identity.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

// The same roles on the second account as on the first: OpenAI User for the app, OpenAI Contributor for principalId
// (the hook registers the provider webhook there too).
module spilloverOpenAiRbac 'app/openai-rbac.bicep' = if (createSpillover) {
  name: 'openai-spillover-rbac'
  scope: rg
  params: {
    openAiAccountName: createSpillover ? openAiSpillover.outputs.name : ''
    managedIdentityPrincipalId: identity.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: functionAppName
    location: location
    tags: tags
    appServicePlanId: plan.outputs.resourceId
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    deploymentContainerUrl: '${storage.outputs.blobEndpoint}${deploymentContainerName}'
    blobServiceUri: storage.outputs.blobEndpoint
    queueServiceUri: storage.outputs.queueEndpoint
    tableServiceUri: storage.outputs.tableEndpoint
    appInsightsConnectionString: appInsights.outputs.connectionString
    openAiEndpoint: openAiEndpoint
    defaultModel: openAiDeploymentName
    providerDeployments: providerDeploymentsSetting
    sweepSchedule: sweepSchedule
    retentionDays: retentionDays
    runTokenKeySecretUri: keyVault.outputs.runTokenKeySecretUri
    webhookSigningSecretsSecretUri: keyVault.outputs.webhookSigningSecretsSecretUri
    // Empty until the hook has registered the endpoint: an empty setting (poll), never an unresolvable reference.
    providerWebhookSecretsSecretUri: empty(providerWebhookSecrets) ? '' : keyVault.outputs.providerWebhookSecretsSecretUri
    responsesApiKeysSecretUri: keyVault.outputs.responsesApiKeysSecretUri
  }
  // Key Vault references and identity-based host storage need the roles; assign them before the app starts.
  dependsOn: [
    rbac
    spilloverOpenAiRbac
  ]
}

// ---- Outputs (azd stores them in .azure/<env>/.env) ----------------------------------------------------------
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output SERVICE_API_NAME string = api.outputs.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output AZURE_FUNCTION_APP_URL string = api.outputs.url
output AZURE_USER_ASSIGNED_IDENTITY_NAME string = identity.outputs.name
output AZURE_USER_ASSIGNED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.blobEndpoint
output AZURE_STORAGE_QUEUE_ENDPOINT string = storage.outputs.queueEndpoint
output AZURE_STORAGE_TABLE_ENDPOINT string = storage.outputs.tableEndpoint
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
// Where the postprovision hook stores the provider webhook secret (a URI, not the secret).
output AZURE_PROVIDER_WEBHOOK_SECRET_URI string = keyVault.outputs.providerWebhookSecretsSecretUri
output AZURE_OPENAI_ACCOUNT_NAME string = createOpenAi ? openAi.outputs.name : ''
output AZURE_OPENAI_ENDPOINT string = openAiEndpoint
output AZURE_OPENAI_DEPLOYMENT string = openAiDeploymentName
output AZURE_OPENAI_SPILLOVER_ACCOUNT_NAME string = createSpillover ? openAiSpillover.outputs.name : ''
// The app's PROVIDER_DEPLOYMENTS (empty without a second account): the postprovision hook registers the provider
// webhook on every Azure OpenAI resource it names.
output AZURE_PROVIDER_DEPLOYMENTS string = providerDeploymentsSetting
output APPLICATIONINSIGHTS_NAME string = appInsights.outputs.name
output AZURE_LOG_ANALYTICS_NAME string = logAnalytics.outputs.name
output AZURE_APP_SERVICE_PLAN_NAME string = plan.outputs.name
