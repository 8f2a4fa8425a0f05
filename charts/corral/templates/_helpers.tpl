{{/* The chart's name, or nameOverride. */}}
{{- define "corral.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object's name: fullnameOverride, else the release name, with the chart's
name added unless the release name already holds it. 40 characters leave room for the
longest suffix ("-zookeeper-headless", 19) within the 63 of a DNS label.
*/}}
{{- define "corral.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object; add app.kubernetes.io/component. */}}
{{- define "corral.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "corral.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: corral
{{- end -}}

{{/* Labels that select this release's objects; add app.kubernetes.io/component. */}}
{{- define "corral.selectorLabels" -}}
app.kubernetes.io/name: {{ include "corral.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "corral.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "corral.zookeeperName" -}}
{{- printf "%s-zookeeper" (include "corral.fullname" .) -}}
{{- end -}}

{{/*
What values.schema.json cannot say: the combinations. Included by configmap.yaml, which
every install renders, so a bad combination fails the whole install with the field to fix.
*/}}
{{- define "corral.validate" -}}
{{- $zk := .Values.zookeeper -}}
{{- if and $zk.hosts $zk.embedded.enabled -}}
{{- fail "zookeeper.hosts and zookeeper.embedded.enabled are both set: use your ensemble (zookeeper.hosts) or the embedded server (zookeeper.embedded.enabled), not both" -}}
{{- end -}}
{{- if not (or $zk.hosts $zk.embedded.enabled) -}}
{{- fail "zookeeper.hosts is empty: corral needs ZooKeeper; set zookeeper.hosts to your ensemble (host:port,host:port), or zookeeper.embedded.enabled=true to try corral out with a single server" -}}
{{- end -}}
{{- $c := $zk.credentials -}}
{{- if and $c.existingSecret (or $c.user $c.password) -}}
{{- fail "zookeeper.credentials: give existingSecret or user and password, not both" -}}
{{- end -}}
{{- if and $c.user (not $c.password) -}}
{{- fail "zookeeper.credentials.password is empty: a digest identity needs both user and password" -}}
{{- end -}}
{{- if and $c.password (not $c.user) -}}
{{- fail "zookeeper.credentials.user is empty: a digest identity needs both user and password" -}}
{{- end -}}
{{- if $zk.tls.enabled -}}
{{- if not $zk.tls.existingSecret -}}
{{- fail "zookeeper.tls.existingSecret is empty: TLS needs a Secret with ca.crt (and tls.crt, tls.key with clientCertificate)" -}}
{{- end -}}
{{- if $zk.embedded.enabled -}}
{{- fail "zookeeper.tls.enabled needs zookeeper.hosts: the embedded ZooKeeper serves plain TCP only" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* CORRAL_ZOOKEEPER: zookeeper.hosts, else the embedded server's client Service. */}}
{{- define "corral.zookeeperHosts" -}}
{{- if .Values.zookeeper.hosts -}}
{{- .Values.zookeeper.hosts -}}
{{- else -}}
{{- printf "%s.%s.svc:2181" (include "corral.zookeeperName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the ZooKeeper credentials, or "" without credentials. */}}
{{- define "corral.credentialsSecret" -}}
{{- if .Values.zookeeper.credentials.existingSecret -}}
{{- .Values.zookeeper.credentials.existingSecret -}}
{{- else if .Values.zookeeper.credentials.user -}}
{{- printf "%s-zookeeper-credentials" (include "corral.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Arguments every corral process takes after --zookeeper: chroot, session, TLS, logs. */}}
{{- define "corral.zookeeperArgs" -}}
- --zookeeper-chroot
- {{ .Values.zookeeper.chroot | quote }}
- --session-timeout
- {{ .Values.zookeeper.sessionTimeout | quote }}
{{- if .Values.zookeeper.tls.enabled }}
- --zookeeper-tls-ca
- /etc/corral/zookeeper/tls/ca.crt
{{- if .Values.zookeeper.tls.clientCertificate }}
- --zookeeper-tls-cert
- /etc/corral/zookeeper/tls/tls.crt
- --zookeeper-tls-key
- /etc/corral/zookeeper/tls/tls.key
{{- end }}
{{- end }}
{{- if .Values.logJson }}
- --log-json
{{- end }}
{{- end -}}

{{/*
Environment every corral process reads: CORRAL_ZOOKEEPER (clap reads it; the arguments
also name it), CORRAL_LOG, and CORRAL_ZK_CREDENTIALS_FILE when there are credentials.
*/}}
{{- define "corral.env" -}}
- name: CORRAL_ZOOKEEPER
  valueFrom:
    configMapKeyRef:
      name: {{ include "corral.fullname" . }}
      key: zookeeper
- name: CORRAL_LOG
  valueFrom:
    configMapKeyRef:
      name: {{ include "corral.fullname" . }}
      key: log
{{- if include "corral.credentialsSecret" . }}
- name: CORRAL_ZK_CREDENTIALS_FILE
  value: /etc/corral/zookeeper/credentials
{{- end }}
{{- end -}}

{{/* Whether a pod needs the /etc/corral/zookeeper volume. */}}
{{- define "corral.needsZookeeperVolume" -}}
{{- if or (include "corral.credentialsSecret" .) .Values.zookeeper.tls.enabled -}}
true
{{- end -}}
{{- end -}}

{{- define "corral.zookeeperVolumeMount" -}}
{{- if include "corral.needsZookeeperVolume" . }}
- name: zookeeper-client
  mountPath: /etc/corral/zookeeper
  readOnly: true
{{- end }}
{{- end -}}

{{/*
The credentials file and the TLS files in one projected volume, so that neither is mounted
inside the other's read-only directory. Mode 0440: the controller reads them through its
fsGroup, the agent as their owner, root.
*/}}
{{- define "corral.zookeeperVolume" -}}
{{- if include "corral.needsZookeeperVolume" . }}
- name: zookeeper-client
  projected:
    defaultMode: 288 # 0440, written in decimal: YAML 1.1 and 1.2 read 0440 differently
    sources:
      {{- with include "corral.credentialsSecret" . }}
      - secret:
          name: {{ . }}
          items:
            - key: credentials
              path: credentials
      {{- end }}
      {{- if .Values.zookeeper.tls.enabled }}
      - secret:
          name: {{ .Values.zookeeper.tls.existingSecret }}
          items:
            - key: ca.crt
              path: tls/ca.crt
            {{- if .Values.zookeeper.tls.clientCertificate }}
            - key: tls.crt
              path: tls/tls.crt
            - key: tls.key
              path: tls/tls.key
            {{- end }}
      {{- end }}
{{- end }}
{{- end -}}

{{/*
Rolls the pods when the ConfigMap they read at start changes. There is deliberately no
checksum of the credentials: a hash of a password in a pod annotation can be guessed
offline by anyone who may read pods.
*/}}
{{- define "corral.configChecksum" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}
