// Storage for the Functions host (identity-based AzureWebJobsStorage), the Flex deployment package and the
// service's own data. Names of queues, tables and containers match shared/settings.py (checked by tests/infra).
param name string
param location string = resourceGroup().location
param tags object = {}
param deploymentContainerName string
@description('RETENTION_DAYS of the app; the payload lifecycle rule deletes blobs 31 days after that (backstop).')
param retentionDays int = 30

// Queue triggers move a message to `<queue>-poison` after maxDequeueCount failures; create those up front so
// they exist (and can be monitored) before the first failure.
var queueNames = [
  'runs-poll'
  'runs-poll-poison'
  'runs-webhook'
  'runs-webhook-poison'
  'runs-execute'
  'runs-execute-poison'
]
var tableNames = [
  'runs'
  'sessions'
  'idempotency'
  'runindex'
  'runevents'
]
var containerNames = [
  deploymentContainerName
  'run-payloads'
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:No VNet in this template: Flex Consumption without VNet integration reaches it over the public endpoint; access is Microsoft Entra ID + RBAC only (keys/local auth disabled). A VNet/private-endpoint variant is a follow-up.
  // checkov:skip=CKV_AZURE_59:No VNet in this template: Flex Consumption without VNet integration reaches it over the public endpoint; access is Microsoft Entra ID + RBAC only (keys/local auth disabled). A VNet/private-endpoint variant is a follow-up.
  // checkov:skip=CKV_AZURE_206:Locally redundant on purpose: queues/tables hold short-lived run state and the deployment package is re-deployable; ZRS/GRS costs more for a small service. Raise the SKU for production SLAs.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    dnsEndpointType: 'Standard'
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
        }
        file: {
          enabled: true
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for containerName in containerNames: {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}]

// Retention deletes a run's payload blobs with the run (RETENTION_DAYS after it ended). This rule is the backstop
// for any the app missed: a blob is at most a run's longest life (30 days) plus the retention period old.
resource payloadLifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          enabled: true
          name: 'run-payloads-backstop'
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                'run-payloads/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: retentionDays + 31
                }
              }
            }
          }
        }
      ]
    }
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queueName in queueNames: {
  parent: queueService
  name: queueName
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for tableName in tableNames: {
  parent: tableService
  name: tableName
}]

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
