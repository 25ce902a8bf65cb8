{{/*
analysis-operator.namespacedRules: everything the operator does inside a
watched namespace, and nothing more. Granted by a Role in each watched
namespace, or by the ClusterRole when it watches all of them. No wildcard verbs
or resources; each rule says who needs it (Kopf or the operator's own client,
operator/src/analysis_operator/kube.py) and why.

Secrets: create and patch only, never get, list or watch. The operator never
reads a Secret through the API: it reads the Redis admin password from its
own mounted file, derives each batch's password from it, and writes the
batch's Redis user and that password into a Secret "<batch>-redis" in the
batch's namespace, which its workers mount (a pod cannot mount a Secret of
another namespace). That Secret is owned by the batch, so the garbage
collector deletes it; the LLM API keys are only ever read by the kubelet,
which mounts them into the workers. A batch's Secret is written with
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
# stage transitions, cleanup warnings). Cluster-wide, this also covers the
# Events of AnalysisProviders, in the operator's namespace (ownNamespaceRules).
# The operator: list the kubelet's FailedMount Events of a worker pod stuck
# creating its containers (by involvedObject.name), which is how a missing
# key Secret, mounted as a file, shows (condition SecretNotFound).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
# The operator: read the user's ConfigMaps named by spec.itemsFrom and
# promptFrom (get); apply the plan ConfigMap and the copy of an account's CA
# bundle (create, patch); write the results ConfigMaps (list by label, create,
# update); remove the batch's on deletion (list by the batch-uid label, delete
# each, as `kubectl delete -l` does). Cluster-wide, get also covers an
# account's CA bundle in the operator's namespace (ownNamespaceRules).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "create", "update", "patch", "delete"]
# The operator: the workers' ServiceAccount, applied per batch (no token, no
# rights) and removed on deletion (list by label, delete).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["list", "create", "patch", "delete"]
# The operator: each batch's Redis user and its password, for the batch's
# workers (write-only, see above).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch"]
# Kopf: an index of the batches' worker pods (list, watch). The operator: mark
# busy pods with a pod-deletion-cost annotation before a Deployment shrinks
# (patch); delete the idle pods of a Job it retired before lowering the Job's
# parallelism, so the Job controller never picks a busy one (delete); wait on
# deletion until no worker pod is left (list).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch", "delete"]
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

{{/*
analysis-operator.accountRules: AnalysisProviders, the provider accounts that
batches of several namespaces share. They are cluster-scoped, so even an
operator that watches a list of namespaces holds these in a ClusterRole (a
Role cannot grant a cluster-scoped resource), and Kopf watches them across the
cluster whatever namespaces it was given.
*/}}
{{- define "analysis-operator.accountRules" -}}
# Kopf: watch AnalysisProviders (list, watch); add and remove its finalizer and
# progress annotations (patch).
- apiGroups: ["analysis.dev"]
  resources: ["analysisproviders"]
  verbs: ["list", "watch", "patch"]
# The operator: write an account's status (calls granted and in flight, who
# waits, pauses, quota) through the subresource.
- apiGroups: ["analysis.dev"]
  resources: ["analysisproviders/status"]
  verbs: ["patch"]
{{- end }}

{{/*
analysis-operator.ownNamespaceRules: what the operator does in its own (the
release's) namespace. A cluster-wide operator has these from the ClusterRole;
one that watches a list of namespaces gets a Role here, whether or not the
list names this namespace.

Events: an AnalysisProvider has no namespace, so Kopf posts its Events (and
the operator's own on it) in the namespace of its connection, which in a pod
is its ServiceAccount's, this one (kopf/_cogs/clients/events.py: the object's
namespace, else the login's default namespace, and "default" only when the
login has none, as a kubeconfig without a namespace outside a cluster).

ConfigMaps, get only: an account's egress.caBundle names a ConfigMap in this
namespace, which the platform admin controls and teams do not; the operator
reads its key and copies it into the namespace of each batch on the account
(create and patch there come from the namespaced rules).
*/}}
{{- define "analysis-operator.ownNamespaceRules" -}}
# Kopf and the operator: post Events on AnalysisProviders (cluster-scoped, so
# they land in the operator's namespace).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# The operator: read an account's egress.caBundle ConfigMap, to copy it into
# the namespaces of the batches on the account.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
{{- end }}

{{/*
analysis-operator.leaderRules: the replicas' leader Lease, in the release's
namespace only, whatever the operator watches. create cannot be narrowed to a
name (the object does not exist yet when it is authorized); get and update
are, to the one Lease.
*/}}
{{- define "analysis-operator.leaderRules" -}}
# The operator: make the Lease the first time any replica starts (create).
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
# The operator: read who holds it (get); take it, renew it, give it up (update,
# under the resourceVersion it read).
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: [{{ include "analysis-operator.leaderLease" . | quote }}]
  verbs: ["get", "update"]
{{- end }}
