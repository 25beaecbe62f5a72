{{- define "cp.revision" -}}
{{- $r := required "set revision, e.g. --set revision=1-25-2" .Values.revision -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $r) -}}
{{- fail (printf "revision %q is not a DNS label (for example 1-25-2)" $r) -}}
{{- end -}}
{{- $r -}}
{{- end -}}

{{- define "cp.name" -}}control-plane-{{ include "cp.revision" . }}{{- end -}}

{{- define "cp.labels" -}}
app: control-plane
revmesh.io/control-plane: {{ include "cp.revision" . }}
app.kubernetes.io/part-of: revmesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

