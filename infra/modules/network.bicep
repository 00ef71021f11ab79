// The virtual network: the Container Apps environment (Dagster), the PostgreSQL server
// (private access only, with its private DNS zone) and the AKS nodes each get a subnet.
param location string
param prefix string
param tags object
param addressSpace string
@description('Subnets of addressSpace: Container Apps (/23 at least), PostgreSQL, AKS nodes.')
param dagsterSubnet string
param postgresSubnet string
param aksSubnet string

var subnets = [
  { name: 'snet-dagster', prefix: dagsterSubnet, delegation: 'Microsoft.App/environments' }
  { name: 'snet-postgres', prefix: postgresSubnet, delegation: 'Microsoft.DBforPostgreSQL/flexibleServers' }
  { name: 'snet-aks', prefix: aksSubnet, delegation: '' }
]

resource nsg 'Microsoft.Network/networkSecurityGroups@2024-07-01' = {
  name: 'nsg-${prefix}'
  location: location
  tags: tags
  properties: { securityRules: [] }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-07-01' = {
  name: 'vnet-${prefix}'
  location: location
  tags: tags
  properties: {
    addressSpace: { addressPrefixes: [addressSpace] }
    subnets: [
      for s in subnets: {
        name: s.name
        properties: {
          addressPrefix: s.prefix
          networkSecurityGroup: { id: nsg.id }
          delegations: empty(s.delegation) ? [] : [{ name: s.delegation, properties: { serviceName: s.delegation } }]
        }
      }
    ]
  }
}

resource postgresDns 'Microsoft.Network/privateDnsZones@2024-06-01' = {
  name: '${prefix}.private.postgres.database.azure.com'
  location: 'global'
  tags: tags
}

resource postgresDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = {
  parent: postgresDns
  name: vnet.name
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: { id: vnet.id }
  }
}

output dagsterSubnetId string = vnet.properties.subnets[0].id
output postgresSubnetId string = vnet.properties.subnets[1].id
output aksSubnetId string = vnet.properties.subnets[2].id
output postgresDnsZoneId string = postgresDns.id
