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
{{- $agent := .Values.agent.zookeeper -}}
{{- if include "corral.controllerIdentity" . -}}
{{- if not $zk.agentIdentities -}}
{{- fail "zookeeper.agentIdentities is empty: with an identity, the controller gives each node's znodes to the ACL ids of that node's agent, and needs to know them, e.g. {\"*\": [\"x509:CN={node},O=corral-agents\"]}" -}}
{{- end -}}
{{- if not $agent.identity -}}
{{- fail "agent.zookeeper.identity is empty: the controller has a ZooKeeper identity, so each agent needs its own (digest or x509), or it may read and write nothing" -}}
{{- end -}}
{{- else if or $agent.identity $zk.agentIdentities -}}
{{- fail "agent.zookeeper.identity and zookeeper.agentIdentities need an identity for the controller too (zookeeper.credentials, or zookeeper.tls with clientCertificate): it owns corral's znodes" -}}
{{- end -}}
{{- if $agent.identity -}}
{{- if eq (not $agent.hostPath) (not $agent.existingSecret) -}}
{{- fail "agent.zookeeper: give hostPath (a directory on each node, one identity per node) or existingSecret (one identity shared by all agents), one of them" -}}
{{- end -}}
{{- if and (eq $agent.identity "x509") (not $zk.tls.enabled) -}}
{{- fail "agent.zookeeper.identity x509 needs zookeeper.tls.enabled: a client certificate is shown over TLS" -}}
{{- end -}}
{{- end -}}
{{- $digest := or (include "corral.credentialsSecret" .) (eq $agent.identity "digest") -}}
{{- if and $digest (not $zk.tls.enabled) (not $zk.insecure) -}}
{{- fail "zookeeper.insecure is false: digest credentials without zookeeper.tls would cross the network in clear text; enable zookeeper.tls, or accept it with zookeeper.insecure=true (the embedded server has no TLS)" -}}
{{- end -}}
{{- if and $zk.embedded.enabled $zk.embedded.networkPolicy.enabled .Values.agent.hostNetwork (not $zk.embedded.networkPolicy.extraFrom) -}}
{{- fail "zookeeper.embedded.networkPolicy.extraFrom is empty with agent.hostNetwork: a NetworkPolicy cannot select host-network pods, so the agents could not reach ZooKeeper; add the nodes' addresses (ipBlock), or disable the policy" -}}
{{- end -}}
{{- end -}}

{{/* "true" when the controller has a ZooKeeper identity: digest credentials or a client certificate. */}}
{{- define "corral.controllerIdentity" -}}
{{- if or (include "corral.credentialsSecret" .) (and .Values.zookeeper.tls.enabled .Values.zookeeper.tls.clientCertificate) -}}
true
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
{{- end }}
{{- if .Values.zookeeper.insecure }}
- --zookeeper-insecure
{{- end }}
{{- if .Values.logJson }}
- --log-json
{{- end }}
{{- end -}}

{{/* The controller's identity and what it knows of the agents'. */}}
{{- define "corral.controllerZookeeperArgs" -}}
{{- if and .Values.zookeeper.tls.enabled .Values.zookeeper.tls.clientCertificate }}
- --zookeeper-tls-cert
- /etc/corral/zookeeper/tls/tls.crt
- --zookeeper-tls-key
- /etc/corral/zookeeper/tls/tls.key
{{- end }}
{{- if .Values.zookeeper.agentIdentities }}
- --agent-identities
- /etc/corral/zookeeper/agent-identities.yaml
{{- end }}
{{- end -}}

{{/* The agent's own identity, a client certificate. */}}
{{- define "corral.agentZookeeperArgs" -}}
{{- if eq .Values.agent.zookeeper.identity "x509" }}
- --zookeeper-tls-cert
- /etc/corral/zookeeper-identity/tls.crt
- --zookeeper-tls-key
- /etc/corral/zookeeper-identity/tls.key
{{- end }}
{{- end -}}

{{/*
Environment every corral process reads: CORRAL_ZOOKEEPER (clap reads it; the arguments
also name it) and CORRAL_LOG.
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
{{- end -}}

{{/* The controller's digest credentials file, when it has one. */}}
{{- define "corral.controllerEnv" -}}
{{- if include "corral.credentialsSecret" . }}
- name: CORRAL_ZK_CREDENTIALS_FILE
  value: /etc/corral/zookeeper/credentials
{{- end }}
{{- end -}}

{{/* The agent's digest credentials file, when its identity is one. */}}
{{- define "corral.agentEnv" -}}
{{- if eq .Values.agent.zookeeper.identity "digest" }}
- name: CORRAL_ZK_CREDENTIALS_FILE
  value: /etc/corral/zookeeper-identity/credentials
{{- end }}
{{- end -}}

{{- define "corral.zookeeperVolumeMount" -}}
- name: zookeeper-client
  mountPath: /etc/corral/zookeeper
  readOnly: true
{{- end -}}

{{/*
The controller's ZooKeeper files in one projected volume, so that none is mounted inside
another's read-only directory: its credentials, the TLS files (its certificate among them)
and the agents' identities. Mode 0440: the controller reads them through its fsGroup.
*/}}
{{- define "corral.controllerZookeeperVolume" -}}
{{- if or (include "corral.credentialsSecret" .) .Values.zookeeper.tls.enabled .Values.zookeeper.agentIdentities }}
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
      {{- if .Values.zookeeper.agentIdentities }}
      - configMap:
          name: {{ include "corral.fullname" . }}
          items:
            - key: agent-identities.yaml
              path: agent-identities.yaml
      {{- end }}
{{- end }}
{{- end -}}

{{/*
The agent's ZooKeeper files: the CA alone from zookeeper.tls (never the controller's
certificate nor its credentials), and its own identity, from a directory on its node or a
Secret shared by all agents. Read by root, the agent's user.
*/}}
{{- define "corral.agentZookeeperVolumes" -}}
{{- if .Values.zookeeper.tls.enabled }}
- name: zookeeper-client
  projected:
    defaultMode: 292 # 0444: a CA certificate
    sources:
      - secret:
          name: {{ .Values.zookeeper.tls.existingSecret }}
          items:
            - key: ca.crt
              path: tls/ca.crt
{{- end }}
{{- with .Values.agent.zookeeper }}
{{- if .hostPath }}
- name: zookeeper-identity
  hostPath:
    path: {{ .hostPath }}
    type: Directory
{{- else if .existingSecret }}
- name: zookeeper-identity
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 256 # 0400
    items:
      {{- if eq .identity "digest" }}
      - key: credentials
        path: credentials
      {{- else }}
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "corral.agentZookeeperMounts" -}}
{{- if .Values.zookeeper.tls.enabled }}
{{ include "corral.zookeeperVolumeMount" . }}
{{- end }}
{{- if .Values.agent.zookeeper.identity }}
- name: zookeeper-identity
  mountPath: /etc/corral/zookeeper-identity
  readOnly: true
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
