// The AKS cluster that serves the Kubernetes online endpoints, with the Azure ML extension
// (Microsoft.AzureML.Kubernetes, inference only, behind an internal load balancer) and its
// attachment to the workspace as a Kubernetes compute.
param location string
param name string
param tags object
param nodeVmSize string
param nodeCount int
param logAnalyticsId string
param subnetId string
param workspaceName string
param computeName string
param endpointsIdentityId string
@description('Kubernetes secret holding the inference router TLS certificate; empty: plain HTTP inside the virtual network only.')
param inferenceTlsSecret string

var baseSettings = {
  enableInference: 'True'
  enableTraining: 'False'
  inferenceRouterServiceType: 'LoadBalancer'
  internalLoadBalancerProvider: 'azure'
  inferenceRouterHA: 'True'
  installNvidiaDevicePlugin: 'False'
  allowInsecureConnections: empty(inferenceTlsSecret) ? 'True' : 'False'
}

resource aks 'Microsoft.ContainerService/managedClusters@2025-05-01' = {
  #checkov:skip=CKV_AZURE_115:A private API server needs a jump host or VPN for the AML extension's set-up; the API server is Entra ID only with local accounts disabled (docs/deploy.md, hardening).
  #checkov:skip=CKV_AZURE_6:API server authorized IP ranges depend on the operator's network; set them per deployment (docs/deploy.md, hardening).
  #checkov:skip=CKV_AZURE_117:Disk encryption sets need a customer-managed key; platform-managed encryption at rest is used.
  #checkov:skip=CKV_AZURE_226:Ephemeral OS disks need a VM size with a large enough cache; nodeVmSize is a parameter.
  #checkov:skip=CKV_AZURE_227:Host encryption needs the EncryptionAtHost feature registered on the subscription.
  #checkov:skip=CKV_AZURE_172:Rotation is on (addonProfiles.azureKeyvaultSecretsProvider.config.enableSecretRotation 'true': the API takes a string; checkov looks for a boolean).
  #checkov:skip=CKV_AZURE_232:Only system pool: the inference pods are small and few; add a user pool for larger models.
  name: name
  location: location
  tags: tags
  sku: { name: 'Base', tier: 'Standard' }
  identity: { type: 'SystemAssigned' }
  properties: {
    dnsPrefix: name
    enableRBAC: true
    disableLocalAccounts: true
    aadProfile: { managed: true, enableAzureRBAC: true }
    autoUpgradeProfile: { upgradeChannel: 'patch', nodeOSUpgradeChannel: 'NodeImage' }
    agentPoolProfiles: [
      {
        name: 'system'
        mode: 'System'
        count: nodeCount
        vmSize: nodeVmSize
        osType: 'Linux'
        osDiskType: 'Managed'
        maxPods: 50
        vnetSubnetID: subnetId
        type: 'VirtualMachineScaleSets'
      }
    ]
    networkProfile: {
      networkPlugin: 'azure'
      networkPolicy: 'azure'
      loadBalancerSku: 'standard'
    }
    addonProfiles: {
      azurepolicy: { enabled: true }
      azureKeyvaultSecretsProvider: { enabled: true, config: { enableSecretRotation: 'true' } }
      kubeDashboard: { enabled: false }
      omsagent: { enabled: true, config: { logAnalyticsWorkspaceResourceID: logAnalyticsId } }
    }
    securityProfile: {
      workloadIdentity: { enabled: true }
    }
    oidcIssuerProfile: { enabled: true }
  }
}

resource amlExtension 'Microsoft.KubernetesConfiguration/extensions@2024-11-01' = {
  name: 'azureml'
  scope: aks
  identity: { type: 'SystemAssigned' }
  properties: {
    extensionType: 'Microsoft.AzureML.Kubernetes'
    releaseTrain: 'stable'
    autoUpgradeMinorVersion: true
    scope: { cluster: { releaseNamespace: 'azureml' } }
    configurationSettings: union(baseSettings, empty(inferenceTlsSecret) ? {} : { sslSecret: inferenceTlsSecret })  }
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-06-01' existing = {
  name: workspaceName
}

resource attach 'Microsoft.MachineLearningServices/workspaces/computes@2025-06-01' = {
  parent: workspace
  name: computeName
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${endpointsIdentityId}': {} }
  }
  properties: {
    computeType: 'Kubernetes'
    resourceId: aks.id
    properties: {
      namespace: 'azureml'
      defaultInstanceType: 'defaultinstancetype'
      instanceTypes: {
        defaultinstancetype: {
          resources: {
            requests: { cpu: '1', memory: '1Gi' }
            limits: { cpu: '2', memory: '2Gi' }
          }
        }
      }
    }
  }
  dependsOn: [amlExtension]
}

output computeName string = attach.name
