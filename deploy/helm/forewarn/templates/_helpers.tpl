{{/*
Names, labels and the environment every Forewarn container shares.
*/}}

{{- define "forewarn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: the release name alone when it already says forewarn. Objects add a
suffix (-scoring, -learner, -feedback), so it is kept to 40 characters: a scoring pod's name
(<fullname>-scoring-<ordinal>) stays a valid DNS label and a short instance id.
*/}}
{{- define "forewarn.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "forewarn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "scoring") */}}
{{- define "forewarn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "forewarn.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
A pod's labels: the selector labels and the Prometheus job its metrics go to (the PodMonitor's
jobLabel), forewarn-scoring, forewarn-learner or forewarn-feedback as in deploy/compose.yaml,
whatever the release is called (the alert rules match job=~".*forewarn.*").
*/}}
{{- define "forewarn.podLabels" -}}
{{ include "forewarn.selectorLabels" . }}
forewarn.dev/job: forewarn-{{ .component }}
{{- end }}

{{/* Every object's labels: (dict "ctx" $ "component" "scoring") */}}
{{- define "forewarn.labels" -}}
helm.sh/chart: {{ include "forewarn.chart" .ctx }}
{{ include "forewarn.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: forewarn
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{/* The labels every Forewarn pod of this release has (the PodMonitor selects by them) */}}
{{- define "forewarn.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "forewarn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "forewarn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "forewarn.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "forewarn.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "forewarn.scoringName" -}}
{{- printf "%s-scoring" (include "forewarn.fullname" .) }}
{{- end }}

{{- define "forewarn.headlessServiceName" -}}
{{- printf "%s-scoring-headless" (include "forewarn.fullname" .) }}
{{- end }}

{{- define "forewarn.rulebookConfigMap" -}}
{{- if .Values.rulebook.existingConfigMap }}
{{- .Values.rulebook.existingConfigMap }}
{{- else }}
{{- printf "%s-rulebook" (include "forewarn.fullname" .) }}
{{- end }}
{{- end }}

{{- define "forewarn.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "forewarn.tls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{- define "forewarn.rulebookEnabled" -}}
{{- if or .Values.rulebook.inline .Values.rulebook.existingConfigMap }}true{{ end }}
{{- end }}

{{/*
Checks the schema cannot express (it sees one value at a time); rendered by the StatefulSet.
*/}}
{{- define "forewarn.validate" -}}
{{- $partitions := int .Values.topics.partitions }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) $partitions) }}
{{- fail (printf "keda.minReplicaCount (%d) is above topics.partitions (%d): a worker beyond the partition count sits idle and never gets ready" (int .Values.keda.minReplicaCount) $partitions) }}
{{- end }}
{{- if and (not .Values.keda.enabled) (gt (int .Values.scoring.replicas) $partitions) }}
{{- fail (printf "scoring.replicas (%d) is above topics.partitions (%d): a worker beyond the partition count sits idle and never gets ready, which stalls rolling updates" (int .Values.scoring.replicas) $partitions) }}
{{- end }}
{{- if and .Values.feedback.enabled (gt (int .Values.feedback.replicas) $partitions) }}
{{- fail (printf "feedback.replicas (%d) is above topics.partitions (%d), the partitions of the feedback plane's ledger input" (int .Values.feedback.replicas) $partitions) }}
{{- end }}
{{- if and .Values.rulebook.inline .Values.rulebook.existingConfigMap }}
{{- fail "set rulebook.inline or rulebook.existingConfigMap, not both" }}
{{- end }}
{{- if include "forewarn.sasl" . }}
{{- $_ := required "kafka.sasl.username is required when kafka.securityProtocol is SASL_*" .Values.kafka.sasl.username }}
{{- $_ := required "kafka.sasl.existingSecret (a Secret holding the SASL password) is required when kafka.securityProtocol is SASL_*" .Values.kafka.sasl.existingSecret }}
{{- end }}
{{- end }}

{{/*
The environment every Forewarn container shares: Kafka, topics, the rulebook, the log level.
The SASL password only ever comes from the existing Secret.
*/}}
{{- define "forewarn.env" -}}
- name: FOREWARN_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: FOREWARN_GROUP_ID
  value: {{ .Values.kafka.groupId | quote }}
- name: FOREWARN_KAFKA__SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if include "forewarn.sasl" . }}
- name: FOREWARN_KAFKA__SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: FOREWARN_KAFKA__SASL_USERNAME
  value: {{ .Values.kafka.sasl.username | quote }}
- name: FOREWARN_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret | quote }}
      key: {{ .Values.kafka.sasl.passwordKey | quote }}
{{- end }}
{{- if and (include "forewarn.tls" .) .Values.kafka.tls.caSecret }}
- name: FOREWARN_KAFKA__SSL_CA_LOCATION
  value: {{ printf "/etc/forewarn/kafka-ca/%s" .Values.kafka.tls.caKey | quote }}
{{- end }}
{{- with .Values.kafka.extra }}
- name: FOREWARN_KAFKA__EXTRA
  value: {{ toJson . | quote }}
{{- end }}
- name: FOREWARN_TOPICS__PARTITIONS
  value: {{ int .Values.topics.partitions | toString | quote }}
- name: FOREWARN_TOPICS__REPLICATION_FACTOR
  value: {{ int .Values.topics.replicationFactor | toString | quote }}
- name: FOREWARN_TOPICS__JOURNEY_EVENTS
  value: {{ .Values.topics.journeyEvents | quote }}
- name: FOREWARN_TOPICS__CUSTOMER_PROFILES
  value: {{ .Values.topics.customerProfiles | quote }}
- name: FOREWARN_TOPICS__ACTIONS
  value: {{ .Values.topics.actions | quote }}
- name: FOREWARN_TOPICS__DECISIONS
  value: {{ .Values.topics.decisions | quote }}
- name: FOREWARN_TOPICS__DLQ
  value: {{ .Values.topics.dlq | quote }}
- name: FOREWARN_TOPICS__STATE
  value: {{ .Values.topics.state | quote }}
- name: FOREWARN_TOPICS__OUTCOMES
  value: {{ .Values.topics.outcomes | quote }}
- name: FOREWARN_TOPICS__MILESTONES
  value: {{ .Values.topics.milestones | quote }}
- name: FOREWARN_TOPICS__FEATURE_ROWS
  value: {{ .Values.topics.featureRows | quote }}
- name: FOREWARN_TOPICS__MODELS
  value: {{ .Values.topics.models | quote }}
- name: FOREWARN_TOPICS__OUTCOMES_DLQ
  value: {{ .Values.topics.outcomesDlq | quote }}
- name: FOREWARN_TOPICS__FEEDBACK
  value: {{ .Values.topics.feedback | quote }}
- name: FOREWARN_TOPICS__DELIVERY_HELD
  value: {{ .Values.topics.deliveryHeld | quote }}
- name: FOREWARN_TOPICS__DELIVERY_DLQ
  value: {{ .Values.topics.deliveryDlq | quote }}
{{- if include "forewarn.rulebookEnabled" . }}
- name: FOREWARN_RULES_PATH
  value: {{ printf "/etc/forewarn/rules/%s" .Values.rulebook.key | quote }}
{{- end }}
- name: FOREWARN_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/* Volume mounts every Forewarn container shares */}}
{{- define "forewarn.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: work
  mountPath: /var/lib/forewarn
{{- if include "forewarn.rulebookEnabled" . }}
- name: rulebook
  mountPath: /etc/forewarn/rules
  readOnly: true
{{- end }}
{{- if and (include "forewarn.tls" .) .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/forewarn/kafka-ca
  readOnly: true
{{- end }}
{{- end }}

{{/* Volumes every Forewarn pod shares */}}
{{- define "forewarn.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
- name: work
  emptyDir:
    sizeLimit: 1Gi
{{- if include "forewarn.rulebookEnabled" . }}
- name: rulebook
  configMap:
    name: {{ include "forewarn.rulebookConfigMap" . }}
    items:
      - key: {{ .Values.rulebook.key | quote }}
        path: {{ .Values.rulebook.key | quote }}
{{- end }}
{{- if and (include "forewarn.tls" .) .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret | quote }}
    items:
      - key: {{ .Values.kafka.tls.caKey | quote }}
        path: {{ .Values.kafka.tls.caKey | quote }}
{{- end }}
{{- end }}

{{/* The pod-level settings every Forewarn pod shares */}}
{{- define "forewarn.podSpecCommon" -}}
serviceAccountName: {{ include "forewarn.serviceAccountName" . }}
automountServiceAccountToken: false
# no FOREWARN_*-looking variables from Services (a Service named forewarn-http would set
# FOREWARN_HTTP_PORT=tcp://...): the settings come from the env below alone
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}
