{{/*
Helpers shared by the templates. Names follow the usual Helm conventions
(63 characters at most, as DNS labels require); labels follow the
app.kubernetes.io recommendations so that kubectl, Argo CD and dashboards
group the objects by release and component.
*/}}

{{/*
analysis-operator.name: the chart name, or nameOverride. The value of the
app.kubernetes.io/name label of the chart's own objects.
*/}}
{{- define "analysis-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
analysis-operator.fullname: the prefix of every object name. The release name
alone when it already contains the chart name (release "analysis-operator"
gives "analysis-operator", not "analysis-operator-analysis-operator").
*/}}
{{- define "analysis-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
analysis-operator.redisName: the bundled Redis' StatefulSet, Service, Secret
and ConfigMap. Shorter than fullname by "-redis" so it stays a valid name.
*/}}
{{- define "analysis-operator.redisName" -}}
{{- printf "%s-redis" (include "analysis-operator.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/*
analysis-operator.leaderLease: the Lease the operator's replicas elect their leader by (release namespace).
*/}}
{{- define "analysis-operator.leaderLease" -}}
{{- printf "%s-leader" (include "analysis-operator.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/*
analysis-operator.chart: chart name and version, for the helm.sh/chart label.
*/}}
{{- define "analysis-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
analysis-operator.labels: the labels of every object of the release. Call with
(dict "root" $ "component" "operator"); the component (operator, redis) also
goes into the selector labels.
*/}}
{{- define "analysis-operator.labels" -}}
helm.sh/chart: {{ include "analysis-operator.chart" .root }}
{{ include "analysis-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: analysis-operator
{{- end }}

{{/*
analysis-operator.selectorLabels: the labels a Deployment, StatefulSet,
Service, NetworkPolicy or ServiceMonitor selects one component's pods by.
They never change across upgrades (a Deployment's selector is immutable).
Call with (dict "root" $ "component" "operator").
*/}}
{{- define "analysis-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "analysis-operator.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
analysis-operator.workerSelectorLabels: the labels the operator puts on every
worker pod (analysis_operator.builders.labels); the Redis NetworkPolicy and the
PodMonitor select worker pods by them.
*/}}
{{- define "analysis-operator.workerSelectorLabels" -}}
app.kubernetes.io/name: analysis-worker
app.kubernetes.io/part-of: analysis-operator
{{- end }}

{{/*
analysis-operator.image: "repository@digest" when a digest is given, else
"repository:tag" with the chart's appVersion as the default tag. Call with
(dict "image" .Values.operator.image "root" $).
*/}}
{{- define "analysis-operator.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
analysis-operator.serviceAccountName: the operator's ServiceAccount.
*/}}
{{- define "analysis-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "analysis-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
analysis-operator.redisUrl: what the operator connects to. The bundled Redis
by its Service's DNS name (no cluster domain, so any cluster domain works),
else redis.external.url. Never holds a password (the schema forbids one in
the URL): that comes from the Secret below.
*/}}
{{- define "analysis-operator.redisUrl" -}}
{{- if .Values.redis.bundled.enabled }}
{{- printf "redis://%s.%s.svc:6379/0" (include "analysis-operator.redisName" .) .Release.Namespace }}
{{- else }}
{{- required "redis.external.url is required when redis.bundled.enabled is false" .Values.redis.external.url }}
{{- end }}
{{- end }}

{{/*
analysis-operator.workerRedisUrl: what worker pods connect to, from other
namespaces: the same Service name with the bundled Redis, else
redis.external.workerUrl or, by default, redis.external.url.
*/}}
{{- define "analysis-operator.workerRedisUrl" -}}
{{- if .Values.redis.bundled.enabled }}
{{- include "analysis-operator.redisUrl" . }}
{{- else }}
{{- default (include "analysis-operator.redisUrl" .) .Values.redis.external.workerUrl }}
{{- end }}
{{- end }}

{{/*
analysis-operator.redisSecretName: the Secret holding the Redis password (the
generated one of the bundled Redis, or redis.external.existingSecret.name);
empty when Redis has no password.
*/}}
{{- define "analysis-operator.redisSecretName" -}}
{{- if .Values.redis.bundled.enabled }}
{{- include "analysis-operator.redisName" . }}
{{- else }}
{{- .Values.redis.external.existingSecret.name }}
{{- end }}
{{- end }}

{{/*
analysis-operator.redisSecretKey: the key of the password in that Secret.
*/}}
{{- define "analysis-operator.redisSecretKey" -}}
{{- if .Values.redis.bundled.enabled }}password{{ else }}{{ .Values.redis.external.existingSecret.key }}{{ end }}
{{- end }}

{{/*
analysis-operator.watchArgs: Kopf's namespace flags, one per line, each a YAML
list item: --all-namespaces, or --namespace=X per watched namespace.
*/}}
{{- define "analysis-operator.watchArgs" -}}
{{- if .Values.watch.allNamespaces }}
- --all-namespaces
{{- else }}
{{- range .Values.watch.namespaces }}
- --namespace={{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
analysis-operator.workerNamespaceSelector: a NetworkPolicyPeer's
namespaceSelector matching where worker pods run: any namespace when the
operator watches all, else the watched ones (by the kubernetes.io/metadata.name
label every namespace carries).
*/}}
{{- define "analysis-operator.workerNamespaceSelector" -}}
{{- if .Values.watch.allNamespaces }}
namespaceSelector: {}
{{- else }}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: In
      values:
        {{- toYaml .Values.watch.namespaces | nindent 8 }}
{{- end }}
{{- end }}

{{/*
analysis-operator.restrictedContainerSecurityContext: the container half of
the "restricted" Pod Security Standard: no privilege escalation, no
capabilities, a read-only root filesystem, RuntimeDefault seccomp, non-root.
*/}}
{{- define "analysis-operator.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
analysis-operator.restrictedPodSecurityContext: the pod half, with the fixed
non-root uid/gid given as the argument (fsGroup too, so a volume is writable).
*/}}
{{- define "analysis-operator.restrictedPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ int . }}
runAsGroup: {{ int . }}
fsGroup: {{ int . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}
