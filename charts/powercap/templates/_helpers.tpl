{{/* Labels every object carries; component: the app.kubernetes.io/name of its part. */}}
{{- define "powercap.labels" -}}
app.kubernetes.io/part-of: powercap
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The powercap image: the digest when set, else the tag, else the appVersion. */}}
{{- define "powercap.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* The config document as the extender and the controller read it: .Values.config, or the
example files/powercap.yaml when that is empty, with the scheduler name, the controller's
dry run and its Lease namespace from the values and the release, and power.url and
power.selector from .Values.prometheus when set. */}}
{{- define "powercap.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- if not $cfg -}}
{{- $cfg = .Files.Get "files/powercap.yaml" | fromYaml -}}
{{- end -}}
{{- $_ := set $cfg "apiVersion" (get $cfg "apiVersion" | default "powercap.io/v1alpha1") -}}
{{- $_ = set $cfg "kind" (get $cfg "kind" | default "PowercapConfig") -}}
{{- $sched := get $cfg "scheduler" | default dict -}}
{{- $_ = set $sched "name" .Values.scheduler.name -}}
{{- $_ = set $cfg "scheduler" $sched -}}
{{- $ctl := get $cfg "controller" | default dict -}}
{{- $_ = set $ctl "dryRun" .Values.controller.dryRun -}}
{{- $lease := get $ctl "lease" | default dict -}}
{{- $_ = set $lease "namespace" .Release.Namespace -}}
{{- $_ = set $ctl "lease" $lease -}}
{{- $_ = set $cfg "controller" $ctl -}}
{{- with .Values.prometheus -}}
{{- if or .url .selector -}}
{{- $power := get $cfg "power" | default dict -}}
{{- if .url }}{{ $_ = set $power "url" .url }}{{ end -}}
{{- if .selector }}{{ $_ = set $power "selector" .selector }}{{ end -}}
{{- $_ = set $cfg "power" $power -}}
{{- end -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end }}

{{/* PowerProfile files: .Values.profileFiles, or the example's with the example config. */}}
{{- define "powercap.profiles" -}}
{{- if .Values.profileFiles -}}
{{- range $name, $doc := .Values.profileFiles }}
{{ $name }}: |
{{- if kindIs "string" $doc }}
{{ $doc | indent 2 }}
{{- else }}
{{ toYaml $doc | indent 2 }}
{{- end }}
{{- end }}
{{- else if not .Values.config -}}
{{- range $path, $_ := .Files.Glob "files/profiles/*.yaml" }}
{{ base $path }}: |
{{ $.Files.Get $path | indent 2 }}
{{- end }}
{{- end -}}
{{- end }}

{{/* The KubeSchedulerConfiguration: files/kube-scheduler.yaml (the sidecar on loopback) or
files/kube-scheduler-mtls.yaml (the extender apart, over mutual TLS), with the scheduler name
and its Lease in the release namespace. */}}
{{- define "powercap.schedulerConfig" -}}
{{- $file := ternary "files/kube-scheduler-mtls.yaml" "files/kube-scheduler.yaml" .Values.extender.tls.enabled -}}
{{- $cfg := .Files.Get $file | fromYaml -}}
{{- $le := get $cfg "leaderElection" -}}
{{- $_ := set $le "resourceName" .Values.scheduler.name -}}
{{- $_ = set $le "resourceNamespace" .Release.Namespace -}}
{{- range $cfg.profiles }}
{{- $_ = set . "schedulerName" $.Values.scheduler.name -}}
{{- end }}
{{- if .Values.extender.tls.enabled }}
{{- $host := printf "powercap-extender.%s.svc" .Release.Namespace -}}
{{- range $cfg.extenders }}
{{- $_ = set . "urlPrefix" (printf "https://%s:8888" $host) -}}
{{- $_ = set .tlsConfig "serverName" $host -}}
{{- end }}
{{- end }}
{{- toYaml $cfg -}}
{{- end }}

{{/* The extender's command: `powercap serve` with the verbs' address and bounds. */}}
{{- define "powercap.extenderCommand" -}}
- powercap
- serve
- --config=/etc/powercap/powercap.yaml
- --controller=track
{{- if .Values.extender.tls.enabled }}
- --host=0.0.0.0
- --port=8888
- --tls-cert=/etc/powercap/tls/tls.crt
- --tls-key=/etc/powercap/tls/tls.key
- --tls-client-ca=/etc/powercap/tls/{{ .Values.extender.tls.clientCA }}
{{- else }}
- --host=127.0.0.1
- --port=8888
{{- end }}
- --metrics-address=0.0.0.0:8889
{{- with .Values.extender.limits }}
- --max-body-bytes={{ int64 .maxBodyBytes }}
- --max-candidates={{ int64 .maxCandidates }}
- --read-timeout={{ .readTimeout }}
- --max-concurrent={{ int64 .maxConcurrent }}
- --max-queued={{ int64 .maxQueued }}
- --max-binds={{ int64 .maxBinds }}
- --inline-max-bytes={{ int64 .inlineMaxBytes }}
{{- end }}
{{- end }}

{{/* Mounts of the config and its profiles, the same in the extender and the controller. */}}
{{- define "powercap.configMounts" -}}
- name: powercap-config
  mountPath: /etc/powercap/powercap.yaml
  subPath: powercap.yaml
  readOnly: true
- name: powercap-profiles
  mountPath: /etc/powercap/profiles
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "powercap.configVolumes" -}}
- name: powercap-config
  configMap:
    name: powercap-config
- name: powercap-profiles
  configMap:
    name: powercap-profiles
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{/* Probes on the metrics port: /healthz for startup and liveness, /readyz for readiness. */}}
{{- define "powercap.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http-metrics
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet:
    path: /healthz
    port: http-metrics
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: http-metrics
  periodSeconds: 5
  timeoutSeconds: 2
{{- end }}

{{- define "powercap.podPlacement" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
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
{{- end }}

{{/* The rules of the ClusterRole .name in files/rbac.yaml (a copy of manifests/base/rbac.yaml,
make chart-sync), as a YAML list; fails the render when the copy has no such ClusterRole. */}}
{{- define "powercap.baseRules" -}}
{{- $rules := list -}}
{{- $found := false -}}
{{- range regexSplit "(?m)^---\\s*$" (.ctx.Files.Get "files/rbac.yaml") -1 -}}
{{- $obj := fromYaml . -}}
{{- if and $obj (eq (get $obj "kind" | default "") "ClusterRole") (eq (dig "metadata" "name" "" $obj) $.name) -}}
{{- $rules = $obj.rules -}}
{{- $found = true -}}
{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "files/rbac.yaml has no ClusterRole %s: run make chart-sync" .name) -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end }}

{{/* The documents of a multi-document file of the chart, parsed, empty ones left out. */}}
{{- define "powercap.documents" -}}
{{- $docs := list -}}
{{- range regexSplit "(?m)^---\\s*$" (.ctx.Files.Get .file) -1 -}}
{{- $obj := fromYaml . -}}
{{- if $obj }}{{ $docs = append $docs $obj }}{{ end -}}
{{- end -}}
{{- dict "items" $docs | toYaml -}}
{{- end }}

{{/* The agent's image: agent.image when set, else the powercap image. */}}
{{- define "powercap.agentImage" -}}
{{- $a := .Values.agent.image -}}
{{- if $a.digest -}}
{{ $a.repository | default .Values.image.repository }}@{{ $a.digest }}
{{- else if or $a.repository $a.tag -}}
{{ $a.repository | default .Values.image.repository }}:{{ $a.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- else -}}
{{ include "powercap.image" . }}
{{- end -}}
{{- end }}
