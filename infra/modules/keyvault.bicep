// The workspace's Key Vault, also holding the Dagster database password that Container Apps
// read through Key Vault references (RBAC authorization: no access policies).
param location string
param name string
param tags object
@description('Principal ids given Key Vault Secrets User (read secret values).')
param secretsUsers array

var secretsUserRole = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' = {
  #checkov:skip=CKV_AZURE_109:Public endpoint kept: Container Apps resolve Key Vault references over it and Azure ML uses it; access is Entra ID RBAC only (docs/deploy.md, hardening).
  #checkov:skip=CKV_AZURE_189:Public network access stays enabled for Container Apps Key Vault references and Azure ML; access is Entra ID RBAC only (as CKV_AZURE_109).
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: { defaultAction: 'Allow', bypass: 'AzureServices' }
  }
}

resource readers 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for p in secretsUsers: {
    name: guid(vault.id, p, secretsUserRole)
    scope: vault
    properties: {
      principalId: p
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRole)
    }
  }
]

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
