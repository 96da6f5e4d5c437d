{{/* vim: set filetype=mustache: */}}

{{- define "spendstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "spendstream.fullname" -}}
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

{{- define "spendstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "spendstream.labels" -}}
helm.sh/chart: {{ include "spendstream.chart" . }}
{{ include "spendstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spendstream
{{- end }}

{{- define "spendstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spendstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels and selector labels of one component: include with (dict "root" $ "component" "sink"). */}}
{{- define "spendstream.componentLabels" -}}
{{ include "spendstream.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "spendstream.componentSelectorLabels" -}}
{{ include "spendstream.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "spendstream.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{- define "spendstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spendstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ settings and checks */}}

{{- define "spendstream.saslEnabled" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "spendstream.tlsEnabled" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/* Whether the pods read the ClickHouse password from a Secret. */}}
{{- define "spendstream.clickhousePasswordSet" -}}
{{- if .Values.existingSecret }}
{{- if .Values.secretKeys.clickhousePassword }}true{{ end }}
{{- else if .Values.clickhouse.password }}true{{ end }}
{{- end }}

{{/* The Secret the pods read passwords from ("" when there is none to read). */}}
{{- define "spendstream.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if or (include "spendstream.saslEnabled" .) .Values.clickhouse.password }}
{{- include "spendstream.fullname" . }}
{{- end }}
{{- end }}

{{/* Refuses values the application would refuse at start-up, at install time instead. */}}
{{- define "spendstream.validate" -}}
{{- $v := .Values }}
{{- if not $v.kafka.bootstrap }}
{{- fail "kafka.bootstrap is required (the chart never uses the embedded local broker)" }}
{{- end }}
{{- if not $v.clickhouse.url }}
{{- fail "clickhouse.url is required (the chart never uses the embedded local server)" }}
{{- end }}
{{- if not (or (hasPrefix "http://" $v.clickhouse.url) (hasPrefix "https://" $v.clickhouse.url)) }}
{{- fail "clickhouse.url must start with http:// or https://" }}
{{- end }}
{{- if include "spendstream.saslEnabled" . }}
{{- if not (and $v.kafka.sasl.mechanism $v.kafka.sasl.username) }}
{{- fail (printf "kafka.sasl.mechanism and kafka.sasl.username are required with %s" $v.kafka.securityProtocol) }}
{{- end }}
{{- if not (or $v.existingSecret $v.kafka.sasl.password) }}
{{- fail (printf "kafka.sasl.password (or existingSecret) is required with %s" $v.kafka.securityProtocol) }}
{{- end }}
{{- if and $v.existingSecret (not $v.secretKeys.kafkaSaslPassword) }}
{{- fail "secretKeys.kafkaSaslPassword is required with a SASL protocol" }}
{{- end }}
{{- end }}
{{- if and (not $v.secretKeys.clickhousePassword) $v.clickhouse.password }}
{{- fail "secretKeys.clickhousePassword must name the key of clickhouse.password" }}
{{- end }}
{{- if and $v.existingSecret (or $v.kafka.sasl.password $v.clickhouse.password) }}
{{- fail "existingSecret is set: leave kafka.sasl.password and clickhouse.password empty" }}
{{- end }}
{{- if $v.kafka.tls.existingSecret }}
{{- if not (include "spendstream.tlsEnabled" .) }}
{{- fail (printf "kafka.tls.existingSecret is set but kafka.securityProtocol is %s (use SSL or SASL_SSL)" $v.kafka.securityProtocol) }}
{{- end }}
{{- if ne (not $v.kafka.tls.certKey) (not $v.kafka.tls.keyKey) }}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey: give both or neither" }}
{{- end }}
{{- end }}
{{- range $name, $_ := $v.extraConfig }}
{{- if not (hasPrefix "SPENDSTREAM_" $name) }}
{{- fail (printf "extraConfig.%s: only SPENDSTREAM_* settings belong here (use <component>.extraEnv)" $name) }}
{{- end }}
{{- if has $name (list "SPENDSTREAM_KAFKA_SASL_PASSWORD" "SPENDSTREAM_CLICKHOUSE_PASSWORD") }}
{{- fail (printf "extraConfig.%s: passwords go into the Secret (kafka.sasl.password, clickhouse.password or existingSecret), never into the ConfigMap" $name) }}
{{- end }}
{{- end }}
{{- if and $v.sink.metrics.enabled (lt (int $v.sink.metrics.port) 1) }}
{{- fail "sink.metrics.port must be a TCP port when sink.metrics.enabled" }}
{{- end }}
{{- end }}

{{/* ClickHouse settings: everything `spendstream migrate` reads. */}}
{{- define "spendstream.clickhouseConfig" -}}
SPENDSTREAM_CLICKHOUSE_URL: {{ .Values.clickhouse.url | quote }}
SPENDSTREAM_CLICKHOUSE_USER: {{ .Values.clickhouse.user | quote }}
SPENDSTREAM_CLICKHOUSE_DATABASE: {{ .Values.clickhouse.database | quote }}
{{- with .Values.clickhouse.cluster }}
SPENDSTREAM_CLICKHOUSE_CLUSTER: {{ . | quote }}
{{- end }}
SPENDSTREAM_RETENTION_DAYS: {{ .Values.clickhouse.retentionDays | int64 | quote }}
SPENDSTREAM_DEDUP_HORIZON_HOURS: {{ .Values.clickhouse.dedupHorizonHours | int64 | quote }}
SPENDSTREAM_LOG_LEVEL: {{ .Values.logLevel | quote }}
SPENDSTREAM_TIMEZONE: {{ .Values.timezone | quote }}
{{- end }}

{{/* Every non-secret setting of the worker and the sink (the ConfigMap's data). */}}
{{- define "spendstream.config" -}}
{{- $v := .Values }}
{{- include "spendstream.clickhouseConfig" . }}
SPENDSTREAM_KAFKA_BOOTSTRAP: {{ $v.kafka.bootstrap | quote }}
SPENDSTREAM_KAFKA_SECURITY_PROTOCOL: {{ $v.kafka.securityProtocol | quote }}
{{- if include "spendstream.saslEnabled" . }}
SPENDSTREAM_KAFKA_SASL_MECHANISM: {{ $v.kafka.sasl.mechanism | quote }}
SPENDSTREAM_KAFKA_SASL_USERNAME: {{ $v.kafka.sasl.username | quote }}
{{- end }}
{{- with $v.kafka.tls }}
{{- if .existingSecret }}
{{- if .caKey }}
SPENDSTREAM_KAFKA_TLS_CA: {{ printf "%s/ca.crt" .mountPath | quote }}
{{- end }}
{{- if .certKey }}
SPENDSTREAM_KAFKA_TLS_CERT: {{ printf "%s/tls.crt" .mountPath | quote }}
SPENDSTREAM_KAFKA_TLS_KEY: {{ printf "%s/tls.key" .mountPath | quote }}
{{- end }}
{{- end }}
{{- end }}
SPENDSTREAM_EVENT_PARTITIONS: {{ $v.kafka.eventPartitions | int64 | quote }}
SPENDSTREAM_REPLICATION_FACTOR: {{ $v.kafka.replicationFactor | int64 | quote }}
SPENDSTREAM_TOPIC_EVENTS: {{ $v.topics.events | quote }}
SPENDSTREAM_TOPIC_DEADLETTER: {{ $v.topics.deadletter | quote }}
SPENDSTREAM_TOPIC_ALERTS: {{ $v.topics.alerts | quote }}
SPENDSTREAM_TOPIC_BUDGETS: {{ $v.topics.budgets | quote }}
SPENDSTREAM_TOPIC_ENFORCEMENT: {{ $v.topics.enforcement | quote }}
SPENDSTREAM_TOPIC_ROLLUPS: {{ $v.topics.rollups | quote }}
SPENDSTREAM_WORKER_ID: {{ $v.worker.id | quote }}
SPENDSTREAM_ALLOWED_LATENESS_S: {{ $v.worker.allowedLatenessSeconds | int64 | quote }}
SPENDSTREAM_WORKER_FLUSH_SECONDS: {{ $v.worker.flushSeconds | toString | quote }}
SPENDSTREAM_WORKER_FETCH_MIB: {{ $v.worker.fetchMiB | int64 | quote }}
SPENDSTREAM_SINK_GROUP: {{ $v.sink.group | quote }}
SPENDSTREAM_SINK_BATCH_ROWS: {{ $v.sink.batchRows | int64 | quote }}
SPENDSTREAM_SINK_FLUSH_SECONDS: {{ $v.sink.flushSeconds | toString | quote }}
SPENDSTREAM_SINK_DRAIN_SECONDS: {{ $v.sink.drainSeconds | toString | quote }}
SPENDSTREAM_METRICS_PORT: {{ ternary ($v.sink.metrics.port | int64) 0 (and $v.sink.enabled $v.sink.metrics.enabled) | quote }}
{{- range $name, $value := $v.extraConfig }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The chart-managed Secret's data (passwords only, base64). */}}
{{- define "spendstream.secretData" -}}
{{- if include "spendstream.saslEnabled" . }}
{{ .Values.secretKeys.kafkaSaslPassword }}: {{ .Values.kafka.sasl.password | toString | b64enc | quote }}
{{- end }}
{{- with .Values.clickhouse.password }}
{{ $.Values.secretKeys.clickhousePassword }}: {{ . | toString | b64enc | quote }}
{{- end }}
{{- end }}

{{/* Password variables from the Secret: include with (dict "root" $ "secret" NAME "kafka" BOOL). */}}
{{- define "spendstream.secretEnv" -}}
{{- $v := .root.Values }}
{{- if and .kafka (include "spendstream.saslEnabled" .root) }}
- name: SPENDSTREAM_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ $v.secretKeys.kafkaSaslPassword }}
{{- end }}
{{- if include "spendstream.clickhousePasswordSet" .root }}
- name: SPENDSTREAM_CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ $v.secretKeys.clickhousePassword }}
{{- end }}
{{- end }}

{{/* Pod annotations that roll the pods when their settings change. */}}
{{- define "spendstream.checksums" -}}
checksum/config: {{ include "spendstream.config" . | sha256sum }}
{{- if and (not .Values.existingSecret) (include "spendstream.secretName" .) }}
checksum/secret: {{ include "spendstream.secretData" . | sha256sum }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------------ pod parts */}}

{{- define "spendstream.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.dataVolume.sizeLimit }}
{{- with .Values.kafka.tls }}
{{- if .existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 0440
    items:
      {{- if .caKey }}
      - key: {{ .caKey }}
        path: ca.crt
      {{- end }}
      {{- if .certKey }}
      - key: {{ .certKey }}
        path: tls.crt
      - key: {{ .keyKey }}
        path: tls.key
      {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "spendstream.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: {{ .Values.dataVolume.mountPath }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ .Values.kafka.tls.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Scheduling and identity shared by the worker and sink pods: include with (dict "root" $ "c" COMPONENT_VALUES). */}}
{{- define "spendstream.podScheduling" -}}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
