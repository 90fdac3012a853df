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
- --cluster-id={{ .Values.clusterID }}
{{- if eq .Values.backend "local" }}
- --local-dir={{ .Values.local.dir }}
{{- if .Values.local.noSync }}
- --local-no-sync
{{- end }}
{{- else }}
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
  mountPath: /etc/csi-rbdj/clusters
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
