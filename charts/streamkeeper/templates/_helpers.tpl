{{/* Names and labels shared by every template. */}}

{{- define "streamkeeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "streamkeeper.fullname" -}}
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

{{- define "streamkeeper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streamkeeper.labels" -}}
helm.sh/chart: {{ include "streamkeeper.chart" . }}
{{ include "streamkeeper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamkeeper
{{- end }}

{{- define "streamkeeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamkeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The controller's pods. */}}
{{- define "streamkeeper.controllerSelectorLabels" -}}
{{ include "streamkeeper.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{/* The bundled Redis's pods. */}}
{{- define "streamkeeper.redisSelectorLabels" -}}
{{ include "streamkeeper.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "streamkeeper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamkeeper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "streamkeeper.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "streamkeeper.redisName" -}}
{{- printf "%s-redis" (include "streamkeeper.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/*
The controller's Redis URL: redis.url, else the bundled Redis's Service, else empty (no Redis).
Both at once is refused: which one is meant cannot be guessed.
*/}}
{{- define "streamkeeper.redisUrl" -}}
{{- $r := .Values.redis }}
{{- $sources := 0 }}
{{- if $r.url }}{{ $sources = add1 $sources }}{{ end }}
{{- if $r.existingSecret.name }}{{ $sources = add1 $sources }}{{ end }}
{{- if $r.bundled.enabled }}{{ $sources = add1 $sources }}{{ end }}
{{- if gt $sources 1 }}
{{- fail "redis: set only one of redis.url, redis.existingSecret.name and redis.bundled.enabled" }}
{{- end }}
{{- if $r.url }}
{{- $r.url }}
{{- else if $r.bundled.enabled }}
{{- printf "redis://%s.%s.svc:6379" (include "streamkeeper.redisName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* The controller's RBAC rules: exactly the API calls it makes (tasks/operator-contract.md). */}}
{{- define "streamkeeper.controllerRules" -}}
- apiGroups: ["streamkeeper.dev"]
  resources: ["streamconnections"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["streamkeeper.dev"]
  resources: ["streamconnections/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["streamkeeper.dev"]
  resources: ["streamconnections/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
