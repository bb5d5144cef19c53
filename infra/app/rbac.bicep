// Data-plane role assignments of the app's user-assigned identity (and, optionally, of the deploying principal for
// local debugging against Azure). tests/infra/test_parity.py checks that every data plane the deployed Python
// touches has its role here.
param storageAccountName string
param keyVaultName string
param appInsightsName string
@description('Azure OpenAI account created by this template; empty when an existing endpoint is used.')
param openAiAccountName string = ''
param managedIdentityPrincipalId string
param userPrincipalId string = ''
@allowed([
  'User'
  'ServicePrincipal'
])
param userPrincipalType string = 'User'

// Built-in role definition ids.
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Storage Queue Data Contributor
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher
var keyVaultSecretsUserRole = '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User
var cognitiveServicesOpenAiUser = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd' // Cognitive Services OpenAI User
var cognitiveServicesOpenAiContributor = 'a001fd3d-188f-4b5d-821b-7da978bf7442' // Cognitive Services OpenAI Contributor

var hasOpenAi = !empty(openAiAccountName)
var hasUser = !empty(userPrincipalId)

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource openAiAccount 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = if (hasOpenAi) {
  name: hasOpenAi ? openAiAccountName : 'none'
}

// Storage Blob Data Owner: host storage, deployment package, run-payloads.
resource blobDataOwnerApp 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, managedIdentityPrincipalId, storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource blobDataOwnerUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasUser) {
  name: guid(storage.id, userPrincipalId, storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

// Storage Queue Data Contributor: queue triggers (incl. releasing failed messages) and sending poll/webhook messages.
resource queueDataContributorApp 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, managedIdentityPrincipalId, storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource queueDataContributorUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasUser) {
  name: guid(storage.id, userPrincipalId, storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

// Storage Table Data Contributor: runs/sessions/idempotency tables and host diagnostic events.
resource tableDataContributorApp 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, managedIdentityPrincipalId, storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource tableDataContributorUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasUser) {
  name: guid(storage.id, userPrincipalId, storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

// Monitoring Metrics Publisher: Application Insights ingestion with Entra auth (local auth is off).
resource metricsPublisherApp 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, managedIdentityPrincipalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource metricsPublisherUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasUser) {
  name: guid(appInsights.id, userPrincipalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

// Key Vault Secrets User: Key Vault references for RUN_TOKEN_KEY and WEBHOOK_SIGNING_SECRETS.
resource keyVaultSecretsUserApp 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, managedIdentityPrincipalId, keyVaultSecretsUserRole)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRole)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource keyVaultSecretsUserUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasUser) {
  name: guid(vault.id, userPrincipalId, keyVaultSecretsUserRole)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRole)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

// Cognitive Services OpenAI User for the app: Responses API inference with Entra tokens (least privilege).
resource openAiUserApp 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasOpenAi) {
  name: guid(openAiAccount.id, managedIdentityPrincipalId, cognitiveServicesOpenAiUser)
  scope: openAiAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', cognitiveServicesOpenAiUser)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The deploying principal registers the provider webhook endpoint (infra/hooks/provider_webhook.py) with Entra ID,
// since local auth is off: a data-plane write, which Cognitive Services OpenAI User (read + inference data actions
// only) does not allow. Cognitive Services OpenAI Contributor grants every Microsoft.CognitiveServices/accounts/
// OpenAI/* data action and includes everything the User role allows (infra/README.md "Provider webhooks").
resource openAiContributorUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasOpenAi && hasUser) {
  name: guid(openAiAccount.id, userPrincipalId, cognitiveServicesOpenAiContributor)
  scope: openAiAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', cognitiveServicesOpenAiContributor)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}
