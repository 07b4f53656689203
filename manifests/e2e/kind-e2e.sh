#!/usr/bin/env bash
# stokehold end to end on a local kind cluster (`make e2e-kind`).
#
# Creates a kind cluster, installs cert-manager, Knative Serving (+ Kourier), KServe and a
# NATS server at pinned versions, builds and loads the controller and CPU runtime images,
# installs stokehold with `kubectl apply -k`, publishes and deploys the `tiny-demo`
# template, waits until it is Ready, calls it with the openai SDK, waits until Knative has
# scaled it to zero, calls it again and reports the cold-start time. Deletes the cluster at
# the end (KEEP_CLUSTER=1 keeps it).
#
# Needs: docker (a running engine), kind, kubectl, and the project's virtualenv (`make venv`)
# for the stokehold CLI and the openai SDK. CI does not run this script (no Docker engine
# there); it runs `DRY_RUN=1` (`make e2e-kind-plan`), which prints the numbered plan of every
# command without running anything, and shellcheck.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

# ---- pinned versions (KServe v0.16.0 is tested with Knative 1.15 and cert-manager 1.17) ----
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:v1.30.4}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.17.0}
KNATIVE_SERVING_VERSION=${KNATIVE_SERVING_VERSION:-knative-v1.15.2}
KOURIER_VERSION=${KOURIER_VERSION:-knative-v1.15.1}
KSERVE_VERSION=${KSERVE_VERSION:-v0.16.0}
# the NATS server image is pinned in manifests/e2e/nats/nats.yaml

# ---- settings ----
DRY_RUN=${DRY_RUN:-0}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
CLUSTER=${CLUSTER:-stokehold-e2e}
NAMESPACE=stokehold-e2e  # the namespace manifests/e2e/overlay lets the controller serve (namespaces are opt-in)
TEMPLATE=${TEMPLATE:-tiny-demo}
KEEP_HOT=${KEEP_HOT:-30s}
READY_TIMEOUT=${READY_TIMEOUT:-15m}
SCALE_TO_ZERO_TIMEOUT_S=${SCALE_TO_ZERO_TIMEOUT_S:-900}
NATS_LOCAL_PORT=${NATS_LOCAL_PORT:-14222}
GATEWAY_LOCAL_PORT=${GATEWAY_LOCAL_PORT:-18080}
# must match the image names in manifests/e2e/overlay/kustomization.yaml; Knative resolves image
# tags through their registry except for dev.local/ (config-deployment registries-skipping-tag-resolving),
# which is how an image loaded into kind can serve
CONTROLLER_IMAGE=dev.local/stokehold-controller:e2e
RUNTIME_IMAGE=dev.local/stokehold-runtime-cpu:e2e
VENV_BIN=${VENV_BIN:-$REPO_ROOT/.venv/bin}
PYTHON=${PYTHON:-$VENV_BIN/python}
STOKEHOLD=${STOKEHOLD:-$VENV_BIN/stokehold}

STEP=0
CLUSTER_CREATED=0
PORT_FORWARD_PIDS=()
CAPTURED=""

# ---- plan helpers: every command is printed with its step number; DRY_RUN=1 runs none ----

step() {
  STEP=$((STEP + 1))
  printf '\n[%02d] %s\n' "$STEP" "$1"
}

# quote ARG: the argument as a shell word that can be pasted back
quote() {
  local word=$1
  if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$word"
  else
    local squote="'"
    printf "'%s'" "${word//$squote/$squote\\$squote$squote}"
  fi
}

# show CMD...: print a command of the plan, quoted as a shell would need it
show() {
  local line="    " word
  for word in "$@"; do
    line+=" $(quote "$word")"
  done
  printf '%s\n' "$line"
}

dry() {
  [[ $DRY_RUN == 1 ]]
}

# run CMD...: print it, then run it (unless dry run)
run() {
  show "$@"
  if ! dry; then
    "$@"
  fi
}

# run_retrying CMD...: like run, retried for a minute (webhooks answer a little after their Deployment is available)
run_retrying() {
  show "$@"
  if dry; then
    return 0
  fi
  local attempt
  for attempt in 1 2 3 4 5 6; do
    if "$@"; then
      return 0
    fi
    echo "     attempt $attempt failed; retrying in 10s" >&2
    sleep 10
  done
  "$@"
}

# capture CMD...: print it, run it and keep its standard output in CAPTURED
capture() {
  show "$@"
  if dry; then
    CAPTURED="<output of: $1 ${2:-}>"
  else
    CAPTURED=$("$@")
  fi
}

# in_background CMD...: start a long-running command (port-forwards); stopped on exit
in_background() {
  printf '%s &\n' "$(show "$@")"
  if ! dry; then
    "$@" > /dev/null 2>&1 &
    PORT_FORWARD_PIDS+=("$!")
  fi
}

# wait_until_empty SECONDS CMD...: poll CMD every 5 s until it prints nothing
wait_until_empty() {
  local timeout_s=$1
  shift
  local quoted="" word
  for word in "$@"; do
    quoted+=" $(quote "$word")"
  done
  # shellcheck disable=SC2016  # the $(...) is printed for the reader, not expanded
  printf '     until [ -z "$(%s)" ]; do sleep 5; done   # at most %ss\n' "${quoted# }" "$timeout_s"
  if dry; then
    return 0
  fi
  local deadline=$((SECONDS + timeout_s))
  while [[ -n "$("$@")" ]]; do
    if ((SECONDS >= deadline)); then
      echo "timed out after ${timeout_s}s waiting for: $*" >&2
      return 1
    fi
    sleep 5
  done
}

# wait_for_port PORT: until something listens on 127.0.0.1:PORT (a port-forward is up)
wait_for_port() {
  local port=$1
  printf '     until (exec 3<>/dev/tcp/127.0.0.1/%s); do sleep 1; done   # at most 60s\n' "$port"
  if dry; then
    return 0
  fi
  local tries=0
  until (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; do
    tries=$((tries + 1))
    if ((tries > 60)); then
      echo "nothing listens on 127.0.0.1:$port after 60s" >&2
      return 1
    fi
    sleep 1
  done
}

json_field() {
  "$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

diagnose() {
  echo "--- diagnostics ---" >&2
  kubectl get inferenceservices,ksvc,pods -A -o wide >&2 || true
  kubectl describe inferenceservice "$TEMPLATE" -n "$NAMESPACE" >&2 || true
  kubectl logs -n stokehold-system -l app.kubernetes.io/name=stokehold-controller --tail=100 --prefix >&2 || true
}

cleanup() {
  local status=$?
  if ((status != 0)) && ! dry; then
    diagnose
  fi
  step "clean up: stop the port-forwards and delete the cluster (KEEP_CLUSTER=1 keeps it)"
  echo "     kill <port-forward pids>"
  if ! dry; then
    for pid in "${PORT_FORWARD_PIDS[@]}"; do
      kill "$pid" 2> /dev/null || true
    done
  fi
  if [[ $KEEP_CLUSTER == 1 ]]; then
    echo "     # keeping cluster $CLUSTER (delete it: kind delete cluster --name $CLUSTER)"
  elif dry || ((CLUSTER_CREATED == 1)); then
    # never a cluster this run did not create
    run kind delete cluster --name "$CLUSTER" || true
  fi
  exit "$status"
}

# ---- the plan ----

if dry; then
  echo "stokehold kind end-to-end: plan (DRY_RUN=1, nothing is run)"
fi
trap cleanup EXIT

step "preflight: the tools this run needs"
run command -v docker kind kubectl "$PYTHON" "$STOKEHOLD"
run docker info --format '{{.ServerVersion}}'

step "create the kind cluster ($KIND_NODE_IMAGE)"
run kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --wait 180s
CLUSTER_CREATED=1

step "install cert-manager $CERT_MANAGER_VERSION (KServe's webhook certificates)"
run kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
run kubectl wait deployment --all -n cert-manager --for=condition=Available --timeout=300s

step "install Knative Serving $KNATIVE_SERVING_VERSION with Kourier $KOURIER_VERSION"
run kubectl apply -f "https://github.com/knative/serving/releases/download/$KNATIVE_SERVING_VERSION/serving-crds.yaml"
run kubectl apply -f "https://github.com/knative/serving/releases/download/$KNATIVE_SERVING_VERSION/serving-core.yaml"
run kubectl apply -f "https://github.com/knative/net-kourier/releases/download/$KOURIER_VERSION/kourier.yaml"
run kubectl patch configmap/config-network -n knative-serving --type merge \
  -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
run kubectl wait deployment --all -n knative-serving --for=condition=Available --timeout=300s
run kubectl wait deployment --all -n kourier-system --for=condition=Available --timeout=300s

step "apply stokehold's Knative settings (scale to zero, progress deadline, pod-spec features)"
run_retrying kubectl apply --server-side --field-manager=stokehold --force-conflicts -k "$REPO_ROOT/manifests/knative"

step "install KServe $KSERVE_VERSION (serverless mode)"
run kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve.yaml"
run kubectl wait deployment/kserve-controller-manager -n kserve --for=condition=Available --timeout=300s
run_retrying kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve-cluster-resources.yaml"

step "tell KServe the ingress is Kourier, not Istio (no VirtualService)"
capture kubectl get configmap inferenceservice-config -n kserve -o 'jsonpath={.data.ingress}'
ingress_config=$CAPTURED
capture "$PYTHON" -c 'import json, sys; c = json.loads(sys.argv[1]); c["disableIstioVirtualHost"] = True; print(json.dumps({"data": {"ingress": json.dumps(c)}}))' "$ingress_config"
run kubectl patch configmap inferenceservice-config -n kserve --type merge -p "$CAPTURED"
run kubectl rollout restart deployment/kserve-controller-manager -n kserve
run kubectl rollout status deployment/kserve-controller-manager -n kserve --timeout=300s

step "install NATS with JetStream (manifests/e2e/nats)"
run kubectl apply -k "$REPO_ROOT/manifests/e2e/nats"
run kubectl wait deployment/nats -n nats --for=condition=Available --timeout=300s

step "build the controller and CPU runtime images and load them into kind"
run docker build -f "$REPO_ROOT/controller/Dockerfile" -t "$CONTROLLER_IMAGE" "$REPO_ROOT"
run docker build -f "$REPO_ROOT/runtimes/Dockerfile.cpu" -t "$RUNTIME_IMAGE" "$REPO_ROOT"
run kind load docker-image "$CONTROLLER_IMAGE" "$RUNTIME_IMAGE" --name "$CLUSTER"

step "install stokehold: kubectl apply -k (overlays/default with the e2e images)"
run_retrying kubectl apply -k "$REPO_ROOT/manifests/e2e/overlay"
run kubectl rollout status deployment/stokehold-controller -n stokehold-system --timeout=300s
run kubectl create namespace "$NAMESPACE"

step "publish $TEMPLATE and deploy it (events on NATS through a port-forward)"
in_background kubectl port-forward -n nats svc/nats "$NATS_LOCAL_PORT:4222"
wait_for_port "$NATS_LOCAL_PORT"
export STOKEHOLD_NATS_URL="nats://127.0.0.1:$NATS_LOCAL_PORT"
show export "STOKEHOLD_NATS_URL=$STOKEHOLD_NATS_URL"
run "$STOKEHOLD" publish "$REPO_ROOT/templates/catalog/$TEMPLATE.yaml"
run "$STOKEHOLD" deploy "$TEMPLATE" --namespace "$NAMESPACE" --keep-hot "$KEEP_HOT"

step "wait until the InferenceService is Ready"
run kubectl wait "inferenceservice/$TEMPLATE" -n "$NAMESPACE" --for=condition=Ready --timeout="$READY_TIMEOUT"
run kubectl get inferenceservice "$TEMPLATE" -n "$NAMESPACE" \
  -o 'custom-columns=NAME:.metadata.name,VERSION:.metadata.labels.stokehold\.dev/version,HASH:.metadata.annotations.stokehold\.dev/content-hash'

step "call it with the openai SDK (warm)"
capture kubectl get ksvc "$TEMPLATE-predictor" -n "$NAMESPACE" -o 'jsonpath={.status.url}'
service_url=$CAPTURED
in_background kubectl port-forward -n kourier-system svc/kourier "$GATEWAY_LOCAL_PORT:80"
wait_for_port "$GATEWAY_LOCAL_PORT"
capture "$PYTHON" "$SCRIPT_DIR/openai_call.py" --base-url "http://127.0.0.1:$GATEWAY_LOCAL_PORT/v1" \
  --service-url "$service_url" --model "$TEMPLATE"
warm_result=$CAPTURED
echo "     # warm call: $warm_result"

step "wait until Knative has scaled it to zero (keep-hot $KEEP_HOT + grace period)"
wait_until_empty "$SCALE_TO_ZERO_TIMEOUT_S" \
  kubectl get pods -n "$NAMESPACE" -l "serving.kserve.io/inferenceservice=$TEMPLATE" -o name

step "call it again from zero and report the cold-start time"
capture "$PYTHON" "$SCRIPT_DIR/openai_call.py" --base-url "http://127.0.0.1:$GATEWAY_LOCAL_PORT/v1" \
  --service-url "$service_url" --model "$TEMPLATE"
cold_result=$CAPTURED
if dry; then
  echo "     # report: cold-start seconds vs warm-call seconds"
else
  echo "cold start: $(json_field "$cold_result" seconds)s (warm call: $(json_field "$warm_result" seconds)s)"
  echo "reply from zero: $(json_field "$cold_result" reply)"
fi
