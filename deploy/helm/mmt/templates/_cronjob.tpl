{{/*
A CronJob running one `mmt` subcommand with the shared environment, volumes and
restricted securityContext. Arguments: root, component, schedule, args, resources.
*/}}
{{- define "mmt.cronjob" -}}
{{- $root := .root -}}
apiVersion: batch/v1
kind: CronJob
metadata:
  name: {{ include "mmt.fullname" $root }}-{{ .component }}
  labels:
    {{- include "mmt.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  schedule: {{ .schedule | quote }}
  timeZone: Etc/UTC
  # Never two at once: a slow run is not overtaken by the next one.
  concurrencyPolicy: Forbid
  startingDeadlineSeconds: 600
  successfulJobsHistoryLimit: 3
  failedJobsHistoryLimit: 3
  jobTemplate:
    spec:
      backoffLimit: 2
      template:
        metadata:
          labels:
            {{- include "mmt.labels" $root | nindent 12 }}
            app.kubernetes.io/component: {{ .component }}
        spec:
          restartPolicy: Never
          serviceAccountName: {{ include "mmt.serviceAccountName" $root }}
          automountServiceAccountToken: false
          securityContext:
            {{- include "mmt.podSecurityContext" $root | nindent 12 }}
          {{- with include "mmt.scheduling" $root | trim }}{{ . | nindent 10 }}{{ end }}
          containers:
            - name: {{ .component }}
              image: {{ include "mmt.image" $root }}
              imagePullPolicy: {{ $root.Values.image.pullPolicy }}
              args:
                {{- toYaml .args | nindent 16 }}
              env:
                {{- include "mmt.env" (dict "root" $root "component" .component) | trim | nindent 16 }}
              resources:
                {{- toYaml .resources | nindent 16 }}
              securityContext:
                {{- include "mmt.containerSecurityContext" $root | nindent 16 }}
              volumeMounts:
                {{- include "mmt.volumeMounts" $root | nindent 16 }}
          volumes:
            {{- include "mmt.volumes" $root | nindent 12 }}
{{- end -}}
