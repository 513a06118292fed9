{{/*
Names, labels and the small decisions several templates share.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "rendezvous.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource name prefix: `<release>-rendezvous`, or the release name alone when it
already contains the chart name; at most 63 characters (a DNS label).
*/}}
{{- define "rendezvous.fullname" -}}
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

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "rendezvous.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource of the signaling workload. */}}
{{- define "rendezvous.labels" -}}
helm.sh/chart: {{ include "rendezvous.chart" . }}
{{ include "rendezvous.selectorLabels" . }}
{{- /* The release's version, not the image tag: skaffold sets tag@sha256:digest, no label value. */}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rendezvous
{{- end }}

{{/*
Labels that select the signaling pods. The component keeps the `helm test` pod (same
name and instance) out of the Service, the PDB and the spread constraints. Never change
them: a Deployment's selector is immutable.
*/}}
{{- define "rendezvous.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rendezvous.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: signaling
{{- end }}

{{/* Labels of the `helm test` pod (the NetworkPolicy lets it in by these). */}}
{{- define "rendezvous.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "rendezvous.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "rendezvous.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rendezvous.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image tag: image.tag, else the chart's appVersion. */}}
{{- define "rendezvous.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "rendezvous.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "rendezvous.imageTag" .) }}
{{- end }}

{{/*
Seconds Kubernetes waits between the start of a pod's termination and SIGKILL: the
preStop wait, then the whole drain deadline, plus 5 s for the process to exit. Derived,
never set, so the two cannot drift apart.
*/}}
{{- define "rendezvous.terminationGracePeriodSeconds" -}}
{{- add (int .Values.drain.preStopSeconds) (int .Values.drain.deadlineSeconds) 5 }}
{{- end }}

{{/*
A value for a Secret the chart manages: the one given in values; else the one already in
the cluster (read back with `lookup`, so an upgrade keeps it); else a new random one.
Offline renders (`helm template`, lint) see no cluster and get a new value every time.
Arguments: dict "context" $ "name" <Secret name> "key" <data key> "given" <value> "length" <n>.
*/}}
{{- define "rendezvous.secretValue" -}}
{{- if .given }}
{{- .given }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .context.Release.Namespace .name }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}
{{- end }}

{{/* JWT: whether an HMAC key is configured (given, existing or generated). */}}
{{- define "rendezvous.jwt.hmac" -}}
{{- $jwt := .Values.jwt }}
{{- if or $jwt.secretKey $jwt.existingSecret (not (or $jwt.publicKey $jwt.jwksUrl)) -}}
true
{{- end }}
{{- end }}

{{/* JWT: whether the chart creates the HMAC key Secret. */}}
{{- define "rendezvous.jwt.managed" -}}
{{- if and (include "rendezvous.jwt.hmac" .) (not .Values.jwt.existingSecret) -}}
true
{{- end }}
{{- end }}

{{- define "rendezvous.jwt.secretName" -}}
{{- default (printf "%s-jwt" (include "rendezvous.fullname" .)) .Values.jwt.existingSecret }}
{{- end }}

{{- define "rendezvous.jwt.secretKey" -}}
{{- if .Values.jwt.existingSecret }}
{{- .Values.jwt.existingSecretKey }}
{{- else -}}
jwt-secret-key
{{- end }}
{{- end }}

{{/* Redis: whether the service has one (bundled or external). */}}
{{- define "rendezvous.redis.configured" -}}
{{- if or .Values.redis.enabled .Values.externalRedis.url .Values.externalRedis.existingSecret -}}
true
{{- end }}
{{- end }}

{{/* Redis: whether the chart creates the external URL Secret. */}}
{{- define "rendezvous.redis.externalManaged" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.url (not .Values.externalRedis.existingSecret) -}}
true
{{- end }}
{{- end }}

{{/*
Redis: the Secret that holds REDIS_URL. The bundled chart's own Secret carries a ready
`redis-url` (its fullname, computed by its own helper from its values).
*/}}
{{- define "rendezvous.redis.secretName" -}}
{{- if .Values.redis.enabled }}
{{- include "redis.fullname" (dict "Values" .Values.redis "Chart" (dict "Name" "redis") "Release" .Release) }}
{{- else if .Values.externalRedis.existingSecret }}
{{- .Values.externalRedis.existingSecret }}
{{- else }}
{{- printf "%s-external-redis" (include "rendezvous.fullname" .) }}
{{- end }}
{{- end }}

{{- define "rendezvous.redis.secretKey" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.existingSecret }}
{{- .Values.externalRedis.existingSecretKey }}
{{- else -}}
redis-url
{{- end }}
{{- end }}

{{/* TURN: whether a shared secret is needed (the sidecar, or the service minting itself). */}}
{{- define "rendezvous.turn.enabled" -}}
{{- if or .Values.turn.sidecar.enabled .Values.turn.urls -}}
true
{{- end }}
{{- end }}

{{/* TURN: whether the chart creates the shared secret's Secret. */}}
{{- define "rendezvous.turn.managed" -}}
{{- if and (include "rendezvous.turn.enabled" .) (not .Values.turn.secret.existingSecret) -}}
true
{{- end }}
{{- end }}

{{- define "rendezvous.turn.secretName" -}}
{{- default (printf "%s-turn" (include "rendezvous.fullname" .)) .Values.turn.secret.existingSecret }}
{{- end }}

{{/* TURN: whether the sidecar watches its Secret through the Kubernetes API (needs RBAC). */}}
{{- define "rendezvous.turn.apiSource" -}}
{{- if and .Values.turn.sidecar.enabled (eq .Values.turn.sidecar.source "kubernetesApi") -}}
true
{{- end }}
{{- end }}

{{/* Paths inside the pod, shared by the ConfigMaps and the volume mounts. */}}
{{- define "rendezvous.paths.policyDir" -}}/etc/rendezvous/policy{{- end }}
{{- define "rendezvous.paths.turnDir" -}}/run/rendezvous-turn{{- end }}
{{- define "rendezvous.paths.turnSecretDir" -}}/etc/rendezvous/turn-secret{{- end }}
{{- define "rendezvous.ports.http" -}}8000{{- end }}
{{- define "rendezvous.ports.sidecar" -}}8081{{- end }}
