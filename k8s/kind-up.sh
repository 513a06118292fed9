#!/usr/bin/env bash
# One command from nothing to Rendezvous on a local kind cluster:
#   k8s/kind-up.sh             create the cluster and install everything
#   k8s/kind-up.sh --dry-run   print every command instead of running it (no tool needed)
#
# Steps: the kind cluster (k8s/kind-config.yaml), ingress-nginx, the dev namespace, the
# TURN Secret (random, made once, never committed), the dev add-ons (k8s/dev: coturn,
# OpenTelemetry collector, Jaeger), the chart's dependencies, the image (built and
# loaded into the cluster's nodes, no registry), and the chart with k8s/dev/values-dev.yaml.
# Re-running is safe: an existing cluster and Secret are kept, the rest is re-applied.
# For the edit-build-deploy loop afterwards: `skaffold dev` (skaffold.yaml).
#
# Every kubectl and helm command names the kind cluster's context explicitly, so this
# script cannot touch whatever cluster the current context points at. Each command is
# echoed as `+ cmd` before it runs; the dry run prints those lines only, for a first run
# on a fresh machine (every "only if missing" step included), in order.
set -euo pipefail

# ---------------------------------------------------------------------------------
CLUSTER=rendezvous # the `name` in k8s/kind-config.yaml
CONTEXT="kind-$CLUSTER"
NAMESPACE=rendezvous # the `namespace` in k8s/dev/kustomization.yaml
RELEASE=rendezvous
IMAGE=rendezvous:dev # what values-dev.yaml's image.repository and image.tag name
TURN_SECRET=dev-turn-secret # coturn's and the chart's (turn.secret.existingSecret)
TURN_SECRET_KEY=static-auth-secret
# ingress-nginx is retired upstream (see k8s/README.md); a late release, pinned, in the
# manifest variant for kind (hostPorts on the node labelled ingress-ready=true).
INGRESS_NGINX_MANIFEST=https://raw.githubusercontent.com/kubernetes/ingress-nginx/controller-v1.15.1/deploy/static/provider/kind/deploy.yaml
WAIT_TIMEOUT=300s
REQUIRED_TOOLS=(kind kubectl helm docker)
# ---------------------------------------------------------------------------------

usage() {
    printf 'usage: %s [--dry-run]\n' "$(basename "$0")"
}

dry_run=false
for argument in "$@"; do
    case "$argument" in
        --dry-run) dry_run=true ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Print a command as `+ word word ...` (shell-quoted), then run it unless dry.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [[ "$dry_run" == false ]]; then
        "$@"
    fi
}

# Whether a check passes; in the dry run, never (show the first-run path).
exists() {
    [[ "$dry_run" == false ]] && "$@" >/dev/null 2>&1
}

fail() {
    printf 'kind-up.sh: %s\n' "$1" >&2
    exit 1
}

if [[ "$dry_run" == false ]]; then
    for tool in "${REQUIRED_TOOLS[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || fail "$tool not found on PATH (needs: ${REQUIRED_TOOLS[*]})"
    done
fi

# 1. The cluster, unless it is there already.
cluster_exists() {
    kind get clusters 2>/dev/null | grep -qx "$CLUSTER"
}
if ! exists cluster_exists; then
    run kind create cluster --config k8s/kind-config.yaml --wait "$WAIT_TIMEOUT"
fi

# 2. The ingress controller, and wait until it admits Ingresses (its admission webhook
#    must be up before the chart's Ingress is created).
run kubectl --context "$CONTEXT" apply -f "$INGRESS_NGINX_MANIFEST"
run kubectl --context "$CONTEXT" --namespace ingress-nginx wait pod \
    --for=condition=Ready --selector=app.kubernetes.io/component=controller \
    --timeout="$WAIT_TIMEOUT"

# 3. The namespace, then the TURN Secret in it (64 hex characters: safe in coturn's
#    command line), made once and kept, so coturn and the release keep agreeing.
run kubectl --context "$CONTEXT" apply -f k8s/dev/namespace.yaml
if ! exists kubectl --context "$CONTEXT" --namespace "$NAMESPACE" get secret "$TURN_SECRET"; then
    if [[ "$dry_run" == true ]]; then
        secret_file=/tmp/tmp.RANDOM # what mktemp makes: 32 random bytes, as hex
    else
        secret_file="$(mktemp)"
        trap 'rm -f "$secret_file"' EXIT
        od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$secret_file"
    fi
    run kubectl --context "$CONTEXT" --namespace "$NAMESPACE" create secret generic \
        "$TURN_SECRET" --from-file="$TURN_SECRET_KEY=$secret_file"
fi

# 4. The dev add-ons: coturn, the OpenTelemetry collector, Jaeger.
run kubectl --context "$CONTEXT" apply -k k8s/dev

# 5. The chart's dependencies: its Redis chart packaged into charts/rendezvous/charts/.
run helm dependency build charts/rendezvous

# 6. The image, built from the repository root and copied into every node.
run docker build -f service/Dockerfile -t "$IMAGE" .
run kind load docker-image "$IMAGE" --name "$CLUSTER"

# 7. The chart with the dev values, then everything ready.
run helm --kube-context "$CONTEXT" upgrade --install "$RELEASE" charts/rendezvous \
    --namespace "$NAMESPACE" --values k8s/dev/values-dev.yaml --wait --timeout "$WAIT_TIMEOUT"
run kubectl --context "$CONTEXT" --namespace "$NAMESPACE" wait deployment --all \
    --for=condition=Available --timeout="$WAIT_TIMEOUT"

if [[ "$dry_run" == true ]]; then
    printf '\nkind-up.sh: dry run: nothing was run.\n'
    exit 0
fi
cat <<EOF

Rendezvous is running in kind (context $CONTEXT, namespace $NAMESPACE).
  Service:   http://localhost/ (ingress-nginx); or
             kubectl --context $CONTEXT -n $NAMESPACE port-forward svc/$RELEASE 8000:80
  Token:     kubectl --context $CONTEXT -n $NAMESPACE exec deploy/$RELEASE -c rendezvous -- rendezvous token --user alice
  Traces:    kubectl --context $CONTEXT -n $NAMESPACE port-forward svc/jaeger 16686  (http://localhost:16686)
  Self-test: helm --kube-context $CONTEXT -n $NAMESPACE test $RELEASE
  Dev loop:  skaffold dev --kube-context $CONTEXT
  Remove:    kind delete cluster --name $CLUSTER
EOF
