{{/* The operator's name: <release>-sluice (or the release name when it already says sluice). */}}
{{- define "sluice.fullname" -}}
{{- if contains "sluice" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-sluice" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: sluice-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sluice.labels" -}}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* What the operator does in the namespaces it watches: exactly the calls it makes, nothing more. */}}
{{- define "sluice.rules" -}}
- apiGroups: [sluice.dev]
  resources: [connectors, deadletterqueues]
  verbs: [get, list, watch]
- apiGroups: [sluice.dev]
  resources: [connectors/status, deadletterqueues/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch]
# Kafka credentials and the MongoDB URI Secret's presence; values never leave the operator.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* The namespaces the task ServiceAccount goes to. */}}
{{- define "sluice.taskNamespaces" -}}
{{- $first := default .Release.Namespace .Values.watchNamespace -}}
{{- $all := prepend .Values.taskServiceAccount.namespaces $first | uniq -}}
{{- join "," $all -}}
{{- end -}}
