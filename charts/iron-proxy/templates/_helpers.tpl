{{/*
Names and labels.
*/}}
{{- define "iron-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "iron-proxy.fullname" -}}
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

{{/* The admin Service's name: "<fullname>-admin", within 63 characters. */}}
{{- define "iron-proxy.adminName" -}}
{{- printf "%s-admin" (include "iron-proxy.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "iron-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "iron-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iron-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end }}

{{- define "iron-proxy.labels" -}}
helm.sh/chart: {{ include "iron-proxy.chart" . }}
app.kubernetes.io/name: {{ include "iron-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "iron-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "iron-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "iron-proxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
Where the proxy finds its files. Each directory is one volume, so a Secret
or ConfigMap update (a `..data` symlink swap) is seen by the proxy's
directory watch.
*/}}
{{- define "iron-proxy.configDir" -}}/etc/iron-proxy{{- end }}
{{- define "iron-proxy.configFile" -}}/etc/iron-proxy/iron-proxy.toml{{- end }}
{{- define "iron-proxy.caDir" -}}/etc/iron-proxy/ca{{- end }}
{{- define "iron-proxy.credentialsDir" -}}/etc/iron-proxy/credentials{{- end }}
{{- define "iron-proxy.adminDir" -}}/etc/iron-proxy/admin{{- end }}

{{/* In-cluster URLs agents use. */}}
{{- define "iron-proxy.proxyURL" -}}
{{- printf "http://%s.%s:%d" (include "iron-proxy.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}
{{- define "iron-proxy.caURL" -}}
{{- printf "http://%s.%s:%d/ca.pem" (include "iron-proxy.adminName" .) .Release.Namespace (int .Values.adminService.port) }}
{{- end }}

{{/*
A duration as the proxy writes it ("250ms", "10s", "5m", "1h30m", "2d"),
in whole seconds, rounded up. Fails on a form it cannot read, asking for an
explicit terminationGracePeriodSeconds.
*/}}
{{- define "iron-proxy.seconds" -}}
{{- $s := . | toString | trim }}
{{- $re := "[0-9]+\\s*(ms|s|m|h|d)" }}
{{- if or (eq $s "") (ne (regexReplaceAll $re $s "" | trim) "") }}
{{- fail (printf "cannot read the duration %q to derive terminationGracePeriodSeconds; set terminationGracePeriodSeconds explicitly" $s) }}
{{- end }}
{{- $units := dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 }}
{{- $total := 0.0 }}
{{- range $part := regexFindAll $re $s -1 }}
{{- $n := regexFind "[0-9]+" $part | float64 }}
{{- $unit := regexReplaceAll "^[0-9]+\\s*" $part "" }}
{{- $total = addf $total (mulf $n (get $units $unit)) }}
{{- end }}
{{- ceil $total | int }}
{{- end }}

{{/* drain_timeout as configured, or the proxy's default. */}}
{{- define "iron-proxy.drainSeconds" -}}
{{- $limits := .Values.config.limits | default dict }}
{{- include "iron-proxy.seconds" (default "30s" (get $limits "drain_timeout")) }}
{{- end }}

{{/* terminationGracePeriodSeconds: set, or derived; always above the drain. */}}
{{- define "iron-proxy.gracePeriod" -}}
{{- $floor := add (int .Values.preStopSleepSeconds) (int (include "iron-proxy.drainSeconds" .)) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $floor 10 }}
{{- else }}
{{- $set := int .Values.terminationGracePeriodSeconds }}
{{- if le $set $floor }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + config.limits.drain_timeout (%d s), or in-flight requests are killed before they drain" $set $floor) }}
{{- end }}
{{- $set }}
{{- end }}
{{- end }}

{{/*
TOML values. toJson produces a basic string with escapes TOML shares
(\" \\ \n \uXXXX), and arrays of strings and numbers in TOML syntax.
*/}}
{{- define "iron-proxy.tomlPairs" -}}
{{- range $k, $v := . }}
{{- if not (kindIs "invalid" $v) }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{- end }}
{{- end }}

{{/*
iron-proxy.toml, rendered from values. Paths under /etc/iron-proxy are the
volume mounts of templates/deployment.yaml; no real secret value is ever
written here: each credential's `source` names a file of the credentials
Secret.
*/}}
{{- define "iron-proxy.toml" -}}
{{- $c := .Values.config }}
{{- $ca := $c.ca | default dict }}
{{- $upstream := $c.upstream | default dict }}
# iron-proxy.toml rendered by the iron-proxy Helm chart from its values.
# Change the values and `helm upgrade`; do not edit the ConfigMap by hand.

[listen]
proxy = {{ printf "0.0.0.0:%d" (int .Values.ports.proxy) | toJson }}
admin = {{ printf "0.0.0.0:%d" (int .Values.ports.admin) | toJson }}
{{- if .Values.admin.existingSecret }}

[admin]
token_file = {{ printf "%s/%s" (include "iron-proxy.adminDir" .) .Values.admin.tokenKey | toJson }}
{{- end }}

[ca]
cert = {{ printf "%s/%s" (include "iron-proxy.caDir" .) .Values.ca.certKey | toJson }}
key = {{ printf "%s/%s" (include "iron-proxy.caDir" .) .Values.ca.keyKey | toJson }}
generate_if_missing = false
{{- $trust := list }}
{{- range .Values.ca.extraTrustKeys }}
{{- $trust = append $trust (printf "%s/%s" (include "iron-proxy.caDir" $) .) }}
{{- end }}
extra_trust = {{ toJson $trust }}
{{- include "iron-proxy.tomlPairs" (omit $ca "cert" "key" "generate_if_missing" "extra_trust") }}

[upstream]
{{- include "iron-proxy.tomlPairs" (omit $upstream "resolve") }}
{{- with $upstream.resolve }}

[upstream.resolve]
{{- range $name, $addr := . }}
{{ toJson $name }} = {{ toJson $addr }}
{{- end }}
{{- end }}
{{- with $c.limits }}

[limits]
{{- include "iron-proxy.tomlPairs" . }}
{{- end }}
{{- with $c.reload }}

[reload]
{{- include "iron-proxy.tomlPairs" . }}
{{- end }}
{{- range $c.allow }}

[[allow]]
host = {{ required "config.allow[].host is required" .host | toJson }}
{{- if hasKey . "ports" }}
ports = {{ toJson .ports }}
{{- end }}
{{- end }}
{{- range $c.credential }}
{{- $name := required "config.credential[].name is required" .name | toString }}
{{- if not (regexMatch "^[-._a-zA-Z0-9]+$" $name) }}
{{- fail (printf "config.credential name %q must be usable as a Secret key (letters, digits, '-', '_', '.')" $name) }}
{{- end }}

[[credential]]
name = {{ toJson $name }}
stub = {{ required (printf "config.credential %s: stub is required" $name) .stub | toJson }}
source = { file = {{ printf "%s/%s" (include "iron-proxy.credentialsDir" $) $name | toJson }} }
hosts = {{ required (printf "config.credential %s: hosts is required" $name) .hosts | toJson }}
{{- include "iron-proxy.tomlPairs" (pick . "headers" "allow_plaintext" "require") }}
{{- end }}
{{- range $c.oauth_refresh }}

[[oauth_refresh]]
{{- include "iron-proxy.tomlPairs" . }}
{{- end }}
{{ end }}
