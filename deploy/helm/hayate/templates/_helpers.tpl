{{/* Names: <release>-hayate, or the release name when it holds "hayate". */}}
{{- define "hayate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hayate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "hayate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hayate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hayate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "hayate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "hayate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hayate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "hayate.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The port of an address: "0.0.0.0:6969" and "[::]:6969" give 6969. */}}
{{- define "hayate.portOf" -}}
{{- regexReplaceAll "^.*:([0-9]+)$" . "${1}" -}}
{{- end -}}

{{- define "hayate.udpPort" -}}
{{- include "hayate.portOf" (first .Values.config.udp.bind) -}}
{{- end -}}

{{- define "hayate.httpPort" -}}
{{- include "hayate.portOf" (first .Values.config.http.bind) -}}
{{- end -}}

{{- define "hayate.metricsPort" -}}
{{- include "hayate.portOf" .Values.config.metrics.bind -}}
{{- end -}}

{{/* Where secrets are mounted in the pod: files connection-id-secret and redis-password. */}}
{{- define "hayate.secretsDir" -}}/etc/hayate/secrets{{- end -}}

{{- define "hayate.connectionIdSecretName" -}}
{{- default (printf "%s-connection-id" (include "hayate.fullname" .)) .Values.secrets.connectionIdSecret.existingSecret -}}
{{- end -}}

{{- define "hayate.redisPasswordSecretName" -}}
{{- default (printf "%s-redis" (include "hayate.fullname" .)) .Values.secrets.redisPassword.existingSecret -}}
{{- end -}}

{{/* Whether a Redis password is mounted: replication on, and a Secret or a value given. */}}
{{- define "hayate.redisPassword" -}}
{{- $p := .Values.secrets.redisPassword -}}
{{- if and .Values.config.replication.enabled (or $p.existingSecret $p.value) -}}true{{- end -}}
{{- end -}}

{{/*
The config hayate runs: values.config, with the connection-id key as a file, and the
replication section only when it is enabled (with the Redis password as a file).
*/}}
{{- define "hayate.config" -}}
{{- $config := omit .Values.config "replication" | deepCopy -}}
{{- $udp := deepCopy $config.udp -}}
{{- $_ := set $udp "connection_id_secret_file" (printf "%s/connection-id-secret" (include "hayate.secretsDir" .)) -}}
{{- $_ := set $config "udp" $udp -}}
{{- if .Values.config.replication.enabled -}}
{{- $replication := deepCopy .Values.config.replication -}}
{{- if include "hayate.redisPassword" . -}}
{{- $redis := deepCopy $replication.redis -}}
{{- $_ := set $redis "password_file" (printf "%s/redis-password" (include "hayate.secretsDir" .)) -}}
{{- $_ := set $replication "redis" $redis -}}
{{- end -}}
{{- $_ := set $config "replication" $replication -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Refusals that the schema cannot say as clearly. */}}
{{- define "hayate.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.config.replication.enabled) -}}
{{- fail "replicaCount > 1 needs config.replication.enabled: separate nodes without replication would each hold part of every swarm" -}}
{{- end -}}
{{- if not .Values.config.metrics.enabled -}}
{{- fail "config.metrics.enabled must be true: the chart's probes and metrics Service use it" -}}
{{- end -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSleepSeconds) 2) -}}
{{- fail "terminationGracePeriodSeconds must exceed preStopSleepSeconds by more than 2: hayate needs up to a second to stop after the preStop sleep" -}}
{{- end -}}
{{- if not (or .Values.config.udp.enabled .Values.config.http.enabled) -}}
{{- fail "config.udp.enabled and config.http.enabled are both false: nothing to serve" -}}
{{- end -}}
{{- if .Values.config.replication.enabled -}}
{{- $redis := .Values.config.replication.redis -}}
{{- if not (or $redis.url $redis.sentinel.addresses $redis.cluster.nodes) -}}
{{- fail "config.replication.enabled needs config.replication.redis.url, redis.sentinel.addresses or redis.cluster.nodes" -}}
{{- end -}}
{{- if and $redis.sentinel.addresses (not $redis.sentinel.master_name) -}}
{{- fail "config.replication.redis.sentinel.addresses needs sentinel.master_name" -}}
{{- end -}}
{{- end -}}
{{- end -}}
