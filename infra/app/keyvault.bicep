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
output responsesApiKeysSecretUri string = responsesApiKeysSecret.properties.secretUri
