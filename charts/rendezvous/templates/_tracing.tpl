{{/*
Tracing: the OTEL_* variables of the signaling container (values `tracing`). The
service reads them in rendezvous/telemetry/tracing.py; the TURN sidecar has no spans.
*/}}

{{/*
Names the tracing block sets, or that would silently override what it sets (a traces-
specific endpoint, protocol or headers, another exporter, the SDK switch). With tracing
on, extraEnv may not set any of them (rendezvous.validateValues.tracing).
*/}}
{{- define "rendezvous.tracing.ownedVariables" -}}
{{- list
  "POD_NAME" "POD_NAMESPACE"
  "OTEL_EXPORTER_OTLP_ENDPOINT" "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
  "OTEL_EXPORTER_OTLP_PROTOCOL" "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
  "OTEL_EXPORTER_OTLP_HEADERS" "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
  "OTEL_TRACES_EXPORTER" "OTEL_SERVICE_NAME" "OTEL_RESOURCE_ATTRIBUTES"
  "OTEL_TRACES_SAMPLER" "OTEL_TRACES_SAMPLER_ARG" "OTEL_SDK_DISABLED"
  | toJson }}
{{- end }}

{{/* Resource attribute keys the chart or the service sets itself. */}}
{{- define "rendezvous.tracing.reservedAttributes" -}}
{{- list "k8s.namespace.name" "k8s.pod.name" "k8s.deployment.name" "service.name" "service.instance.id" "service.version" | toJson }}
{{- end }}

{{/*
OTEL_RESOURCE_ATTRIBUTES: where the span comes from, then the user's attributes (sorted,
values percent-encoded as the variable's format asks; Go's query escaping writes a space
as `+`, which the format does not decode). $(POD_NAME) and $(POD_NAMESPACE) are expanded
by the kubelet from the two variables defined before this one.
*/}}
{{- define "rendezvous.tracing.resourceAttributes" -}}
{{- $attributes := list
  "k8s.namespace.name=$(POD_NAMESPACE)"
  "k8s.pod.name=$(POD_NAME)"
  (printf "k8s.deployment.name=%s" (include "rendezvous.fullname" .)) }}
{{- range $key, $value := .Values.tracing.resourceAttributes }}
{{- $attributes = append $attributes (printf "%s=%s" $key (urlquery (toString $value) | replace "+" "%20")) }}
{{- end }}
{{- join "," $attributes }}
{{- end }}

{{/*
The env entries, when tracing is on. POD_NAME and POD_NAMESPACE come first: Kubernetes
expands `$(VAR)` only from variables defined earlier in the list.
*/}}
{{- define "rendezvous.tracing.env" -}}
{{- $tracing := .Values.tracing }}
{{- if $tracing.enabled }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_SERVICE_NAME
  value: {{ $tracing.serviceName | quote }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $tracing.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $tracing.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $tracing.sampler | quote }}
{{- if hasSuffix "traceidratio" $tracing.sampler }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ toString $tracing.samplerArg | quote }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ include "rendezvous.tracing.resourceAttributes" . | quote }}
{{- if $tracing.headersSecret.name }}
# Collector credentials: from a Secret only, never a value.
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ $tracing.headersSecret.name }}
      key: {{ $tracing.headersSecret.key }}
{{- end }}
{{- end }}
{{- end }}
