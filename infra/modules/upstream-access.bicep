// Deployed into the dev resource group by the prod deployment: promotion (run by the prod
// Dagster) reads the dev champion's model set from the dev storage account and its version
// from the dev workspace's MLflow registry. Read access only, plus the dev workspace's data
// scientist role, which MLflow's registry calls need.
param storageAccountName string
param workspaceName string
param principalIds array

var readerRole = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var dataScientistRole = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

resource account 'Microsoft.Storage/storageAccounts@2025-01-01' existing = {
  name: storageAccountName
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-06-01' existing = {
  name: workspaceName
}

resource readers 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for p in principalIds: {
    name: guid(account.id, p, readerRole)
    scope: account
    properties: {
      principalId: p
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRole)
    }
  }
]

resource scientists 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for p in principalIds: {
    name: guid(workspace.id, p, dataScientistRole)
    scope: workspace
    properties: {
      principalId: p
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataScientistRole)
    }
  }
]

output storageAccountUrl string = account.properties.primaryEndpoints.blob
output mlflowTrackingUri string = workspace.properties.mlFlowTrackingUri
