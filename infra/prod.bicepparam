// prod: promotion reads the dev champion from the dev deployment named in `upstream` (its
// outputs MLOPS_AML_SUBSCRIPTION_ID, MLOPS_AML_RESOURCE_GROUP, MLOPS_AML_WORKSPACE and the
// storage account of MLOPS_STORAGE_ACCOUNT_URL).
//   export DAGSTER_PG_PASSWORD=... MLOPS_DEV_STORAGE_ACCOUNT=... (docs/deploy.md)
//   az deployment group create -g rg-mlops-prod -f infra/main.bicep -p infra/prod.bicepparam
using 'main.bicep'

param environmentName = 'prod'
param storageSku = 'Standard_ZRS'
param registrySku = 'Premium'
param batchComputeMaxNodes = 12
param aksNodeCount = 3
param vnetAddressSpace = '10.41.0.0/16'
param dagsterSubnet = '10.41.0.0/23'
param postgresSubnet = '10.41.2.0/24'
param aksSubnet = '10.41.4.0/22'
param postgresSkuName = 'Standard_D2ds_v5'
param postgresSkuTier = 'GeneralPurpose'
param postgresHighAvailability = true
param postgresGeoRedundantBackup = true
param logRetentionDays = 90
param postgresAdminPassword = readEnvironmentVariable('DAGSTER_PG_PASSWORD')
param dagsterImage = readEnvironmentVariable('DAGSTER_IMAGE', '')
param upstream = {
  subscriptionId: readEnvironmentVariable('MLOPS_DEV_SUBSCRIPTION_ID')
  resourceGroup: readEnvironmentVariable('MLOPS_DEV_RESOURCE_GROUP', 'rg-mlops-dev')
  storageAccountName: readEnvironmentVariable('MLOPS_DEV_STORAGE_ACCOUNT')
  workspaceName: readEnvironmentVariable('MLOPS_DEV_WORKSPACE', 'mlw-mlops-dev')
}
