// The Function App on Flex Consumption (Python 3.11), identity-based host storage, secrets via Key Vault references.
param name string
param location string = resourceGroup().location
param tags object = {}
param serviceName string = 'api'
param appServicePlanId string
param identityId string
param identityClientId string
param instanceMemoryMB int
param maximumInstanceCount int
@description('functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency (Flex default for Python: 1).')
param httpPerInstanceConcurrency int
param deploymentContainerUrl string
param blobServiceUri string
param queueServiceUri string
param tableServiceUri string
param appInsightsConnectionString string
param openAiEndpoint string
param defaultModel string
@description('PROVIDER_DEPLOYMENTS: JSON array of the model deployments runs are placed on (main.bicep builds it when a second Azure OpenAI account exists); empty: the one deployment of AZURE_OPENAI_ENDPOINT.')
param providerDeployments string = ''
@description('NCRONTAB schedule of the sweeper; function_app.py binds it as %SWEEP_SCHEDULE%, so it must be an app setting.')
param sweepSchedule string
@description('RETENTION_DAYS: days ended runs are kept.')
param retentionDays int
param runTokenKeySecretUri string
param webhookSigningSecretsSecretUri string
@description('Key Vault secret of PROVIDER_WEBHOOK_SECRETS; empty until the postprovision hook has registered the provider webhook endpoint (the setting is then empty and the app polls).')
param providerWebhookSecretsSecretUri string = ''
param responsesApiKeysSecretUri string

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:The service is a public HTTP API (POST /api/runs, polling, SSE); callers authenticate with function keys over HTTPS.
  // checkov:skip=CKV_AZURE_17:Callers are generic HTTP clients authenticated with function keys; mutual TLS would require client certificates from every caller.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales to zero by design (no always-ready instances by default, to keep the cost at rest near zero); availability comes from the platform adding instances on demand.
  // checkov:skip=CKV_AZURE_78:Flex Consumption has no FTP(S) endpoint and rejects siteConfig.ftpsState (ARM 51021); FTP and SCM basic publishing credentials are disabled below (basicPublishingCredentialsPolicies ftp/scm allow=false).
  // checkov:skip=CKV_AZURE_213:App Service health check probes an always-on instance set; Flex Consumption scales per function and to zero, so there is nothing to probe at rest. Use Application Insights availability tests instead.
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: appServicePlanId
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    // Key Vault references are resolved with the user-assigned identity (the app has no system identity).
    keyVaultReferenceIdentity: identityId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    // Flex Consumption rejects deprecated site properties (ftpsState, alwaysOn, linuxFxVersion, ...: see
    // "Flex Consumption plan deprecations" in the Functions app settings reference); tests/infra keeps them out.
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      // Flex Consumption: no FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION (set by functionAppConfig).
      appSettings: [
        // Host storage and the service's own storage clients, identity-based (shared keys are disabled).
        {
          name: 'AzureWebJobsStorage__blobServiceUri'
          value: blobServiceUri
        }
        {
          name: 'AzureWebJobsStorage__queueServiceUri'
          value: queueServiceUri
        }
        {
          name: 'AzureWebJobsStorage__tableServiceUri'
          value: tableServiceUri
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        // azure-identity (DefaultAzureCredential) picks the user-assigned identity from this.
        {
          name: 'AZURE_CLIENT_ID'
          value: identityClientId
        }
        // Required by the FastAPI HTTP streaming types (azurefunctions-extensions-http-fastapi).
        {
          name: 'PYTHON_ENABLE_INIT_INDEXING'
          value: '1'
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsightsConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identityClientId};Authorization=AAD'
        }
        // host.json telemetryMode OpenTelemetry: the worker streams its own telemetry (no duplicate host entries) and the
        // app configures the Azure Monitor distro (shared/telemetry). Not PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY,
        // which the docs name for Application Insights: with it the worker configures the distro itself, every automatic
        // instrumentation on (a span per storage request). infra/README.md "Telemetry" has the reading.
        {
          name: 'PYTHON_ENABLE_OPENTELEMETRY'
          value: 'true'
        }
        // Model provider: Azure OpenAI with Microsoft Entra ID (no key).
        {
          name: 'MODEL_PROVIDER'
          value: 'azure_openai'
        }
        {
          name: 'AZURE_OPENAI_ENDPOINT'
          value: openAiEndpoint
        }
        {
          name: 'DEFAULT_MODEL'
          value: defaultModel
        }
        // Several deployments (a second account in another region): placement, spillover and pinning read this.
        // Empty (one account): the app uses AZURE_OPENAI_ENDPOINT alone, as before.
        {
          name: 'PROVIDER_DEPLOYMENTS'
          value: providerDeployments
        }
        // Secrets: Key Vault references only.
        {
          name: 'RUN_TOKEN_KEY'
          value: '@Microsoft.KeyVault(SecretUri=${runTokenKeySecretUri})'
        }
        {
          name: 'WEBHOOK_SIGNING_SECRETS'
          value: '@Microsoft.KeyVault(SecretUri=${webhookSigningSecretsSecretUri})'
        }
        {
          name: 'RETENTION_DAYS'
          value: string(retentionDays)
        }
        // Completion by the provider's webhooks (push) once the hook has registered the endpoint; empty means poll.
        // Never a reference to a secret that does not exist yet: the service refuses unresolved references.
        {
          name: 'PROVIDER_WEBHOOK_SECRETS'
          value: empty(providerWebhookSecretsSecretUri) ? '' : '@Microsoft.KeyVault(SecretUri=${providerWebhookSecretsSecretUri})'
        }
        // The Responses API facade's callers (its routes are anonymous to the host and check these keys).
        {
          name: 'RESPONSES_API_KEYS'
          value: '@Microsoft.KeyVault(SecretUri=${responsesApiKeysSecretUri})'
        }
        // The timer trigger reads its schedule from this app setting (binding expression %SWEEP_SCHEDULE%).
        {
          name: 'SWEEP_SCHEDULE'
          value: sweepSchedule
        }
        // Webhook SSRF guards stay on in Azure (they are development-only switches).
        {
          name: 'WEBHOOK_ALLOW_HTTP'
          value: 'false'
        }
        {
          name: 'WEBHOOK_ALLOW_PRIVATE_ADDRESSES'
          value: 'false'
        }
      ]
    }
  }
}

// azd deploys to Flex with Microsoft Entra ID; basic (publishing-profile) credentials are not needed.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output url string = 'https://${functionApp.properties.defaultHostName}'
