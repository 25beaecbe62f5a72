{{- define "revmesh.labels" -}}
app.kubernetes.io/part-of: revmesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{/* The versions rollouts.yml defines; one namespace-pinned webhook each. */}}
{{- define "revmesh.versions" -}}
{{- $r := fromYaml .Values.rollouts -}}
{{- if $r.Error -}}
{{- fail (printf "values.rollouts is not YAML: %s" $r.Error) -}}
{{- end -}}
{{- if not $r.versions -}}
{{- fail "values.rollouts defines no versions" -}}
{{- end -}}
{{- keys $r.versions | sortAlpha | join "," -}}
{{- end -}}

{{/*
The webhook's serving certificate and its CA, base64: the existing Secret's on
upgrades, else generated once per render and cached in .Values so that the
Secret and the MutatingWebhookConfiguration's caBundle agree.
*/}}
{{- define "revmesh.webhookTLS" -}}
{{- if not (hasKey .Values "_webhookTLS") -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace "revmesh-webhook-tls" -}}
{{- $tls := dict -}}
{{- if $existing -}}
{{- $tls = dict "crt" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") "ca" (index $existing.data "ca.crt") -}}
{{- else -}}
{{- $service := printf "revmesh-webhook.%s.svc" .Release.Namespace -}}
{{- $authority := genCA "revmesh-webhook-ca" 3650 -}}
{{- $cert := genSignedCert $service nil (list $service (printf "revmesh-webhook.%s" .Release.Namespace)) 3650 $authority -}}
{{- $tls = dict "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "ca" ($authority.Cert | b64enc) -}}
{{- end -}}
{{- $_ := set .Values "_webhookTLS" $tls -}}
{{- end -}}
{{- toYaml (get .Values "_webhookTLS") -}}
{{- end -}}

{{- define "revmesh.clientConfig" -}}
{{- if .root.Values.webhook.externalURL }}
url: {{ printf "%s%s" (trimSuffix "/" .root.Values.webhook.externalURL) .path | quote }}
{{- else }}
service: {name: revmesh-webhook, namespace: {{ .root.Release.Namespace }}, path: {{ .path | quote }}, port: 443}
{{- end }}
caBundle: {{ .caBundle }}
{{- end -}}

