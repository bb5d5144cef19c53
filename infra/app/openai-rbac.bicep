// Cognitive Services OpenAI User for the app and OpenAI Contributor for the deploying principal on an existing Azure
// OpenAI account (deployed into that account's resource group).
param openAiAccountName string
param managedIdentityPrincipalId string
param userPrincipalId string = ''
@allowed([
  'User'
  'ServicePrincipal'
])
param userPrincipalType string = 'User'

var cognitiveServicesOpenAiUser = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd' // Cognitive Services OpenAI User
var cognitiveServicesOpenAiContributor = 'a001fd3d-188f-4b5d-821b-7da978bf7442' // Cognitive Services OpenAI Contributor

resource openAiAccount 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: openAiAccountName
}

resource openAiUserApp 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
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
resource openAiContributorUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(openAiAccount.id, userPrincipalId, cognitiveServicesOpenAiContributor)
  scope: openAiAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', cognitiveServicesOpenAiContributor)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}
