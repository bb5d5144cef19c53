// Key Vault (RBAC authorization) holding the service secrets. The Function App reads them through Key Vault
// references resolved with its user-assigned identity; the values never appear in app settings.
param name string
param location string = resourceGroup().location
param tags object = {}

@secure()
param runTokenKey string

@secure()
param webhookSigningSecrets string

@secure()
@description('RESPONSES_API_KEYS: the Responses API facade\'s callers (name:key[:operator] entries).')
param responsesApiKeys string

@description('Purge protection (production). ARM accepts only true or absent: once on, it cannot be turned off.')
param purgeProtection bool = false

@secure()
@description('PROVIDER_WEBHOOK_SECRETS (signing secrets of the provider webhook endpoint); empty until the postprovision hook has registered the endpoint, and then no secret is declared here.')
param providerWebhookSecrets string = ''

// Also the name infra/hooks/provider_webhook.py writes through ARM (tests/infra checks they agree).
var providerWebhookSecretsName = 'provider-webhook-secrets'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_110:Purge protection is the keyVaultPurgeProtection parameter: on for production, off for dev environments so that azd down + azd up can reuse the vault name (it is fixed per environment) instead of failing for 7 days.
  // checkov:skip=CKV_AZURE_42:Soft delete is always on (7 days); purge protection is the keyVaultPurgeProtection parameter (on for production, off for dev environments, see infra/README.md).
  // checkov:skip=CKV_AZURE_109:No VNet in this template: Flex Consumption without VNet integration reaches it over the public endpoint; access is Microsoft Entra ID + RBAC only (keys/local auth disabled). A VNet/private-endpoint variant is a follow-up. App Service Key Vault references are not a trusted service for the vault firewall.
  // checkov:skip=CKV_AZURE_189:No VNet in this template: Flex Consumption without VNet integration reaches it over the public endpoint; access is Microsoft Entra ID + RBAC only (keys/local auth disabled). A VNet/private-endpoint variant is a follow-up. App Service Key Vault references are not a trusted service for the vault firewall.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    // Absent (null) rather than false: ARM refuses false, also on a vault that never had it.
    enablePurgeProtection: purgeProtection ? true : null
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource runTokenKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41:No automated rotation: a fixed expiry would only mark a still-used secret as expired at an arbitrary date. Rotation is manual and documented in infra/README.md.
  parent: vault
  name: 'run-token-key'
  properties: {
    value: runTokenKey
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource webhookSigningSecretsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41:No automated rotation: a fixed expiry would only mark a still-used secret as expired at an arbitrary date. Rotation is manual and documented in infra/README.md.
  parent: vault
  name: 'webhook-signing-secrets'
  properties: {
    value: webhookSigningSecrets
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

// Declared only once the hook has the value: an empty secret would be a Key Vault reference to nothing.
resource providerWebhookSecretsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(providerWebhookSecrets)) {
  // checkov:skip=CKV_AZURE_114:contentType is set (text/plain, below); checkov 3.3.30 does not read the properties of a conditional resource (= if (...)), the same block passes on the unconditional secrets above.
  // checkov:skip=CKV_AZURE_41:No fixed expiry: the provider's endpoint secret does not expire; it is rotated with the hook's --rotate (infra/README.md "Provider webhooks"), and an expiry date would only disable a secret still in use.
  parent: vault
  name: providerWebhookSecretsName
  properties: {
    value: providerWebhookSecrets
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource responsesApiKeysSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41:No automated rotation: a fixed expiry would only mark a still-used secret as expired at an arbitrary date. Rotation is manual and documented in infra/README.md.
  parent: vault
  name: 'responses-api-keys'
  properties: {
    value: responsesApiKeys
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

output name string = vault.name
output id string = vault.id
output vaultUri string = vault.properties.vaultUri
// Versionless URIs: the app picks up a new secret version within 24 hours or on restart.
output runTokenKeySecretUri string = runTokenKeySecret.properties.secretUri
output webhookSigningSecretsSecretUri string = webhookSigningSecretsSecret.properties.secretUri
// Known before the secret exists (the hook writes it after the first provision), in the form of secretUri.
output providerWebhookSecretsSecretUri string = '${vault.properties.vaultUri}secrets/${providerWebhookSecretsName}'
output responsesApiKeysSecretUri string = responsesApiKeysSecret.properties.secretUri
