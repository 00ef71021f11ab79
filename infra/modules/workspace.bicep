// The Azure ML workspace with its Key Vault, storage, Application Insights and registry; the
// identity-based datastores over the data and promoted-model containers; the compute cluster
// that training and batch-scoring jobs run on (0 minimum nodes: it costs nothing idle).
param location string
param name string
param tags object
param storageAccountId string
param storageAccountName string
param keyVaultId string
param appInsightsId string
param containerRegistryId string
param dataContainer string
param prodModelsContainer string
param dataDatastore string
param prodModelsDatastore string
param batchComputeName string
param batchComputeVmSize string
param batchComputeMaxNodes int
param jobsIdentityId string
@description('Principal ids given AzureML Data Scientist on the workspace (jobs, models, endpoints; no compute or workspace management).')
param dataScientists array

var dataScientistRole = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-06-01' = {
  #checkov:skip=CKV_AZURE_144:Public endpoint kept: the Dagster container apps and the GitHub runner call the workspace without private endpoints in this footprint (docs/deploy.md, hardening).
  #checkov:skip=CKV_AZURE_243:Same as CKV_AZURE_144: no private endpoint or managed network in this footprint (docs/deploy.md, hardening).
  name: name
  location: location
  tags: tags
  kind: 'Default'
  sku: { name: 'Basic', tier: 'Basic' }
  identity: { type: 'SystemAssigned' }
  properties: {
    friendlyName: name
    storageAccount: storageAccountId
    keyVault: keyVaultId
    applicationInsights: appInsightsId
    containerRegistry: containerRegistryId
    publicNetworkAccess: 'Enabled'
    // The storage account refuses shared keys: the workspace's own datastores use identities.
    systemDatastoresAuthMode: 'identity'
    v1LegacyMode: false
  }
}

resource datastores 'Microsoft.MachineLearningServices/workspaces/datastores@2025-06-01' = [
  for ds in [
    { name: dataDatastore, container: dataContainer }
    { name: prodModelsDatastore, container: prodModelsContainer }
  ]: {
    parent: workspace
    name: ds.name
    properties: {
      datastoreType: 'AzureBlob'
      accountName: storageAccountName
      containerName: ds.container
      endpoint: environment().suffixes.storage
      protocol: 'https'
      credentials: { credentialsType: 'None' }
      serviceDataAccessAuthIdentity: 'WorkspaceSystemAssignedIdentity'
    }
  }
]

resource cluster 'Microsoft.MachineLearningServices/workspaces/computes@2025-06-01' = {
  parent: workspace
  name: batchComputeName
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${jobsIdentityId}': {} }
  }
  properties: {
    computeType: 'AmlCompute'
    disableLocalAuth: true
    properties: {
      vmSize: batchComputeVmSize
      vmPriority: 'Dedicated'
      osType: 'Linux'
      remoteLoginPortPublicAccess: 'Disabled'
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: batchComputeMaxNodes
        nodeIdleTimeBeforeScaleDown: 'PT5M'
      }
    }
  }
}

resource scientists 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for p in dataScientists: {
    name: guid(workspace.id, p, dataScientistRole)
    scope: workspace
    properties: {
      principalId: p
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataScientistRole)
    }
  }
]

output id string = workspace.id
output name string = workspace.name
output mlflowTrackingUri string = workspace.properties.mlFlowTrackingUri
output batchComputeName string = cluster.name
