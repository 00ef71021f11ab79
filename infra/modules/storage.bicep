// The project's storage account: ADLS Gen2 (hierarchical namespace) reached through its Blob
// endpoint by managed identity only (no shared keys). Containers: the data container
// (landing/, curated/, quarantine/, ledger/, models/...), the promoted model sets, the Dagster
// Pipes context/messages of remote jobs and Dagster's step logs.
param location string
param name string
param tags object
param sku string
param dataContainer string
param prodModelsContainer string
param pipesContainer string
param computeLogContainer string
@description('Principal ids given Storage Blob Data Contributor on the account.')
param blobContributors array
@description('Principal ids given Storage Blob Data Reader on the account.')
param blobReaders array

var contributorRole = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var readerRole = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'

resource account 'Microsoft.Storage/storageAccounts@2025-01-01' = {
  #checkov:skip=CKV_AZURE_35:Public endpoint kept, reached with Entra ID only (shared keys off): Container Apps, the AML cluster and AKS reach it without private endpoints in this footprint (docs/deploy.md, hardening).
  #checkov:skip=CKV_AZURE_59:Same as CKV_AZURE_35: the network is open, authentication is Entra ID only and no container is public.
  #checkov:skip=CKV_AZURE_206:Redundancy is the `sku` parameter: Standard_ZRS in prod.bicepparam, Standard_LRS in dev (rebuildable from the landing drops).
  #checkov:skip=CKV_AZURE_43:The name is built in main.bicep (lower-case letters and digits, at most 24); checkov cannot evaluate a parameter.
  #checkov:skip=CKV_AZURE_33:No queues are used; the queue service is not logged.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: sku }
  properties: {
    isHnsEnabled: true
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: { enabled: true, keyType: 'Account' }
        file: { enabled: true, keyType: 'Account' }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2025-01-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: { enabled: true, days: 14 }
    containerDeleteRetentionPolicy: { enabled: true, days: 14 }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2025-01-01' = [
  for c in [dataContainer, prodModelsContainer, pipesContainer, computeLogContainer]: {
    parent: blobService
    name: c
    properties: { publicAccess: 'None' }
  }
]

resource contributors 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for p in blobContributors: {
    name: guid(account.id, p, contributorRole)
    scope: account
    properties: {
      principalId: p
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', contributorRole)
    }
  }
]

resource readers 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for p in blobReaders: {
    name: guid(account.id, p, readerRole)
    scope: account
    properties: {
      principalId: p
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRole)
    }
  }
]

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
