{{/*
What llmserve-operator calls on applications and their children. Every resource here is
namespaced: the ClusterRole holds these rules when the operator watches every namespace, a Role in
operator.watchNamespace when it watches one.
*/}}
{{- define "llmserve.applicationRules" -}}
# The applications it reconciles and the usage data it counts.
- apiGroups: [llmserve.dev]
  resources: [llmapplications]
  verbs: [list, watch]
- apiGroups: [llmserve.dev]
  resources: [llmapplications/status]
  verbs: [patch]
# Children, written by server-side apply (which needs `create` for a new object and `patch`
# after), read first to refuse taking over what the app does not control, listed to prune,
# watched to react.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, list, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [prometheusrules]
  verbs: [get, create, patch, delete]
# The NetworkPolicy that lets only the router reach the models: applied, read first for the
# ownership check; with --network-policy=false, read and deleted if the app still has one.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch, delete]
# The models' and the router's identities, and the router's read access to EndpointSlices; to
# grant that access the operator must hold it (RBAC refuses to escalate).
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, patch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
# With `spec.auth`, the router's Role also reads the app's API-keys Secret (by name only). The
# operator reads no Secret itself; what it holds here is what RBAC asks of one granting that.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
# Events on LlmApplications.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
