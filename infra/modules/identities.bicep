// One user-assigned identity per kind of workload, so each gets only the roles it needs:
// dagster (webserver, daemon, code location and every run's Container Apps job), jobs (the
// Azure ML compute cluster's command jobs: training and batch scoring) and endpoints (the
// Kubernetes online deployments on AKS).
param location string
param prefix string
param tags object

var kinds = ['dagster', 'jobs', 'endpoints']

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' = [
  for kind in kinds: {
    name: 'id-${prefix}-${kind}'
    location: location
    tags: tags
  }
]

output dagsterId string = identity[0].id
output dagsterPrincipalId string = identity[0].properties.principalId
output dagsterClientId string = identity[0].properties.clientId
output jobsId string = identity[1].id
output jobsPrincipalId string = identity[1].properties.principalId
output endpointsId string = identity[2].id
output endpointsPrincipalId string = identity[2].properties.principalId
