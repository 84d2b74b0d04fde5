{{/*
Names. The full name is kept to 36 characters: a Deployment's pod is named
<fullname>-compositor-<10-char hash>-<5-char id> (at most 64 characters) and
the pod name is the process's --node-id, which presenced limits to 64.
*/}}
{{- define "presence.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 36 | trimSuffix "-" -}}
{{- end -}}

{{- define "presence.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 36 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 36 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 36 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "presence.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels common to every object. */}}
{{- define "presence.labels" -}}
helm.sh/chart: {{ include "presence.chart" . }}
{{ include "presence.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: presence
{{- end -}}

{{- define "presence.selectorLabels" -}}
app.kubernetes.io/name: {{ include "presence.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component: dict "root" $ "component" "edge". */}}
{{- define "presence.componentLabels" -}}
{{ include "presence.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "presence.componentSelector" -}}
{{ include "presence.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The presenced processes' components (the PodMonitor and the backends' NetworkPolicies select these). */}}
{{- define "presence.serverComponents" -}}
{{- if eq .Values.mode "cluster" -}}
[edge, compositor, notifier{{ if .Values.api.enabled }}, api{{ end }}]
{{- else -}}
[all]
{{- end -}}
{{- end -}}

{{- define "presence.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "presence.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "presence.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Secret with nonce-secret and admin-token. */}}
{{- define "presence.secretName" -}}
{{- default (printf "%s-secrets" (include "presence.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "presence.usersSecretName" -}}
{{- default (printf "%s-users" (include "presence.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "presence.apiTokensSecretName" -}}
{{- default (printf "%s-api-tokens" (include "presence.fullname" .)) .Values.api.existingSecret -}}
{{- end -}}

{{- define "presence.apiTokensEnabled" -}}
{{- if or .Values.api.tokens .Values.api.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "presence.directoryConfigMapName" -}}
{{- default (printf "%s-directory" (include "presence.fullname" .)) .Values.api.existingDirectoryConfigMap -}}
{{- end -}}

{{- define "presence.directoryEnabled" -}}
{{- if or .Values.api.directory .Values.api.existingDirectoryConfigMap -}}true{{- end -}}
{{- end -}}

{{- define "presence.policyConfigMapName" -}}
{{- default (printf "%s-policy" (include "presence.fullname" .)) .Values.policy.existingConfigMap -}}
{{- end -}}

{{- define "presence.policyEnabled" -}}
{{- if or .Values.policy.rules .Values.policy.existingConfigMap -}}true{{- end -}}
{{- end -}}

{{- define "presence.redisSecretName" -}}
{{- default (printf "%s-redis" (include "presence.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{- define "presence.natsSecretName" -}}
{{- default (printf "%s-nats" (include "presence.fullname" .)) .Values.nats.auth.existingSecret -}}
{{- end -}}

{{- define "presence.redisHost" -}}
{{- printf "%s-redis" (include "presence.fullname" .) -}}
{{- end -}}

{{- define "presence.natsHost" -}}
{{- printf "%s-nats" (include "presence.fullname" .) -}}
{{- end -}}

{{/* The SIP Service(s). */}}
{{- define "presence.sipServiceName" -}}
{{- printf "%s-sip" (include "presence.fullname" .) -}}
{{- end -}}

{{/* The Service name and port the tests and NOTES use for one transport ("udp" or "tcp"). */}}
{{- define "presence.sipServiceFor" -}}
{{- $root := .root -}}
{{- if $root.Values.service.splitProtocols -}}
{{- printf "%s-%s" (include "presence.sipServiceName" $root) .transport -}}
{{- else -}}
{{- include "presence.sipServiceName" $root -}}
{{- end -}}
{{- end -}}

{{/*
A random value kept across upgrades: the key of an existing Secret if the
cluster has it (lookup; empty under `helm template` and --dry-run=client),
else a new random one. dict "root" $ "secret" NAME "key" KEY "length" N.
Returns the base64 form.
*/}}
{{- define "presence.keptRandom" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum (int .length) | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Fails rendering on combinations the schema cannot express. */}}
{{- define "presence.validate" -}}
{{- $v := .Values -}}
{{- if and $v.redis.url $v.redis.bundled -}}
{{- fail "redis: set url (an existing Redis) or bundled: true, not both" -}}
{{- end -}}
{{- if and $v.nats.url $v.nats.bundled -}}
{{- fail "nats: set url (an existing NATS) or bundled: true, not both" -}}
{{- end -}}
{{- $redis := or $v.redis.url $v.redis.bundled -}}
{{- $nats := or $v.nats.url $v.nats.bundled -}}
{{- if eq $v.mode "cluster" -}}
{{- if not (and $redis $nats) -}}
{{- fail "mode: cluster needs Redis and NATS: set redis.url or redis.bundled, and nats.url or nats.bundled" -}}
{{- end -}}
{{- else -}}
{{- if ne (not $redis) (not $nats) -}}
{{- fail "mode: all-in-one uses both Redis and NATS or neither (the in-memory backends)" -}}
{{- end -}}
{{- if and (not $redis) (gt (int $v.allInOne.replicas) 1) -}}
{{- fail "allInOne.replicas > 1 needs redis and nats: the in-memory state lives in one process" -}}
{{- end -}}
{{- end -}}
{{- if and $v.sip.tls.enabled (not $v.sip.tls.secretName) -}}
{{- fail "sip.tls.enabled: set sip.tls.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key)" -}}
{{- end -}}
{{- if and $v.sip.tls.enabled (eq (int $v.sip.tls.port) (int $v.sip.port)) -}}
{{- fail "sip.tls.port must differ from sip.port (UDP and TCP use sip.port)" -}}
{{- end -}}
{{- if and $v.auth.enabled (not (or $v.auth.existingSecret $v.auth.users)) -}}
{{- fail "auth.enabled: set auth.existingSecret (a Secret with the users file) or auth.users (its content)" -}}
{{- end -}}
{{- include "presence.validateBackends" . -}}
{{- if and $v.edge.hostNetwork (ne $v.edge.kind "DaemonSet") -}}
{{- fail "edge.hostNetwork needs edge.kind: DaemonSet (one edge per node owns the node's SIP port)" -}}
{{- end -}}
{{- if and $v.edge.autoscaling.enabled (eq $v.edge.kind "DaemonSet") -}}
{{- fail "edge.autoscaling scales a Deployment; a DaemonSet runs one edge per selected node" -}}
{{- end -}}
{{- if and $v.notifier.keda.enabled $v.notifier.autoscaling.enabled -}}
{{- fail "notifier.keda.enabled and notifier.autoscaling.enabled both make an HPA: choose one" -}}
{{- end -}}
{{- if and $v.notifier.keda.enabled (not $v.nats.bundled) (not $v.notifier.keda.natsMonitoringEndpoint) -}}
{{- fail "notifier.keda with an existing NATS: set notifier.keda.natsMonitoringEndpoint (host:8222)" -}}
{{- end -}}
{{- if and $v.api.enabled (not (or $v.auth.enabled (include "presence.apiTokensEnabled" .))) -}}
{{- fail "api.enabled: the API is never open off loopback: set api.tokens or api.existingSecret (bearer tokens), or auth.enabled (SIP logins)" -}}
{{- end -}}
{{- if and $v.api.enabled (eq (int $v.api.port) (int $v.http.port)) -}}
{{- fail "api.port must differ from http.port" -}}
{{- end -}}
{{- if and $v.api.enabled (eq (int $v.api.port) (int $v.sip.port)) -}}
{{- fail "api.port must differ from sip.port" -}}
{{- end -}}
{{- range $role := list "allInOne" "edge" "compositor" "notifier" "api" -}}
{{- $c := index $v $role -}}
{{- $pre := int (default 0 $c.preStopSleepSeconds) -}}
{{- if and (not (kindIs "invalid" $c.terminationGracePeriodSeconds)) (le (int $c.terminationGracePeriodSeconds) (add $pre (int $c.drainSeconds))) -}}
{{- fail (printf "%s.terminationGracePeriodSeconds must be above preStopSleepSeconds + drainSeconds (%d): the kubelet kills the pod at that deadline" $role (add $pre (int $c.drainSeconds))) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "presence.listsConfigMapName" -}}
{{- default (printf "%s-lists" (include "presence.fullname" .)) .Values.lists.existingConfigMap -}}
{{- end -}}

{{- define "presence.listsEnabled" -}}
{{- if or .Values.lists.entries .Values.lists.existingConfigMap -}}true{{- end -}}
{{- end -}}
