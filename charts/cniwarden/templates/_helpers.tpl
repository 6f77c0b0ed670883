{{/* Names and labels shared by every object of the chart. */}}

{{- define "cniwarden.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object name prefix: the release name, unless it already names the chart. */}}
{{- define "cniwarden.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cniwarden.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "cniwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "agent"). */}}
{{- define "cniwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cniwarden.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cniwarden.componentLabels" -}}
{{ include "cniwarden.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cniwarden.controllerName" -}}
{{ include "cniwarden.fullname" . }}-controller
{{- end -}}

{{- define "cniwarden.agentName" -}}
{{ include "cniwarden.fullname" . }}-agent
{{- end -}}

{{- define "cniwarden.uninstallName" -}}
{{ include "cniwarden.fullname" . }}-uninstall
{{- end -}}

{{/* An image reference: call with (dict "root" $ "repository" "cniwarden-agent"). */}}
{{- define "cniwarden.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s/%s:%s" (.root.Values.image.registry | trimSuffix "/") .repository $tag -}}
{{- end -}}

{{/* The restricted container security context of the processes that need no host access. */}}
{{- define "cniwarden.restrictedSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Readiness and liveness on kopf's health endpoint (`--liveness`, port "health"):
     it answers once the operator has started its watches. */}}
{{- define "cniwarden.kopfHealthProbes" -}}
readinessProbe:
  httpGet:
    path: /healthz
    port: health
  periodSeconds: 10
  timeoutSeconds: 5
livenessProbe:
  httpGet:
    path: /healthz
    port: health
  initialDelaySeconds: 15
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* Annotations of an uninstall (pre-delete) hook object; call with its weight. */}}
{{- define "cniwarden.preDeleteHook" -}}
helm.sh/hook: pre-delete
helm.sh/hook-weight: {{ . | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end -}}
