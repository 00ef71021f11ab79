// Log Analytics (Container Apps logs, AKS Container Insights) and the workspace-based
// Application Insights that the Azure ML workspace and its online endpoints log to.
param location string
param prefix string
param tags object
param retentionInDays int

resource logs 'Microsoft.OperationalInsights/workspaces@2025-02-01' = {
  name: 'log-${prefix}'
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: retentionInDays
    features: { disableLocalAuth: false }
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${prefix}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
  }
}

output logAnalyticsId string = logs.id
output logAnalyticsCustomerId string = logs.properties.customerId
output appInsightsId string = insights.id
