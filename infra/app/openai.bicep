// Azure OpenAI account (Entra ID only) with one model deployment for the Responses API.
param name string
param location string = resourceGroup().location
param tags object = {}
param deploymentName string
param modelName string
param modelVersion string
param deploymentSku string
param deploymentCapacity int

resource account 'Microsoft.CognitiveServices/accounts@2024-10-01' = {
  // checkov:skip=CKV_AZURE_134:No VNet in this template: Flex Consumption without VNet integration reaches it over the public endpoint; access is Microsoft Entra ID + RBAC only (keys/local auth disabled). A VNet/private-endpoint variant is a follow-up.
  name: name
  location: location
  tags: tags
  kind: 'OpenAI'
  // Not used for inference; enables customer-managed keys and outbound features later.
  identity: {
    type: 'SystemAssigned'
  }
  sku: {
    name: 'S0'
  }
  properties: {
    // A custom subdomain is required for Microsoft Entra ID tokens.
    customSubDomainName: name
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
    }
  }
}

resource deployment 'Microsoft.CognitiveServices/accounts/deployments@2024-10-01' = {
  parent: account
  name: deploymentName
  sku: {
    name: deploymentSku
    capacity: deploymentCapacity
  }
  properties: {
    model: {
      format: 'OpenAI'
      name: modelName
      version: modelVersion
    }
  }
}

output name string = account.name
output id string = account.id
output endpoint string = account.properties.endpoint
output deploymentName string = deployment.name
