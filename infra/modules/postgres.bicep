// Dagster's run, event and schedule storage: Azure Database for PostgreSQL flexible server,
// reachable only from the virtual network. The administrator password comes in as a secure
// parameter (never a parameters file) and is written to Key Vault, where the container apps
// read it through a Key Vault reference. The Dagster identity is also an Entra ID
// administrator, for password-less login (deploy/dagster/dagster.yaml, azure_wif).
param location string
param name string
param tags object
param skuName string
param skuTier string
param storageSizeGB int
param highAvailability bool
param geoRedundantBackup bool
param subnetId string
param privateDnsZoneId string
param databaseName string
param administratorLogin string
@secure()
param administratorPassword string
param keyVaultName string
param passwordSecretName string
param dagsterPrincipalId string
param dagsterIdentityName string

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2025-08-01' = {
  name: name
  location: location
  tags: tags
  sku: { name: skuName, tier: skuTier }
  properties: {
    version: '16'
    administratorLogin: administratorLogin
    administratorLoginPassword: administratorPassword
    authConfig: {
      activeDirectoryAuth: 'Enabled'
      passwordAuth: 'Enabled'
      tenantId: subscription().tenantId
    }
    storage: { storageSizeGB: storageSizeGB, autoGrow: 'Enabled' }
    backup: {
      backupRetentionDays: 14
      geoRedundantBackup: geoRedundantBackup ? 'Enabled' : 'Disabled'
    }
    highAvailability: { mode: highAvailability ? 'ZoneRedundant' : 'Disabled' }
    network: {
      delegatedSubnetResourceId: subnetId
      privateDnsZoneArmResourceId: privateDnsZoneId
      publicNetworkAccess: 'Disabled'
    }
  }
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2025-08-01' = {
  parent: server
  name: databaseName
  properties: { charset: 'UTF8', collation: 'en_US.utf8' }
}

resource entraAdmin 'Microsoft.DBforPostgreSQL/flexibleServers/administrators@2025-08-01' = {
  parent: server
  name: dagsterPrincipalId
  properties: {
    principalType: 'ServicePrincipal'
    principalName: dagsterIdentityName
    tenantId: subscription().tenantId
  }
  dependsOn: [database]
}

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' existing = {
  name: keyVaultName
}

resource password 'Microsoft.KeyVault/vaults/secrets@2024-11-01' = {
  #checkov:skip=CKV_AZURE_41:The database password does not expire by date; it is rotated by redeploying with a new value (docs/deploy.md).
  parent: vault
  name: passwordSecretName
  properties: {
    value: administratorPassword
    contentType: 'text/plain'
  }
}

output host string = server.properties.fullyQualifiedDomainName
output database string = database.name
output passwordSecretUri string = password.properties.secretUri
