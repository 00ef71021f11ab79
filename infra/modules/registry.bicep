// The container registry of the workspace (serving and job environments) and of the Dagster
// code-location image. Pull by managed identity (AcrPull); no admin user.
param location string
param name string
param tags object
param sku string
@description('Principal ids given AcrPull.')
param pullers array

var acrPullRole = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

resource registry 'Microsoft.ContainerRegistry/registries@2025-04-01' = {
  #checkov:skip=CKV_AZURE_139:Public endpoint kept: the GitHub runner pushes images and Container Apps/AKS pull without private endpoints in this footprint (docs/deploy.md, hardening).
  #checkov:skip=CKV_AZURE_163:Vulnerability scanning is Microsoft Defender for Containers, a subscription plan rather than a registry property (docs/deploy.md, hardening).
  #checkov:skip=CKV_AZURE_165:Geo-replication needs the Premium SKU in a second region; a rebuild from the repository restores any image.
  #checkov:skip=CKV_AZURE_166:Image quarantine is a preview feature of Premium; images are built by CI from the repository only.
  #checkov:skip=CKV_AZURE_167:Untagged manifests are few (one tag per commit); retention policy needs Premium.
  #checkov:skip=CKV_AZURE_233:Zone redundancy needs Premium; see CKV_AZURE_165.
  #checkov:skip=CKV_AZURE_237:Dedicated data endpoints need Premium; see CKV_AZURE_139.
  name: name
  location: location
  tags: tags
  sku: { name: sku }
  properties: {
    adminUserEnabled: false
    publicNetworkAccess: 'Enabled'
    anonymousPullEnabled: false
  }
}

resource pulls 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for p in pullers: {
    name: guid(registry.id, p, acrPullRole)
    scope: registry
    properties: {
      principalId: p
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRole)
    }
  }
]

output id string = registry.id
output name string = registry.name
output loginServer string = registry.properties.loginServer
