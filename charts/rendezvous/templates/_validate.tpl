{{/*
Values that pass the schema but cannot work together fail the render here, with one
readable line each (bitnami's validateValues pattern). Included by deployment.yaml.
*/}}
{{- define "rendezvous.validateValues" -}}
{{- $messages := list -}}
{{- $messages = append $messages (include "rendezvous.validateValues.splitRooms" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.redisSources" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.bundledRedisSecret" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.externalRedis" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.jwt" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.turnUrls" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.turnApiSource" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.timing" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.autoscaling" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.pdb" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.httpRoute" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.policy" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.tracing" .) -}}
{{- $messages = append $messages (include "rendezvous.validateValues.otlpHeaders" .) -}}
{{- $messages = without $messages "" -}}
{{- if $messages -}}
{{- printf "\nVALUES VALIDATION:\n%s" (join "\n" $messages) | fail -}}
{{- end -}}
{{- end -}}

{{/* The in-memory backend keeps rooms per pod: two pods would split every room. */}}
{{- define "rendezvous.validateValues.splitRooms" -}}
{{- if not (include "rendezvous.redis.configured" .) -}}
{{- if .Values.autoscaling.enabled -}}
rendezvous: autoscaling.enabled needs Redis (redis.enabled or externalRedis): without it every pod keeps rooms of its own and the HPA would split them. Enable Redis, or set autoscaling.enabled=false and replicaCount=1.
{{- else if gt (int .Values.replicaCount) 1 -}}
rendezvous: replicaCount={{ .Values.replicaCount }} needs Redis (redis.enabled or externalRedis): without it every pod keeps rooms of its own and clients of one room would not see each other. Enable Redis, or set replicaCount=1.
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rendezvous.validateValues.redisSources" -}}
{{- if and .Values.redis.enabled (or .Values.externalRedis.url .Values.externalRedis.existingSecret) -}}
rendezvous: redis.enabled and externalRedis are both set: choose one (set redis.enabled=false to use externalRedis).
{{- end -}}
{{- end -}}

{{/* The service needs the URL; the bundled chart writes it only into a Secret it makes. */}}
{{- define "rendezvous.validateValues.bundledRedisSecret" -}}
{{- if and .Values.redis.enabled .Values.redis.auth .Values.redis.auth.existingSecret -}}
rendezvous: redis.auth.existingSecret is not supported with the bundled Redis: the service needs a full URL, which the bundled chart writes only into the Secret it makes. Give redis.auth.password instead, or run your own Redis and set externalRedis.existingSecret.
{{- end -}}
{{- end -}}

{{- define "rendezvous.validateValues.externalRedis" -}}
{{- if and .Values.externalRedis.url .Values.externalRedis.existingSecret -}}
rendezvous: externalRedis.url and externalRedis.existingSecret are both set: choose one.
{{- else if and .Values.externalRedis.url (not (regexMatch "^rediss?(\\+(cluster|sentinel))?://" .Values.externalRedis.url)) -}}
rendezvous: externalRedis.url must start with redis://, rediss://, redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://.
{{- end -}}
{{- end -}}

{{- define "rendezvous.validateValues.jwt" -}}
{{- if and .Values.jwt.publicKey .Values.jwt.jwksUrl -}}
rendezvous: jwt.publicKey and jwt.jwksUrl are both set: the service accepts one of them (JWT_PUBLIC_KEY or JWT_JWKS_URL).
{{- else if and .Values.jwt.secretKey .Values.jwt.existingSecret -}}
rendezvous: jwt.secretKey and jwt.existingSecret are both set: choose one.
{{- else if and .Values.jwt.secretKey (lt (len .Values.jwt.secretKey) 32) -}}
rendezvous: jwt.secretKey must be at least 32 characters (the service refuses shorter HMAC keys).
{{- end -}}
{{- end -}}

{{/* The sidecar refuses to start without a TURN URL to write into its file. */}}
{{- define "rendezvous.validateValues.turnUrls" -}}
{{- if and .Values.turn.sidecar.enabled (not .Values.turn.urls) -}}
rendezvous: turn.sidecar.enabled needs turn.urls (the TURN server URLs handed to clients). Set turn.urls, or set turn.sidecar.enabled=false to hand out no TURN server.
{{- else if and .Values.turn.secret.value .Values.turn.secret.existingSecret -}}
rendezvous: turn.secret.value and turn.secret.existingSecret are both set: choose one.
{{- end -}}
{{- end -}}

{{/*
The API source needs a ServiceAccount of its own: binding the Secret-reading Role to the
namespace's `default` account would hand it to every pod that runs as that account.
*/}}
{{- define "rendezvous.validateValues.turnApiSource" -}}
{{- if and (include "rendezvous.turn.apiSource" .) (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) -}}
rendezvous: turn.sidecar.source=kubernetesApi binds a Role that reads the TURN Secret to the pods' ServiceAccount: set serviceAccount.create=true or name a dedicated serviceAccount.name (not the namespace's default account).
{{- end -}}
{{- end -}}

{{/* The service itself refuses these at start; fail here rather than crash-loop there. */}}
{{- define "rendezvous.validateValues.timing" -}}
{{- if ge (float64 .Values.drain.windowSeconds) (float64 .Values.drain.deadlineSeconds) -}}
rendezvous: drain.windowSeconds ({{ .Values.drain.windowSeconds }}) must be shorter than drain.deadlineSeconds ({{ .Values.drain.deadlineSeconds }}).
{{- else if ge (float64 .Values.settings.wsPingIntervalSeconds) (float64 .Values.settings.presenceTtlSeconds) -}}
rendezvous: settings.wsPingIntervalSeconds ({{ .Values.settings.wsPingIntervalSeconds }}) must be shorter than settings.presenceTtlSeconds ({{ .Values.settings.presenceTtlSeconds }}): idle clients prove they are present only by answering pings.
{{- end -}}
{{- end -}}

{{- define "rendezvous.validateValues.autoscaling" -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
rendezvous: autoscaling.minReplicas ({{ .Values.autoscaling.minReplicas }}) is above autoscaling.maxReplicas ({{ .Values.autoscaling.maxReplicas }}).
{{- end -}}
{{- end -}}

{{- define "rendezvous.validateValues.pdb" -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) -}}
rendezvous: podDisruptionBudget.minAvailable and podDisruptionBudget.maxUnavailable are both set: Kubernetes accepts one (set the other to null).
{{- else if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) -}}
rendezvous: podDisruptionBudget.enabled needs minAvailable or maxUnavailable.
{{- end -}}
{{- end -}}

{{- define "rendezvous.validateValues.httpRoute" -}}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) -}}
rendezvous: httpRoute.enabled needs httpRoute.parentRefs (the Gateway to attach to); a route without a parent serves nothing.
{{- end -}}
{{- end -}}

{{/*
The two policy checks that depend on the environment (README "Live policy"): the schema
cannot make them, and a pod would refuse the policy (and fail to start) over them.
*/}}
{{- define "rendezvous.validateValues.policy" -}}
{{- $wanted := dig "limits" "max_message_bytes" nil .Values.policy -}}
{{- if and $wanted (gt (float64 $wanted) (float64 .Values.settings.maxMessageBytes)) -}}
rendezvous: policy.limits.max_message_bytes ({{ $wanted }}) is above settings.maxMessageBytes ({{ .Values.settings.maxMessageBytes }}): a policy may lower the limit, never raise it. Raise settings.maxMessageBytes (it rolls the pods) or lower the policy's.
{{- else if and (dig "ice" "turn_urls" nil .Values.policy) (not (include "rendezvous.turn.enabled" .)) -}}
rendezvous: policy.ice.turn_urls needs a TURN credential source: enable turn.sidecar.enabled (with turn.urls), or set turn.urls so the service mints credentials itself.
{{- end -}}
{{- end -}}

{{/*
Tracing on needs somewhere to send the spans. extraEnv may not set what the block sets:
Kubernetes keeps one of two same-named variables (which one depends on the tool that
applies them) and server-side apply refuses them, so either could silently win.
*/}}
{{- define "rendezvous.validateValues.tracing" -}}
{{- $tracing := .Values.tracing -}}
{{- if $tracing.enabled -}}
{{- $owned := include "rendezvous.tracing.ownedVariables" . | fromJsonArray -}}
{{- $clashes := list -}}
{{- range .Values.extraEnv -}}
{{- if has .name $owned }}{{ $clashes = append $clashes .name }}{{ end -}}
{{- end -}}
{{- $reserved := include "rendezvous.tracing.reservedAttributes" . | fromJsonArray -}}
{{- $taken := list -}}
{{- range $key, $_ := $tracing.resourceAttributes -}}
{{- if has $key $reserved }}{{ $taken = append $taken $key }}{{ end -}}
{{- end -}}
{{- if not $tracing.endpoint -}}
rendezvous: tracing.enabled needs tracing.endpoint, the collector's OTLP URL (e.g. http://otel-collector.observability:4318 with protocol http/protobuf, or :4317 with grpc).
{{- else if $clashes -}}
rendezvous: extraEnv sets {{ $clashes | uniq | join ", " }}, which tracing.enabled sets (or overrides) from the tracing block: remove {{ if gt (len ($clashes | uniq)) 1 }}them{{ else }}it{{ end }} from extraEnv and use tracing.* (endpoint, protocol, serviceName, sampler, samplerArg, resourceAttributes, headersSecret); POD_NAME and POD_NAMESPACE come from the pod, and extraEnv may refer to them as $(POD_NAME) and $(POD_NAMESPACE).
{{- else if $taken -}}
rendezvous: tracing.resourceAttributes sets {{ $taken | join ", " }}: the chart sets the k8s.* ones from the pod, tracing.serviceName is service.name, and the service sets service.instance.id and service.version itself. Remove {{ if gt (len $taken) 1 }}them{{ else }}it{{ end }}.
{{- end -}}
{{- end -}}
{{- end -}}

{{/* OTLP headers carry the collector's credentials: a Secret reference, never a value. */}}
{{- define "rendezvous.validateValues.otlpHeaders" -}}
{{- $plain := list -}}
{{- range .Values.extraEnv -}}
{{- if and (has .name (list "OTEL_EXPORTER_OTLP_HEADERS" "OTEL_EXPORTER_OTLP_TRACES_HEADERS")) (hasKey . "value") -}}
{{- $plain = append $plain .name -}}
{{- end -}}
{{- end -}}
{{- if $plain -}}
rendezvous: extraEnv gives {{ $plain | join ", " }} as a plain value: OTLP headers carry the collector's credentials, which never belong in values or the pod spec. Put them in a Secret and set tracing.headersSecret (or use valueFrom.secretKeyRef).
{{- end -}}
{{- end -}}
