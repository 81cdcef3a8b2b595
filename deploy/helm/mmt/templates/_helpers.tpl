{{/* Names and labels. */}}
{{- define "mmt.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mmt.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component (api, worker, retention, dlq-reprocessor). */}}
{{- define "mmt.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mmt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mmt.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mmt.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The AUDIT_LOG_FILE the operator asked for (env wins over auditLogs.mountPath/fileName). */}}
{{- define "mmt.auditFile" -}}
{{- default (printf "%s/%s" .Values.auditLogs.mountPath .Values.auditLogs.fileName) (get (default (dict) .Values.env) "AUDIT_LOG_FILE") | toString -}}
{{- end -}}

{{- define "mmt.auditClaim" -}}
{{- default (printf "%s-audit" (include "mmt.fullname" .)) .Values.auditLogs.existingClaim -}}
{{- end -}}

{{/*
Refusals: a production release without TLS or without the audit volume would
only fail later, at start-up (`mmt check`), pod by pod; say it at render time.
*/}}
{{- define "mmt.guards" -}}
{{- $env := toString (default "" .Values.env.ENV) -}}
{{- if eq $env "prod" -}}
{{- if not .Values.tls.enabled -}}
{{- fail "env.ENV=prod requires tls.enabled=true: production serves the API over TLS only (SSL_CERT_FILE/SSL_KEY_FILE from the tls.secretName Secret). Set --set tls.enabled=true." -}}
{{- end -}}
{{- if not (or .Values.encryption.enabled .Values.encryption.transitKey) -}}
{{- fail "env.ENV=prod requires encryption.enabled=true (or encryption.transitKey): transcripts and uploads are encrypted at rest in production (MMT_ENCRYPTION_KEYS from the encryption.secretName Secret, or Vault's transit key). Set --set encryption.enabled=true." -}}
{{- end -}}
{{- if not .Values.auditLogs.enabled -}}
{{- fail "env.ENV=prod requires auditLogs.enabled=true: the audit trail is mandatory in production and must live on the persistent volume. Set --set auditLogs.enabled=true." -}}
{{- end -}}
{{- end -}}
{{- if and .Values.encryption.enabled .Values.encryption.transitKey -}}
{{- fail "encryption.enabled (the keyring) and encryption.transitKey (Vault transit) are both set: choose one (--set encryption.enabled=false for transit)." -}}
{{- end -}}
{{- if and .Values.encryption.transitKey (not .Values.vault.enabled) -}}
{{- fail "encryption.transitKey needs vault.enabled=true: the transit engine is Vault's." -}}
{{- end -}}
{{- if and (or .Values.vault.databaseSecretPath .Values.vault.rabbitmqSecretPath) (not .Values.vault.enabled) -}}
{{- fail "vault.databaseSecretPath and vault.rabbitmqSecretPath need vault.enabled=true." -}}
{{- end -}}
{{- if and .Values.auditLogs.enabled (not (isAbs (include "mmt.auditFile" .))) -}}
{{- fail "env.AUDIT_LOG_FILE must be an absolute path: its folder is where the audit volume is mounted." -}}
{{- end -}}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicas) (int .Values.keda.maxReplicas)) -}}
{{- fail "keda.minReplicas must not exceed keda.maxReplicas." -}}
{{- end -}}
{{- end -}}

{{/*
The environment of every MMT container: what the chart derives from its blocks,
overridden by .Values.env, sorted by name; then the Secret references and extraEnv.
*/}}
{{- define "mmt.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $derived := dict -}}
{{- $_ := set $derived "MMT_MODEL_DIR" "/opt/mmt/model" -}}
{{- $_ := set $derived "ORT_DYLIB_PATH" "/opt/mmt/lib/libonnxruntime.so.1.31.1" -}}
{{- $_ := set $derived "RETENTION_DAYS" (toString $v.retention.days) -}}
{{- with $v.rabbitmq.host -}}
{{- $_ := set $derived "EXTERNAL_RABBITMQ_ENABLED" "true" -}}
{{- $_ := set $derived "EXTERNAL_RABBITMQ_HOST" (printf "%s:%v" . $v.rabbitmq.port) -}}
{{- $_ := set $derived "MMT_RABBITMQ_VHOST" $v.rabbitmq.vhost -}}
{{- $_ := set $derived "MMT_RABBITMQ_USER" $v.rabbitmq.user -}}
{{- $_ := set $derived "MMT_RABBITMQ_QUEUE" $v.rabbitmq.queue -}}
{{- $_ := set $derived "MMT_RABBITMQ_TLS" (toString $v.rabbitmq.tls) -}}
{{- end -}}
{{- with $v.redis.host -}}
{{- $_ := set $derived "EXTERNAL_REDIS_ENABLED" "true" -}}
{{- $_ := set $derived "EXTERNAL_REDIS_HOST" (printf "%s:%v" . $v.redis.port) -}}
{{- $_ := set $derived "MMT_REDIS_TLS" (toString $v.redis.tls) -}}
{{- end -}}
{{- if $v.tls.enabled -}}
{{- $_ := set $derived "ENFORCE_TLS_IN_PRODUCTION" "true" -}}
{{- $_ := set $derived "SSL_CERT_FILE" (printf "%s/tls.crt" $v.tls.mountPath) -}}
{{- $_ := set $derived "SSL_KEY_FILE" (printf "%s/tls.key" $v.tls.mountPath) -}}
{{- end -}}
{{- if $v.encryption.enabled -}}
{{- $_ := set $derived "MMT_ENCRYPTION_KEYS" (printf "%s/%s" $v.encryption.mountPath $v.encryption.key) -}}
{{- end -}}
{{- with $v.encryption.transitKey -}}
{{- $_ := set $derived "MMT_VAULT_TRANSIT_KEY" . -}}
{{- $_ := set $derived "MMT_VAULT_TRANSIT_MOUNT" $v.encryption.transitMount -}}
{{- end -}}
{{- if $v.vault.enabled -}}
{{- $_ := set $derived "VAULT_ADDR" $v.vault.address -}}
{{- with $v.vault.databaseSecretPath -}}
{{- $_ := set $derived "MMT_VAULT_DATABASE_SECRET_PATH" . -}}
{{- end -}}
{{- with $v.vault.rabbitmqSecretPath -}}
{{- $_ := set $derived "MMT_VAULT_RABBITMQ_SECRET_PATH" . -}}
{{- end -}}
{{- end -}}
{{- /* Not `merge`: it would let a derived "true" replace an operator's false. */ -}}
{{- $all := $derived -}}
{{- range $name, $value := (default (dict) $v.env) -}}
{{- $_ := set $all $name $value -}}
{{- end -}}
{{- $audit := "" -}}
{{- if $v.auditLogs.enabled -}}
{{- $audit = include "mmt.auditFile" $root -}}
{{- $_ := unset $all "AUDIT_LOG_FILE" -}}
{{- end }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- range $name := keys $all | sortAlpha }}
- name: {{ $name }}
  value: {{ get $all $name | toString | quote }}
{{- end }}
{{- if $audit }}
{{- /* One hash chain per pod: audit.log -> audit-<pod name>.log (Kubernetes expands $(POD_NAME)). */}}
{{- $ext := ext $audit }}
- name: AUDIT_LOG_FILE
  {{- if $v.auditLogs.perPod }}
  value: {{ printf "%s-$(POD_NAME)%s" (trimSuffix $ext $audit) $ext | quote }}
  {{- else }}
  value: {{ $audit | quote }}
  {{- end }}
{{- end }}
{{- range $name, $key := $v.secrets.keys }}
{{- if $key }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.secrets.name }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- if $v.vault.enabled }}
- name: MMT_VAULT_ROLE_ID
  valueFrom:
    secretKeyRef:
      name: {{ $v.secrets.name }}
      key: {{ $v.vault.roleIdKey }}
- name: MMT_VAULT_SECRET_ID
  valueFrom:
    secretKeyRef:
      name: {{ $v.secrets.name }}
      key: {{ $v.vault.secretIdKey }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The restricted securityContext of every container (Pod Security "restricted"). */}}
{{- define "mmt.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "mmt.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Volumes every MMT pod mounts: scratch space (the root filesystem is read-only), TLS, audit. */}}
{{- define "mmt.volumes" -}}
- name: tmp
  emptyDir: {}
- name: data
  emptyDir: {}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- if .Values.encryption.enabled }}
- name: keyring
  secret:
    secretName: {{ .Values.encryption.secretName }}
    defaultMode: 0440
    items:
      - key: {{ .Values.encryption.key }}
        path: {{ .Values.encryption.key }}
{{- end }}
{{- if .Values.auditLogs.enabled }}
- name: audit
  persistentVolumeClaim:
    claimName: {{ include "mmt.auditClaim" . }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "mmt.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/mmt
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ .Values.tls.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.encryption.enabled }}
- name: keyring
  mountPath: {{ .Values.encryption.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.auditLogs.enabled }}
- name: audit
  mountPath: {{ dir (include "mmt.auditFile" .) }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Scheduling constraints shared by every pod. */}}
{{- define "mmt.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy egress: DNS and the external services that are configured. */}}
{{- define "mmt.egress" -}}
# DNS
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- $v := .Values }}
{{- range $name := list "rabbitmq" "redis" "database" "fhir" "vault" }}
{{- $svc := get $v $name }}
{{- if or (not (hasKey $svc "enabled")) $svc.enabled }}
# {{ $name }}
- to:
    - ipBlock:
        cidr: {{ $svc.cidr }}
  ports:
    - {port: {{ $svc.port }}, protocol: TCP}
{{- end }}
{{- end }}
{{- end }}
