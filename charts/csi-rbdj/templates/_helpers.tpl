{{/* Names, labels and shared fragments. */}}

{{- define "csi-rbdj.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "csi-rbdj.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "csi-rbdj.labels" -}}
app.kubernetes.io/name: {{ include "csi-rbdj.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "csi-rbdj.selectorLabels" -}}
app.kubernetes.io/name: {{ include "csi-rbdj.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "csi-rbdj.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The node plugin's CSI socket directory and path on the host (the kubelet dials it). */}}
{{- define "csi-rbdj.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) .Values.driverName -}}
{{- end -}}

{{- define "csi-rbdj.localNode" -}}
{{- required "local.nodeName is required with backend=local: the node that holds local.dir" .Values.local.nodeName -}}
{{- end -}}

{{/* Arguments both roles share: the backend. */}}
{{- define "csi-rbdj.backendArgs" -}}
- --backend={{ .Values.backend }}
{{- if eq .Values.backend "local" }}
- --cluster-id={{ .Values.clusterID }}
- --local-dir={{ .Values.local.dir }}
{{- if .Values.local.noSync }}
- --local-no-sync
{{- end }}
{{- else }}
- --ceph-config=/etc/csi-rbdj/config/config.json
- --ceph-credentials-dir=/etc/csi-rbdj/credentials
- --ceph-connect-timeout={{ .Values.ceph.connectTimeout }}
- --ceph-op-timeout={{ .Values.ceph.opTimeout }}
{{- range .Values.ceph.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Volume mounts of the backend (same in both roles). */}}
{{- define "csi-rbdj.backendMounts" -}}
{{- if eq .Values.backend "local" }}
- name: local-cluster
  mountPath: {{ .Values.local.dir }}
{{- else }}
- name: ceph-config
  mountPath: /etc/csi-rbdj/config
  readOnly: true
# Default credentials: for calls without secrets (ListVolumes, GetCapacity, Probe)
# and for a restarted node plugin re-serving its staged volumes.
- name: ceph-credentials
  mountPath: /etc/csi-rbdj/credentials
  readOnly: true
{{- end }}
{{- end -}}

{{- define "csi-rbdj.backendVolumes" -}}
{{- if eq .Values.backend "local" }}
- name: local-cluster
  hostPath:
    path: {{ .Values.local.dir }}
    type: DirectoryOrCreate
{{- else }}
- name: ceph-config
  configMap:
    name: {{ include "csi-rbdj.fullname" . }}-ceph-config
- name: ceph-credentials
  secret:
    secretName: {{ include "csi-rbdj.secretName" . }}
    defaultMode: 0400
{{- end }}
{{- end -}}

{{/* Pin a pod to the local backend's node. */}}
{{- define "csi-rbdj.localAffinity" -}}
nodeAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    nodeSelectorTerms:
      - matchExpressions:
          - key: kubernetes.io/hostname
            operator: In
            values: [{{ include "csi-rbdj.localNode" . | quote }}]
{{- end -}}

{{- define "csi-rbdj.apiServerEnv" -}}
{{- if .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.apiServer.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ default "443" .Values.apiServer.port | quote }}
{{- end }}
{{- end -}}

{{- define "csi-rbdj.secretName" -}}
{{- .Values.ceph.secret.name -}}
{{- end -}}
