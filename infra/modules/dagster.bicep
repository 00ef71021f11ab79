// Dagster on Azure Container Apps: the code location (gRPC, TCP 4000, internal only), the
// webserver and the daemon, all from the code-location image, all with the Dagster identity.
// Each run is a Container Apps job that the daemon's AcaRunLauncher creates in this resource
// group (deploy/dagster/dagster.yaml), hence Container Apps Contributor on the group and
// Managed Identity Operator on the Dagster identity (to hand it to the run's job).
param location string
param prefix string
param tags object
param subnetId string
param logAnalyticsId string
param image string
param registryServer string
param dagsterIdentityId string
param dagsterIdentityName string
param dagsterPrincipalId string
param dagsterClientId string
@description('The MLOPS_* settings, set on every container (and passed to every run).')
param settings object
@description('The DAGSTER_* settings of deploy/dagster/dagster.yaml, less the database password.')
param instanceSettings object
param passwordSecretUri string
@description('The code location app name: MLOPS_CODE_LOCATION_HOST.')
param codeLocationName string
@description('Key Vault secret URI of the Teams webhook for alerts (MLOPS_TEAMS_WEBHOOK_URL); empty: no alerts.')
param alertsWebhookSecretUri string = ''

var containerAppsContributorRole = '358470bc-b998-42bd-ab17-a7e34c199c0f'
var managedIdentityOperatorRole = 'f1a07417-d97a-45cb-824c-7a7467783830'
var workspaceFile = '/opt/dagster/home/workspace.yaml'

resource logs 'Microsoft.OperationalInsights/workspaces@2025-02-01' existing = {
  name: last(split(logAnalyticsId, '/'))
}

resource environment 'Microsoft.App/managedEnvironments@2025-07-01' = {
  name: 'cae-${prefix}'
  location: location
  tags: tags
  properties: {
    vnetConfiguration: { infrastructureSubnetId: subnetId, internal: true }
    workloadProfiles: [{ name: 'Consumption', workloadProfileType: 'Consumption' }]
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
  }
}

// The environment is internal (VNet only), so the webserver's ingress is "external" to the
// environment but reachable from the virtual network only: VPN, peering, or a self-hosted
// runner there (docs/deploy.md). Alert links and `mlops launch` use this address.
var webserverName = 'ca-${prefix}-webserver'
var webserverUrl = 'https://${webserverName}.${environment.properties.defaultDomain}'
var plainEnv = [for kv in items(union(settings, instanceSettings)): { name: kv.key, value: kv.value }]
var baseEnv = concat(plainEnv, [
  { name: 'AZURE_CLIENT_ID', value: dagsterClientId }
  { name: 'DAGSTER_ACA_ENVIRONMENT_ID', value: environment.id }
  { name: 'DAGSTER_CURRENT_IMAGE', value: image }
  { name: 'DAGSTER_PG_PASSWORD', secretRef: 'dagster-pg-password' }
  { name: 'MLOPS_DAGSTER_UI_URL', value: webserverUrl }
])
var alertsEnv = empty(alertsWebhookSecretUri) ? [] : [
  { name: 'MLOPS_TEAMS_WEBHOOK_URL', secretRef: 'teams-webhook-url' }
]
var env = concat(baseEnv, alertsEnv)
var passwordSecret = [
  { name: 'dagster-pg-password', keyVaultUrl: passwordSecretUri, identity: dagsterIdentityId }
]
var alertsSecret = empty(alertsWebhookSecretUri) ? [] : [
  { name: 'teams-webhook-url', keyVaultUrl: alertsWebhookSecretUri, identity: dagsterIdentityId }
]

var apps = [
  {
    name: codeLocationName
    command: []
    ingress: { external: false, transport: 'tcp', targetPort: 4000, exposedPort: 4000 }
  }
  {
    name: webserverName
    command: ['dagster-webserver', '-h', '0.0.0.0', '-p', '3000', '-w', workspaceFile]
    ingress: { external: true, transport: 'http', targetPort: 3000, allowInsecure: false }
  }
  {
    name: 'ca-${prefix}-daemon'
    command: ['dagster-daemon', 'run', '-w', workspaceFile]
    ingress: null
  }
]

resource containerApps 'Microsoft.App/containerApps@2025-07-01' = [
  for app in apps: {
    name: app.name
    location: location
    tags: tags
    identity: {
      type: 'UserAssigned'
      userAssignedIdentities: { '${dagsterIdentityId}': {} }
    }
    properties: {
      environmentId: environment.id
      workloadProfileName: 'Consumption'
      configuration: {
        activeRevisionsMode: 'Single'
        ingress: app.ingress
        registries: [{ server: registryServer, identity: dagsterIdentityId }]
        secrets: concat(passwordSecret, alertsSecret)
      }
      template: {
        containers: [
          {
            name: 'dagster'
            image: image
            command: empty(app.command) ? null : app.command
            env: env
            resources: { cpu: json('1.0'), memory: '2Gi' }
          }
        ]
        // One daemon and one code server at a time; the webserver is stateless but small.
        scale: { minReplicas: 1, maxReplicas: 1 }
      }
    }
  }
]

resource runLauncher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, dagsterPrincipalId, containerAppsContributorRole)
  properties: {
    principalId: dagsterPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', containerAppsContributorRole)
  }
}

resource dagsterIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' existing = {
  name: dagsterIdentityName
}

resource assignIdentity 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dagsterIdentity.id, dagsterPrincipalId, managedIdentityOperatorRole)
  scope: dagsterIdentity
  properties: {
    principalId: dagsterPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', managedIdentityOperatorRole)
  }
}

output environmentId string = environment.id
output webserverFqdn string = containerApps[1].properties.configuration.ingress.fqdn
output webserverUrl string = webserverUrl
