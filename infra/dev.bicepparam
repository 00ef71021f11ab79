// dev: its own workspace is both the dev and the staging ("prod") registry, so the release
// path runs end to end before prod (.github/workflows/cd.yml).
//   export DAGSTER_PG_PASSWORD=...   (docs/deploy.md: generated once, then read from Key Vault)
//   az deployment group create -g rg-mlops-dev -f infra/main.bicep -p infra/dev.bicepparam
using 'main.bicep'

param environmentName = 'dev'
param storageSku = 'Standard_LRS'
param registrySku = 'Standard'
param batchComputeMaxNodes = 4
param aksNodeCount = 2
param vnetAddressSpace = '10.40.0.0/16'
param postgresSkuName = 'Standard_B2s'
param postgresSkuTier = 'Burstable'
param postgresAdminPassword = readEnvironmentVariable('DAGSTER_PG_PASSWORD')
param dagsterImage = readEnvironmentVariable('DAGSTER_IMAGE', '')
