{{/*
Names and labels shared by every template, after `helm create`: names are cut to 63 characters
because Kubernetes names and label values may not be longer.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "mqtt-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: "<release>-<name>", or the release name alone when it
already contains the name, or fullnameOverride.
*/}}
{{- define "mqtt-operator.fullname" -}}
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

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "mqtt-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels the Deployment selects its Pods by; they never change over upgrades. */}}
{{- define "mqtt-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mqtt-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The chart's own labels; user labels are merged under them and can never replace them. */}}
{{- define "mqtt-operator.standardLabels" -}}
{{ include "mqtt-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: mqtt-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "mqtt-operator.chart" . }}
{{- end }}

{{/*
The labels of every object: commonLabels, then the standard labels on top. `merge` keeps the keys
of its first argument, so a user's app.kubernetes.io/name cannot break the selectors.
*/}}
{{- define "mqtt-operator.labels" -}}
{{- $standard := include "mqtt-operator.standardLabels" . | fromYaml }}
{{- toYaml (merge $standard (.Values.commonLabels | default dict)) }}
{{- end }}

{{/* The labels of the operator's Pod: common and pod labels, the standard labels on top. */}}
{{- define "mqtt-operator.podLabels" -}}
{{- $standard := include "mqtt-operator.standardLabels" . | fromYaml }}
{{- toYaml (merge $standard (.Values.podLabels | default dict) (.Values.commonLabels | default dict)) }}
{{- end }}

{{/* The cluster-wide ClusterRole kopf needs in every mode; the suffix survives the cut to 63. */}}
{{- define "mqtt-operator.discoveryName" -}}
{{- printf "%s-discovery" (include "mqtt-operator.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{/* The Role for the leader-election lease in the release namespace. */}}
{{- define "mqtt-operator.leaderElectionName" -}}
{{- printf "%s-leader-election" (include "mqtt-operator.fullname" . | trunc 47 | trimSuffix "-") }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "mqtt-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mqtt-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference; the tag defaults to the chart's appVersion. */}}
{{- define "mqtt-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The namespaces the operator watches in namespaced mode, as a JSON list (include returns a string):
watchNamespaces, or the release namespace when it is empty.
*/}}
{{- define "mqtt-operator.watchNamespaces" -}}
{{- $namespaces := .Values.watchNamespaces | default (list .Release.Namespace) }}
{{- toJson (uniq $namespaces) }}
{{- end }}

{{/* The rules the operator needs wherever it manages custom resources (Role or ClusterRole). */}}
{{- define "mqtt-operator.rules" -}}
# The six kinds of mqtt-operator.io: the operator reads them, and patches them for kopf's
# annotations and finalizers.
- apiGroups: ["mqtt-operator.io"]
  resources: [mqttinstances, authusers, aclpolicies, kafkaconnectors, replicationtasks, functiontriggers]
  verbs: [get, list, watch, patch, update]
# A connector's own broker account and policy (AuthUser and AclPolicy `<connector>-connector`) are
# created and deleted with it.
- apiGroups: ["mqtt-operator.io"]
  resources: [authusers, aclpolicies]
  verbs: [create, delete]
- apiGroups: ["mqtt-operator.io"]
  resources:
    - mqttinstances/status
    - authusers/status
    - aclpolicies/status
    - kafkaconnectors/status
    - replicationtasks/status
    - functiontriggers/status
  verbs: [get, patch, update]
- apiGroups: ["mqtt-operator.io"]
  resources:
    - mqttinstances/finalizers
    - authusers/finalizers
    - aclpolicies/finalizers
    - kafkaconnectors/finalizers
    - replicationtasks/finalizers
    - functiontriggers/finalizers
  verbs: [update]
# Errors a user can cause are reported as Events on the custom resource.
- apiGroups: ["", "events.k8s.io"]
  resources: [events]
  verbs: [create, patch]
# The objects the operator owns: broker and worker Pods' configuration, storage and network.
- apiGroups: [""]
  resources: [secrets, configmaps, services, persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [apps]
  resources: [statefulsets, deployments]
  verbs: [get, list, watch, create, patch, update, delete]
# The bridge workers' Pods are only read: their IPs, to collect their counters from /metrics.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, update, delete]
# A FunctionTrigger's knativeServiceRef: the Knative Service is only read, for its address.
- apiGroups: [serving.knative.dev]
  resources: [services]
  verbs: [get]
{{- end }}

{{/* The Service in front of the operator's /metrics; the suffix survives the cut to 63. */}}
{{- define "mqtt-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "mqtt-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
The labels of a monitoring object: common labels and the object's own (e.g. the `release` label a
Prometheus selects its monitors and rules by), the standard labels on top.
Called with (dict "root" $ "extra" .Values.monitoring.<object>.labels).
*/}}
{{- define "mqtt-operator.monitoringLabels" -}}
{{- $standard := include "mqtt-operator.standardLabels" .root | fromYaml }}
{{- toYaml (merge $standard (.extra | default dict) (.root.Values.commonLabels | default dict)) }}
{{- end }}

{{/*
A worker's (or broker's) series name the custom resource it belongs to: owner_kind (kafkaconnector,
functiontrigger, replicationtask, mqttinstance) and owner_name, from the Pod's labels. Not `kind` and
`name`: bridge_failed_total has a `kind` label of its own.
*/}}
{{- /*
The broker exporter turns every $SYS topic into a gauge: the broker plugin's client events
($SYS/mqtt-operator/client-events, JSON) would become a meaningless mqtt_operator_client_events.
*/}}
{{- define "mqtt-operator.exporterMetricRelabelings" -}}
- sourceLabels: [__name__]
  regex: mqtt_operator_client_events
  action: drop
{{- end }}

{{- define "mqtt-operator.ownerRelabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_name]
  targetLabel: owner_kind
- sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_instance]
  targetLabel: owner_name
{{- end }}
