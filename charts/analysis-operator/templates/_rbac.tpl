{{/*
analysis-operator.namespacedRules: everything the operator does inside a
watched namespace, and nothing more. Granted by a Role in each watched
namespace, or by the ClusterRole when it watches all of them. No wildcard verbs
or resources; each rule says who needs it (Kopf or the operator's own client,
operator/src/analysis_operator/kube.py) and why.

Secrets: create and patch only, never get, list or watch. The operator never
reads a Secret's data: it gets the Redis password from its own environment
(a secretKeyRef the kubelet resolves) and writes a copy into a per-batch
Secret "<batch>-redis" in the batch's namespace, since a worker pod cannot
refer to a Secret of another namespace. That Secret is owned by the batch, so
the garbage collector deletes it; the LLM API keys are only ever read by the
kubelet for the workers (secretKeyRef). A batch's Secret is written with
server-side apply, which needs create (the first time) and patch.
*/}}
{{- define "analysis-operator.namespacedRules" -}}
# Kopf: watch AnalysisBatches; add and remove its finalizer and progress
# annotations (patch). The operator: delete a batch past ttlSecondsAfterFinished.
- apiGroups: ["analysis.dev"]
  resources: ["analysisbatches"]
  verbs: ["list", "watch", "patch", "delete"]
# The operator: write status (phase, progress, conditions) through the subresource.
- apiGroups: ["analysis.dev"]
  resources: ["analysisbatches/status"]
  verbs: ["patch"]
# Children name their batch as owner with blockOwnerDeletion; where the
# OwnerReferencesPermissionEnforcement admission plugin is on, that needs update
# on the owner's finalizers. It grants nothing patch above does not already.
- apiGroups: ["analysis.dev"]
  resources: ["analysisbatches/finalizers"]
  verbs: ["update"]
# Kopf: post Events on batches (Kopf's and the operator's own: RetryFailed,
# stage transitions, cleanup warnings).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# The operator: read the user's ConfigMaps named by spec.itemsFrom and
# promptFrom (get); apply the plan ConfigMap (create, patch); write the results
# ConfigMaps (list by label, create, update); remove the batch's on deletion
# (list by the batch-uid label, delete each, as `kubectl delete -l` does).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "create", "update", "patch", "delete"]
# The operator: the workers' ServiceAccount, applied per batch (no token, no
# rights) and removed on deletion (list by label, delete).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["list", "create", "patch", "delete"]
# The operator: the per-batch copy of the Redis password for its workers
# (write-only, see above).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch"]
# Kopf: an index of the batches' worker pods (list, watch). The operator: mark
# busy pods with a pod-deletion-cost annotation before a Deployment shrinks
# (patch); wait on deletion until no worker pod is left (list).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch"]
# Kopf: indexes of the stages' Jobs and Deployments (list, watch). The
# operator: apply them (create, patch), retire an outdated one (delete), remove
# the batch's on deletion (list by label, delete each).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
{{- end }}

{{/*
analysis-operator.clusterRules: what only a cluster-wide operator needs on top.
Kopf watches CustomResourceDefinitions to notice the CRD being re-installed or
changed while it runs (without it Kopf logs "Not enough permissions to watch
for resources" and only rescans on restart). Namespaces are not needed: Kopf
lists them only to match namespace patterns, and --all-namespaces has none.
*/}}
{{- define "analysis-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
