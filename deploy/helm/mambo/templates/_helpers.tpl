{{/* Names and labels. */}}
{{- define "mambo.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mambo.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mambo.labels" -}}
{{ include "mambo.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "mambo.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "mambo.fullname" .)) -}}
{{- end -}}

{{- define "mambo.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
One mambo container. Arguments (a dict): root (the chart's context), component, args (the `mambo`
command's arguments), port (the health port: /health and /ready, or the API's), extraEnv (optional).
The settings come from the ConfigMap (MAMBO_CONFIG) and the environment, the DSN from the Secret.
*/}}
{{- define "mambo.container" -}}
{{- $root := .root -}}
- name: {{ .component }}
  image: {{ include "mambo.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args:
    {{- toYaml .args | nindent 4 }}
  env:
    - name: MAMBO_CONFIG
      value: /etc/mambo/mambo.toml
    - name: MAMBO_KAFKA_BOOTSTRAP
      value: {{ $root.Values.kafka.bootstrap | quote }}
    - name: MAMBO_CLICKHOUSE_DSN
      valueFrom:
        secretKeyRef:
          name: {{ include "mambo.secretName" $root }}
          key: clickhouse-dsn
    - name: MAMBO_KAFKA__PROCESSING_GUARANTEE
      value: {{ $root.Values.kafka.processingGuarantee | quote }}
    - name: MAMBO_HEALTH_PORT
      value: {{ .port | quote }}
    - name: MAMBO_READY_MAX_LAG
      value: {{ $root.Values.health.readyMaxLag | quote }}
    {{- with .extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: {{ .portName | default "health" }}
      containerPort: {{ .port }}
      protocol: TCP
  {{- if .probes }}
  startupProbe:
    httpGet: {path: /health, port: {{ .portName | default "health" }}}
    periodSeconds: 5
    failureThreshold: 24
  livenessProbe:
    httpGet: {path: /health, port: {{ .portName | default "health" }}}
    periodSeconds: 15
    timeoutSeconds: 5
    failureThreshold: 3
  readinessProbe:
    httpGet: {path: /ready, port: {{ .portName | default "health" }}}
    periodSeconds: 10
    timeoutSeconds: 10
    failureThreshold: 3
  {{- end }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: settings
      mountPath: /etc/mambo/mambo.toml
      subPath: mambo.toml
      readOnly: true
    - name: data
      mountPath: /data
    {{- with .extraMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The pod-level fields every mambo pod shares (after `containers:`). */}}
{{- define "mambo.podCommon" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "mambo.volumes" -}}
- name: settings
  configMap:
    name: {{ include "mambo.fullname" .root }}-settings
- name: data
  emptyDir: {}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}
