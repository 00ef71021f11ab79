// mlops-assets on Azure: one deployment per environment (dev, prod) into its resource group.
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/<env>.bicepparam
// Order, first run and what was verified only offline: docs/deploy.md.
// The outputs are exactly the MLOPS_* settings the code location reads (docs/configuration.md);
// the same values are set on the Dagster container apps and passed to every run.
targetScope = 'resourceGroup'

@allowed(['dev', 'prod'])
@description('The environment, also the MLOPS_PROFILE.')
param environmentName string

@minLength(2)
@maxLength(8)
@description('Lower-case letters and digits that start every resource name.')
param prefix string = 'mlops'

param location string = resourceGroup().location

param tags object = {
  project: 'mlops-assets'
  environment: environmentName
}

@allowed(['local', 'spark', 'azureml'])
@description('MLOPS_TRAINING_ENGINE: azureml trains on the compute cluster below.')
param trainingEngine string = 'azureml'

@description('Storage redundancy of the project account.')
param storageSku string = 'Standard_ZRS'

@allowed(['Basic', 'Standard', 'Premium'])
param registrySku string = 'Standard'

param dataContainer string = 'mlops'
param prodModelsContainer string = 'prodmodels'
@description('The container MLOPS_* jobs use for Dagster Pipes messages (resources/compute.py).')
param pipesContainer string = 'dagster-pipes'
param computeLogContainer string = 'dagster-logs'
param dataDatastore string = 'mlopsdata'
param prodModelsDatastore string = 'prodmodels'

param batchComputeName string = 'cpu-batch'
param batchComputeVmSize string = 'Standard_F16s_v2'
param batchComputeMaxNodes int = 12

param aksComputeName string = 'aks-serving'
param aksNodeVmSize string = 'Standard_D4s_v5'
param aksNodeCount int = 3
param inferenceTlsSecret string = ''
@minLength(3)
@maxLength(32)
param endpointName string = 'mlops-sales-scoring'

param vnetAddressSpace string = '10.40.0.0/16'
param dagsterSubnet string = '10.40.0.0/23'
param aksSubnet string = '10.40.4.0/22'
param postgresSubnet string = '10.40.2.0/24'

param postgresSkuName string = 'Standard_B2s'
@allowed(['Burstable', 'GeneralPurpose', 'MemoryOptimized'])
param postgresSkuTier string = 'Burstable'
param postgresStorageSizeGB int = 32
param postgresHighAvailability bool = false
param postgresGeoRedundantBackup bool = false
param postgresAdminLogin string = 'dagster'
@secure()
@description('Given at deploy time (the parameters files read it from the environment); stored in Key Vault.')
param postgresAdminPassword string

@description('The code-location image (<registry>/mlops-assets:<sha>); empty: no Dagster container apps yet (first deployment, before an image is pushed).')
param dagsterImage string = ''

@description('Name of a Key Vault secret (in this deployment\'s vault) holding the Teams webhook URL for alerts; set it with `az keyvault secret set` first. Empty: no alerts.')
param alertsWebhookSecretName string = ''

@description('prod only: the dev deployment promotion reads from: subscriptionId, resourceGroup, storageAccountName, workspaceName. Empty in dev.')
param upstream object = {}

param logRetentionDays int = 30

var suffix = take(uniqueString(resourceGroup().id), 6)
var name = '${prefix}-${environmentName}'
var flat = toLower('${prefix}${environmentName}${suffix}')
var storageName = take('st${flat}', 24)
var hasUpstream = !empty(upstream)
var codeLocationName = 'ca-${name}-code'

module identities 'modules/identities.bicep' = {
  name: 'identities'
  params: { location: location, prefix: name, tags: tags }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: { location: location, prefix: name, tags: tags, retentionInDays: logRetentionDays }
}

module network 'modules/network.bicep' = {
  name: 'network'
  params: {
    location: location
    prefix: name
    tags: tags
    addressSpace: vnetAddressSpace
    dagsterSubnet: dagsterSubnet
    postgresSubnet: postgresSubnet
    aksSubnet: aksSubnet
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    name: storageName
    tags: tags
    sku: storageSku
    dataContainer: dataContainer
    prodModelsContainer: prodModelsContainer
    pipesContainer: pipesContainer
    computeLogContainer: computeLogContainer
    blobContributors: [identities.outputs.dagsterPrincipalId, identities.outputs.jobsPrincipalId]
    blobReaders: [identities.outputs.endpointsPrincipalId]
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    location: location
    name: take('kv-${name}-${suffix}', 24)
    tags: tags
    secretsUsers: [identities.outputs.dagsterPrincipalId]
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  params: {
    location: location
    name: take('cr${flat}', 50)
    tags: tags
    sku: registrySku
    pullers: [
      identities.outputs.dagsterPrincipalId
      identities.outputs.jobsPrincipalId
      identities.outputs.endpointsPrincipalId
    ]
  }
}

module workspace 'modules/workspace.bicep' = {
  name: 'workspace'
  params: {
    location: location
    name: 'mlw-${name}'
    tags: tags
    storageAccountId: storage.outputs.id
    storageAccountName: storage.outputs.name
    keyVaultId: keyVault.outputs.id
    appInsightsId: monitoring.outputs.appInsightsId
    containerRegistryId: registry.outputs.id
    dataContainer: dataContainer
    prodModelsContainer: prodModelsContainer
    dataDatastore: dataDatastore
    prodModelsDatastore: prodModelsDatastore
    batchComputeName: batchComputeName
    batchComputeVmSize: batchComputeVmSize
    batchComputeMaxNodes: batchComputeMaxNodes
    jobsIdentityId: identities.outputs.jobsId
    dataScientists: [identities.outputs.dagsterPrincipalId]
  }
}

module aks 'modules/aks.bicep' = {
  name: 'aks'
  params: {
    location: location
    name: 'aks-${name}'
    tags: tags
    nodeVmSize: aksNodeVmSize
    nodeCount: aksNodeCount
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    subnetId: network.outputs.aksSubnetId
    workspaceName: workspace.outputs.name
    computeName: aksComputeName
    endpointsIdentityId: identities.outputs.endpointsId
    inferenceTlsSecret: inferenceTlsSecret
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'postgres'
  params: {
    location: location
    name: 'psql-${name}-${suffix}'
    tags: tags
    skuName: postgresSkuName
    skuTier: postgresSkuTier
    storageSizeGB: postgresStorageSizeGB
    highAvailability: postgresHighAvailability
    geoRedundantBackup: postgresGeoRedundantBackup
    subnetId: network.outputs.postgresSubnetId
    privateDnsZoneId: network.outputs.postgresDnsZoneId
    databaseName: 'dagster'
    administratorLogin: postgresAdminLogin
    administratorPassword: postgresAdminPassword
    keyVaultName: keyVault.outputs.name
    passwordSecretName: 'dagster-pg-password'
    dagsterPrincipalId: identities.outputs.dagsterPrincipalId
    dagsterIdentityName: 'id-${name}-dagster'
  }
}

// prod: promotion reads the dev champion (dev storage account and MLflow registry).
module upstreamAccess 'modules/upstream-access.bicep' = if (hasUpstream) {
  name: 'upstream-access-${environmentName}'
  scope: resourceGroup(upstream.?subscriptionId ?? subscription().subscriptionId, upstream.?resourceGroup ?? resourceGroup().name)
  params: {
    storageAccountName: upstream.?storageAccountName ?? ''
    workspaceName: upstream.?workspaceName ?? ''
    principalIds: [identities.outputs.dagsterPrincipalId, identities.outputs.jobsPrincipalId]
  }
}

var blobSuffix = 'blob.${environment().suffixes.storage}'
var ownStorageUrl = 'https://${storageName}.${blobSuffix}'

// The settings the code location reads (mlops_assets/profiles.py, deploy/dagster/*.yaml).
var settings = {
  MLOPS_PROFILE: environmentName
  MLOPS_TRAINING_ENGINE: trainingEngine
  MLOPS_STORAGE_ACCOUNT_URL: hasUpstream ? 'https://${upstream.storageAccountName}.${blobSuffix}' : ownStorageUrl
  MLOPS_STORAGE_CONTAINER: hasUpstream ? (upstream.?storageContainer ?? dataContainer) : dataContainer
  MLOPS_PROD_STORAGE_ACCOUNT_URL: ownStorageUrl
  MLOPS_PROD_STORAGE_CONTAINER: prodModelsContainer
  MLOPS_MLFLOW_DEV_URI: hasUpstream ? upstreamAccess.outputs.mlflowTrackingUri : workspace.outputs.mlflowTrackingUri
  MLOPS_MLFLOW_PROD_URI: workspace.outputs.mlflowTrackingUri
  MLOPS_AML_SUBSCRIPTION_ID: subscription().subscriptionId
  MLOPS_AML_RESOURCE_GROUP: resourceGroup().name
  MLOPS_AML_WORKSPACE: workspace.outputs.name
  MLOPS_AML_BATCH_COMPUTE: workspace.outputs.batchComputeName
  MLOPS_AML_ENDPOINT: endpointName
  MLOPS_AML_AKS_COMPUTE: aks.outputs.computeName
  MLOPS_AML_MODEL_BASE_URI: 'azureml://datastores/${prodModelsDatastore}/paths/'
  MLOPS_CODE_LOCATION_HOST: codeLocationName
}

module dagster 'modules/dagster.bicep' = if (!empty(dagsterImage)) {
  name: 'dagster'
  params: {
    location: location
    prefix: name
    tags: tags
    subnetId: network.outputs.dagsterSubnetId
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    image: dagsterImage
    registryServer: registry.outputs.loginServer
    dagsterIdentityId: identities.outputs.dagsterId
    dagsterIdentityName: 'id-${name}-dagster'
    dagsterPrincipalId: identities.outputs.dagsterPrincipalId
    dagsterClientId: identities.outputs.dagsterClientId
    settings: settings
    instanceSettings: {
      DAGSTER_PG_HOST: postgres.outputs.host
      DAGSTER_PG_PORT: '5432'
      DAGSTER_PG_DB: postgres.outputs.database
      DAGSTER_PG_USERNAME: postgresAdminLogin
      DAGSTER_COMPUTE_LOG_ACCOUNT: storage.outputs.name
      DAGSTER_COMPUTE_LOG_CONTAINER: computeLogContainer
      DAGSTER_ACA_SUBSCRIPTION_ID: subscription().subscriptionId
      DAGSTER_ACA_RESOURCE_GROUP: resourceGroup().name
      DAGSTER_ACA_REGION: location
      DAGSTER_ACA_IDENTITY_ID: identities.outputs.dagsterId
    }
    passwordSecretUri: postgres.outputs.passwordSecretUri
    codeLocationName: codeLocationName
    alertsWebhookSecretUri: alertsWebhookSecretName == '' ? '' : '${keyVault.outputs.uri}secrets/${alertsWebhookSecretName}'
  }
}

output MLOPS_PROFILE string = settings.MLOPS_PROFILE
output MLOPS_TRAINING_ENGINE string = settings.MLOPS_TRAINING_ENGINE
output MLOPS_STORAGE_ACCOUNT_URL string = settings.MLOPS_STORAGE_ACCOUNT_URL
output MLOPS_STORAGE_CONTAINER string = settings.MLOPS_STORAGE_CONTAINER
output MLOPS_PROD_STORAGE_ACCOUNT_URL string = settings.MLOPS_PROD_STORAGE_ACCOUNT_URL
output MLOPS_PROD_STORAGE_CONTAINER string = settings.MLOPS_PROD_STORAGE_CONTAINER
output MLOPS_MLFLOW_DEV_URI string = settings.MLOPS_MLFLOW_DEV_URI
output MLOPS_MLFLOW_PROD_URI string = settings.MLOPS_MLFLOW_PROD_URI
output MLOPS_AML_SUBSCRIPTION_ID string = settings.MLOPS_AML_SUBSCRIPTION_ID
output MLOPS_AML_RESOURCE_GROUP string = settings.MLOPS_AML_RESOURCE_GROUP
output MLOPS_AML_WORKSPACE string = settings.MLOPS_AML_WORKSPACE
output MLOPS_AML_BATCH_COMPUTE string = settings.MLOPS_AML_BATCH_COMPUTE
output MLOPS_AML_ENDPOINT string = settings.MLOPS_AML_ENDPOINT
output MLOPS_AML_AKS_COMPUTE string = settings.MLOPS_AML_AKS_COMPUTE
output MLOPS_AML_MODEL_BASE_URI string = settings.MLOPS_AML_MODEL_BASE_URI
output MLOPS_CODE_LOCATION_HOST string = settings.MLOPS_CODE_LOCATION_HOST
// Not in `settings` (the webserver's address is known once its environment exists): set on the
// Dagster apps by modules/dagster.bicep, read by alerts and by CD (`mlops launch`).
output MLOPS_DAGSTER_UI_URL string = empty(dagsterImage) ? '' : dagster.outputs.webserverUrl
