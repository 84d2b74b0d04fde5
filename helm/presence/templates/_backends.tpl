{{/*
How presenced reaches Redis and NATS: the URLs, and the TLS and credential
files, each mounted from its Secret into one projected volume per backend
(/etc/presence/redis, /etc/presence/nats) and named by a flag. No password
is ever in a URL, an environment variable or a command line of presenced.
*/}}

{{/*
The Redis URL(s): the bundled Redis's or redis.url, the ACL user name (no
password: --redis-password-file) on every seed, rediss with redis.tls.
*/}}
{{- define "presence.redisUrl" -}}
{{- $r := .Values.redis -}}
{{- $url := $r.url -}}
{{- if $r.bundled -}}
{{- $url = printf "redis://%s:6379" (include "presence.redisHost" .) -}}
{{- end -}}
{{- $user := "" -}}
{{- if and $r.auth.enabled $r.auth.username -}}
{{- $user = printf "%s@" $r.auth.username -}}
{{- end -}}
{{- $parts := list -}}
{{- range $p := splitList "," $url -}}
{{- $p = trim $p -}}
{{- if contains "://" $p -}}
{{- $scheme := index (splitList "://" $p) 0 -}}
{{- $rest := trimPrefix (printf "%s://" $scheme) $p -}}
{{- if $r.tls.enabled -}}
{{- $scheme = get (dict "redis" "rediss" "redis+cluster" "rediss+cluster") $scheme | default $scheme -}}
{{- end -}}
{{- $parts = append $parts (printf "%s://%s%s" $scheme $user $rest) -}}
{{- else -}}
{{- /* A later seed of redis+cluster://a:6379,b:6379 (the scheme is the first's). */ -}}
{{- $parts = append $parts (printf "%s%s" $user $p) -}}
{{- end -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}

{{/* The NATS URL(s): the bundled NATS's or nats.url, tls:// with nats.tls. */}}
{{- define "presence.natsUrl" -}}
{{- $n := .Values.nats -}}
{{- $url := $n.url -}}
{{- if $n.bundled -}}
{{- $url = printf "nats://%s:4222" (include "presence.natsHost" .) -}}
{{- end -}}
{{- if $n.tls.enabled -}}
{{- $parts := list -}}
{{- range $p := splitList "," $url -}}
{{- $parts = append $parts (printf "tls://%s" (trimPrefix "tls://" (trimPrefix "nats://" (trim $p)))) -}}
{{- end -}}
{{- join "," $parts -}}
{{- else -}}
{{- $url -}}
{{- end -}}
{{- end -}}

{{/* The NATS user of a component (files/nats-auth.conf): its role, "presence" for the all-in-one process. */}}
{{- define "presence.natsUser" -}}
{{- if eq . "all" -}}presence{{- else -}}{{ . }}{{- end -}}
{{- end -}}

{{/* "true" when presenced mounts files for Redis (TLS or a password). */}}
{{- define "presence.redisFiles" -}}
{{- $r := .Values.redis -}}
{{- if and (or $r.url $r.bundled) (or $r.tls.enabled $r.auth.enabled) -}}true{{- end -}}
{{- end -}}

{{- define "presence.natsFiles" -}}
{{- $n := .Values.nats -}}
{{- if and (or $n.url $n.bundled) (or $n.tls.enabled $n.auth.enabled) -}}true{{- end -}}
{{- end -}}

{{/*
The NATS passwords the chart generates (nats.auth without existingSecret or
credsSecret): role -> base64, as JSON. Each is the kept value of the Secret
when the cluster has it (lookup), else random; made once per render and
memoised in .Values, so that the Secret and the checksum annotations of the
pods that read it (the bundled NATS, every presenced) see the same values.
*/}}
{{- define "presence.natsPasswords" -}}
{{- if not (hasKey .Values "_generatedNatsPasswords") -}}
{{- $name := include "presence.natsSecretName" . -}}
{{- $pw := dict -}}
{{- range $role := list "edge" "compositor" "notifier" "api" "presence" -}}
{{- $_ := set $pw $role (include "presence.keptRandom" (dict "root" $ "secret" $name "key" $role "length" 32)) -}}
{{- end -}}
{{- $_ := set .Values "_generatedNatsPasswords" $pw -}}
{{- end -}}
{{- index .Values "_generatedNatsPasswords" | toJson -}}
{{- end -}}

{{/* Does the chart make the NATS passwords Secret? */}}
{{- define "presence.natsPasswordsGenerated" -}}
{{- $n := .Values.nats -}}
{{- if and (or $n.url $n.bundled) $n.auth.enabled (not $n.auth.existingSecret) (not $n.auth.credsSecret) -}}true{{- end -}}
{{- end -}}

{{/* presenced's backend flags (args list items). dict "root" $ "component" C. */}}
{{- define "presence.backendArgs" -}}
{{- $v := .root.Values -}}
{{- if include "presence.redisFiles" .root }}
{{- if $v.redis.tls.enabled }}
- --redis-ca=/etc/presence/redis/ca.crt
{{- if $v.redis.tls.clientCertSecret }}
- --redis-cert=/etc/presence/redis/tls.crt
- --redis-key=/etc/presence/redis/tls.key
{{- end }}
{{- end }}
{{- if $v.redis.auth.enabled }}
- --redis-password-file=/etc/presence/redis/password
{{- end }}
{{- end }}
{{- if include "presence.natsFiles" .root }}
{{- $user := include "presence.natsUser" .component }}
{{- if $v.nats.tls.enabled }}
- --nats-ca=/etc/presence/nats/ca.crt
{{- if $v.nats.tls.clientCertSecret }}
- --nats-cert=/etc/presence/nats/tls.crt
- --nats-key=/etc/presence/nats/tls.key
{{- end }}
{{- end }}
{{- if $v.nats.auth.enabled }}
{{- if $v.nats.auth.credsSecret }}
- --nats-creds=/etc/presence/nats/{{ $user }}.creds
{{- else }}
- --nats-user={{ $user }}
- --nats-password-file=/etc/presence/nats/password
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* volumeMounts items for the backend files. dict "root" $. */}}
{{- define "presence.backendMounts" -}}
{{- if include "presence.redisFiles" .root }}
- name: redis
  mountPath: /etc/presence/redis
  readOnly: true
{{- end }}
{{- if include "presence.natsFiles" .root }}
- name: nats
  mountPath: /etc/presence/nats
  readOnly: true
{{- end }}
{{- end -}}

{{/*
volumes items: one projected volume per backend, holding only what this
component needs (its own NATS user's password or credentials, never the
other roles'). dict "root" $ "component" C.
*/}}
{{- define "presence.backendVolumes" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- if include "presence.redisFiles" $root }}
{{- $t := $v.redis.tls }}
- name: redis
  projected:
    defaultMode: 0440
    sources:
      {{- if $t.enabled }}
      - secret:
          name: {{ $t.caSecret }}
          items:
            - key: {{ $t.caKey }}
              path: ca.crt
      {{- with $t.clientCertSecret }}
      - secret:
          name: {{ . }}
          items:
            - key: tls.crt
              path: tls.crt
            - key: tls.key
              path: tls.key
      {{- end }}
      {{- end }}
      {{- if $v.redis.auth.enabled }}
      - secret:
          name: {{ include "presence.redisSecretName" $root }}
          items:
            - key: {{ $v.redis.auth.existingSecretKey }}
              path: password
      {{- end }}
{{- end }}
{{- if include "presence.natsFiles" $root }}
{{- $t := $v.nats.tls }}
{{- $user := include "presence.natsUser" .component }}
- name: nats
  projected:
    defaultMode: 0440
    sources:
      {{- if $t.enabled }}
      - secret:
          name: {{ $t.caSecret }}
          items:
            - key: {{ $t.caKey }}
              path: ca.crt
      {{- with $t.clientCertSecret }}
      - secret:
          name: {{ . }}
          items:
            - key: tls.crt
              path: tls.crt
            - key: tls.key
              path: tls.key
      {{- end }}
      {{- end }}
      {{- if $v.nats.auth.enabled }}
      {{- if $v.nats.auth.credsSecret }}
      - secret:
          name: {{ $v.nats.auth.credsSecret }}
          items:
            - key: {{ $user }}.creds
              path: {{ $user }}.creds
      {{- else }}
      - secret:
          name: {{ include "presence.natsSecretName" $root }}
          items:
            - key: {{ $user }}
              path: password
      {{- end }}
      {{- end }}
{{- end }}
{{- end -}}

{{/* The backends' settings that contradict each other (presence.validate). */}}
{{- define "presence.validateBackends" -}}
{{- $v := .Values -}}
{{- $r := $v.redis -}}
{{- $n := $v.nats -}}
{{- /* TLS: the CA is required (the image has no system CA bundle). */ -}}
{{- range $b := list (dict "name" "redis" "v" $r "scheme" "rediss" "what" "Redis") (dict "name" "nats" "v" $n "scheme" "tls" "what" "NATS") -}}
{{- $t := $b.v.tls -}}
{{- $tlsUrl := false -}}
{{- range $p := splitList "," $b.v.url -}}
{{- if hasPrefix (printf "%s://" $b.scheme) (trim $p) -}}{{- $tlsUrl = true -}}{{- end -}}
{{- if hasPrefix (printf "%s+cluster://" $b.scheme) (trim $p) -}}{{- $tlsUrl = true -}}{{- end -}}
{{- end -}}
{{- if and $tlsUrl (not $t.enabled) -}}
{{- fail (printf "%s.url is %s:// (TLS): set %s.tls.enabled and %s.tls.caSecret (the image has no system CA bundle to check the server's certificate with)" $b.name $b.scheme $b.name $b.name) -}}
{{- end -}}
{{- if and $t.enabled (not $t.caSecret) -}}
{{- fail (printf "%s.tls.enabled: set %s.tls.caSecret, a Secret with the CA certificate (key %s.tls.caKey) the %s server's certificate chains to (the image has no system CA bundle)" $b.name $b.name $b.name $b.what) -}}
{{- end -}}
{{- if and (not $t.enabled) (or $t.caSecret $t.clientCertSecret $t.serverSecret) -}}
{{- fail (printf "%s.tls: a Secret is set but %s.tls.enabled is false (the connection would be plaintext)" $b.name $b.name) -}}
{{- end -}}
{{- if and $t.enabled $b.v.bundled (not $t.serverSecret) -}}
{{- fail (printf "%s.bundled with %s.tls.enabled: set %s.tls.serverSecret, a kubernetes.io/tls Secret with the bundled %s's certificate (valid for %s-%s)" $b.name $b.name $b.name $b.what (include "presence.fullname" $) $b.name) -}}
{{- end -}}
{{- if and $t.serverSecret (not $b.v.bundled) -}}
{{- fail (printf "%s.tls.serverSecret is the bundled %s's certificate: with an existing %s (%s.url) leave it empty" $b.name $b.what $b.what $b.name) -}}
{{- end -}}
{{- end -}}
{{- if and $r.auth.enabled $r.url (not (or $r.auth.existingSecret $r.auth.password)) -}}
{{- fail "redis.auth.enabled with an existing Redis: set redis.auth.existingSecret or redis.auth.password" -}}
{{- end -}}
{{- if and $n.auth.existingSecret $n.auth.credsSecret -}}
{{- fail "nats.auth: set existingSecret (per-role passwords) or credsSecret (per-role credentials files), not both" -}}
{{- end -}}
{{- if and (or $n.auth.existingSecret $n.auth.credsSecret) (not $n.auth.enabled) -}}
{{- fail "nats.auth: a Secret is set but nats.auth.enabled is false (presenced would log in to NATS without credentials)" -}}
{{- end -}}
{{- if and $n.auth.enabled $n.url (not (or $n.auth.existingSecret $n.auth.credsSecret)) -}}
{{- fail "nats.auth.enabled with an existing NATS: set nats.auth.existingSecret (keys edge, compositor, notifier, presence: the passwords of the users of files/nats-auth.conf) or nats.auth.credsSecret (keys edge.creds, …)" -}}
{{- end -}}
{{- if and $n.auth.credsSecret $n.bundled -}}
{{- fail "nats.auth.credsSecret is for an existing NATS with operator-mode accounts; the bundled NATS has the password users of files/nats-auth.conf (leave credsSecret empty)" -}}
{{- end -}}
{{- /*
JetStream reserves the notify stream's max bytes in the file store when it
is created: the store must hold the stream. (Processes starting together
race to create it and the server may refuse the losers with "insufficient
storage resources"; presenced then takes the stream the winner made.)
*/ -}}
{{- if $n.bundled -}}
{{- $store := trimSuffix "B" $n.jetstream.maxFileStore -}}
{{- $unit := 1 -}}
{{- range $u, $bytes := dict "K" 1024 "M" 1048576 "G" 1073741824 "T" 1099511627776 -}}
{{- if hasSuffix $u $store -}}
{{- $unit = $bytes -}}
{{- $store = trimSuffix $u $store -}}
{{- end -}}
{{- end -}}
{{- $storeBytes := mul (int64 $store) (int64 $unit) -}}
{{- $stream := int64 (index $v.config "notify-stream-max-bytes" | default 1073741824) -}}
{{- if lt $storeBytes $stream -}}
{{- fail (printf "nats.jetstream.maxFileStore (%s) must hold the notify stream's limit (config.notify-stream-max-bytes, %d bytes): JetStream reserves it when the stream is created and refuses the stream otherwise; raise maxFileStore or lower the limit" $n.jetstream.maxFileStore $stream) -}}
{{- end -}}
{{- end -}}
{{- end -}}
