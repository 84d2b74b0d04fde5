{{/*
The pod template of every presenced workload.
dict "root" $ "component" (all|edge|compositor|notifier|api) "c" (its values
     block) "target" (--target) "sip" (bool: serves SIP) "api" (bool: serves
     the API on api.port) "hostNetwork" (bool)
*/}}
{{- define "presence.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $c := .c -}}
{{- $sip := .sip -}}
{{- $api := .api -}}
{{- $hostNetwork := .hostNetwork -}}
{{- $needHostIP := and $sip $hostNetwork (or $v.edge.bindHostIP (not $v.sip.advertise)) -}}
{{- $preStop := int (default 0 $c.preStopSleepSeconds) -}}
{{- $grace := $c.terminationGracePeriodSeconds -}}
{{- if kindIs "invalid" $grace -}}
{{- $grace = add $preStop (int $c.drainSeconds) 30 -}}
{{- end -}}
{{- $redis := or $v.redis.url $v.redis.bundled -}}
{{- $nats := or $v.nats.url $v.nats.bundled -}}
metadata:
  labels:
    {{- include "presence.componentLabels" (dict "root" $root "component" .component) | nindent 4 }}
    {{- with $c.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- /* A changed users file restarts the pods (the server reads it at start). The policy
       and the lists are reloaded in place when the kubelet updates their ConfigMaps. */}}
  {{- $annotations := deepCopy (default dict $c.podAnnotations) }}
  {{- if and $v.auth.enabled (not $v.auth.existingSecret) }}
  {{- $_ := set $annotations "checksum/users" ($v.auth.users | sha256sum) }}
  {{- end }}
  {{- /* The NATS password is read at start too: a regenerated one (rotation) restarts the pods. */}}
  {{- if and $nats (include "presence.natsPasswordsGenerated" $root) }}
  {{- $_ := set $annotations "checksum/nats-auth" (include "presence.natsPasswords" $root | sha256sum) }}
  {{- end }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "presence.serviceAccountName" $root }}
  # presenced never talks to the Kubernetes API.
  automountServiceAccountToken: false
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $hostNetwork }}
  hostNetwork: true
  dnsPolicy: ClusterFirstWithHostNet
  {{- end }}
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $grace }}
  {{- with $c.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  {{- with $c.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "presence.topologySpread" (dict "root" $root "component" .component "c" $c "daemonSet" .daemonSet) }}
  {{- . | nindent 2 }}
  {{- end }}
  containers:
    - name: presenced
      image: {{ include "presence.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args:
        - --target={{ .target }}
        - --domain={{ join "," $v.domains }}
        - --shards={{ int64 $v.shards }}
        - --http-listen={{ $v.http.listenAddress }}:{{ int64 $v.http.port }}
        - --admin-token-file=/etc/presence/secrets/admin-token
        - --drain-seconds={{ int64 $c.drainSeconds }}
        {{- if $sip }}
        {{- if and $hostNetwork $v.edge.bindHostIP }}
        - --sip-listen=$(HOST_IP):{{ int64 $v.sip.port }}
        {{- else }}
        - --sip-listen={{ $v.sip.listenAddress }}:{{ int64 $v.sip.port }}
        {{- end }}
        {{- if $v.sip.advertise }}
        - --sip-advertise={{ $v.sip.advertise }}
        {{- else if $hostNetwork }}
        - --sip-advertise=$(HOST_IP):{{ int64 $v.sip.port }}
        {{- end }}
        {{- if $v.sip.tls.enabled }}
        {{- if and $hostNetwork $v.edge.bindHostIP }}
        - --sip-tls-listen=$(HOST_IP):{{ int64 $v.sip.tls.port }}
        {{- else }}
        - --sip-tls-listen={{ $v.sip.listenAddress }}:{{ int64 $v.sip.tls.port }}
        {{- end }}
        - --tls-cert=/etc/presence/tls/tls.crt
        - --tls-key=/etc/presence/tls/tls.key
        {{- if $v.sip.tls.clientCaKey }}
        - --tls-client-ca=/etc/presence/tls/client-ca.pem
        {{- end }}
        {{- end }}
        {{- end }}
        {{- if $v.auth.enabled }}
        - --users=/etc/presence/users/users.txt
        {{- end }}
        {{- if include "presence.policyEnabled" $root }}
        - --policy=/etc/presence/policy/policy.txt
        {{- end }}
        {{- if include "presence.listsEnabled" $root }}
        - --lists=/etc/presence/lists/lists.txt
        {{- end }}
        {{- if $api }}
        - --api-listen=0.0.0.0:{{ int64 $v.api.port }}
        - --api-batch={{ int64 $v.api.batch }}
        {{- if include "presence.apiTokensEnabled" $root }}
        - --api-tokens=/etc/presence/api/tokens.txt
        {{- end }}
        {{- if include "presence.directoryEnabled" $root }}
        - --directory=/etc/presence/directory/directory.csv
        {{- end }}
        {{- end }}
        {{- with include "presence.backendArgs" (dict "root" $root "component" .component) | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- range $k, $val := $v.config }}
        {{- if kindIs "float64" $val }}
        - --{{ $k }}={{ int64 $val }}
        {{- else }}
        - --{{ $k }}={{ $val }}
        {{- end }}
        {{- end }}
        {{- range $c.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        # The pod name: unique, and the edge's NATS subject edge.<id>.
        - name: PRESENCE_NODE_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: PRESENCE_NONCE_SECRET
          valueFrom:
            secretKeyRef:
              name: {{ include "presence.secretName" $root }}
              key: nonce-secret
        {{- if $needHostIP }}
        - name: HOST_IP
          valueFrom:
            fieldRef:
              fieldPath: status.hostIP
        {{- end }}
        {{- if $redis }}
        - name: PRESENCE_REDIS
          value: {{ include "presence.redisUrl" $root | quote }}
        {{- end }}
        {{- if $nats }}
        - name: PRESENCE_NATS
          value: {{ include "presence.natsUrl" $root | quote }}
        {{- end }}
        {{- with $c.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        {{- if $sip }}
        - name: sip-udp
          containerPort: {{ int64 $v.sip.port }}
          protocol: UDP
        - name: sip-tcp
          containerPort: {{ int64 $v.sip.port }}
          protocol: TCP
        {{- if $v.sip.tls.enabled }}
        - name: sip-tls
          containerPort: {{ int64 $v.sip.tls.port }}
          protocol: TCP
        {{- end }}
        {{- end }}
        - name: http
          containerPort: {{ int64 $v.http.port }}
          protocol: TCP
        {{- if $api }}
        # gRPC (HTTP/2) and the web address book (HTTP/1.1) on one port.
        - name: api
          containerPort: {{ int64 $v.api.port }}
          protocol: TCP
        {{- end }}
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: {{ $v.probes.startup.periodSeconds }}
        timeoutSeconds: {{ $v.probes.startup.timeoutSeconds }}
        failureThreshold: {{ $v.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        initialDelaySeconds: {{ $v.probes.liveness.initialDelaySeconds }}
        periodSeconds: {{ $v.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ $v.probes.liveness.failureThreshold }}
      # 503 from the first moment of a shutdown (lame duck), so the pod
      # leaves the Service's endpoints while it still serves SIP.
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        initialDelaySeconds: {{ $v.probes.readiness.initialDelaySeconds }}
        periodSeconds: {{ $v.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ $v.probes.readiness.failureThreshold }}
      {{- if gt $preStop 0 }}
      lifecycle:
        # The kubelet's own sleep (no shell in the image): SIGTERM comes
        # after it, when kube-proxy and the load balancer have dropped the
        # pod; then --drain-seconds of lame duck.
        preStop:
          sleep:
            seconds: {{ $preStop }}
      {{- end }}
      {{- with $c.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: secrets
          mountPath: /etc/presence/secrets
          readOnly: true
        {{- if $v.auth.enabled }}
        - name: users
          mountPath: /etc/presence/users
          readOnly: true
        {{- end }}
        {{- if include "presence.policyEnabled" $root }}
        - name: policy
          mountPath: /etc/presence/policy
          readOnly: true
        {{- end }}
        {{- if include "presence.listsEnabled" $root }}
        - name: lists
          mountPath: /etc/presence/lists
          readOnly: true
        {{- end }}
        {{- if and $sip $v.sip.tls.enabled }}
        - name: tls
          mountPath: /etc/presence/tls
          readOnly: true
        {{- end }}
        {{- if and $api (include "presence.apiTokensEnabled" $root) }}
        - name: api-tokens
          mountPath: /etc/presence/api
          readOnly: true
        {{- end }}
        {{- if and $api (include "presence.directoryEnabled" $root) }}
        - name: directory
          mountPath: /etc/presence/directory
          readOnly: true
        {{- end }}
        {{- with include "presence.backendMounts" (dict "root" $root) | trim }}
        {{- . | nindent 8 }}
        {{- end }}
  volumes:
    - name: secrets
      secret:
        secretName: {{ include "presence.secretName" $root }}
        defaultMode: 0440
        items:
          - key: admin-token
            path: admin-token
    {{- if $v.auth.enabled }}
    - name: users
      secret:
        secretName: {{ include "presence.usersSecretName" $root }}
        defaultMode: 0440
        items:
          - key: {{ $v.auth.existingSecretKey }}
            path: users.txt
    {{- end }}
    {{- if include "presence.policyEnabled" $root }}
    - name: policy
      configMap:
        name: {{ include "presence.policyConfigMapName" $root }}
        items:
          - key: {{ $v.policy.existingConfigMapKey }}
            path: policy.txt
    {{- end }}
    {{- if include "presence.listsEnabled" $root }}
    - name: lists
      configMap:
        name: {{ include "presence.listsConfigMapName" $root }}
        items:
          - key: {{ $v.lists.existingConfigMapKey }}
            path: lists.txt
    {{- end }}
    {{- if and $sip $v.sip.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ $v.sip.tls.secretName }}
        defaultMode: 0440
        items:
          - key: tls.crt
            path: tls.crt
          - key: tls.key
            path: tls.key
          {{- with $v.sip.tls.clientCaKey }}
          - key: {{ . }}
            path: client-ca.pem
          {{- end }}
    {{- end }}
    {{- if and $api (include "presence.apiTokensEnabled" $root) }}
    # Reloaded in place when the kubelet updates the Secret (no restart).
    - name: api-tokens
      secret:
        secretName: {{ include "presence.apiTokensSecretName" $root }}
        defaultMode: 0440
        items:
          - key: {{ $v.api.existingSecretKey }}
            path: tokens.txt
    {{- end }}
    {{- if and $api (include "presence.directoryEnabled" $root) }}
    - name: directory
      configMap:
        name: {{ include "presence.directoryConfigMapName" $root }}
        items:
          - key: {{ $v.api.existingDirectoryConfigMapKey }}
            path: directory.csv
    {{- end }}
    {{- with include "presence.backendVolumes" (dict "root" $root "component" .component) | trim }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* topologySpreadConstraints: the role's own, or nodes and zones (ScheduleAnyway). */}}
{{- define "presence.topologySpread" -}}
{{- $v := .root.Values -}}
{{- if not (kindIs "invalid" .c.topologySpreadConstraints) -}}
{{- with .c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- else if and $v.topologySpread.enabled (not .daemonSet) -}}
{{- $keys := list "kubernetes.io/hostname" -}}
{{- if $v.topologySpread.zones }}{{ $keys = append $keys "topology.kubernetes.io/zone" }}{{ end -}}
topologySpreadConstraints:
{{- range $key := $keys }}
  - maxSkew: {{ $v.topologySpread.maxSkew }}
    topologyKey: {{ $key }}
    whenUnsatisfiable: {{ $v.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "presence.componentSelector" (dict "root" $.root "component" $.component) | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
{{- end }}
{{- end -}}
{{- end -}}
