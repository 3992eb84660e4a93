#!/usr/bin/env bash
# make demo: sluice on the embedded loopback cluster. Grows with the project; today it brings the cluster up,
# runs a sluice pod through the real scheduler and the local node, and shows what a user can poke at.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENVCTL="python3 tests/env/envctl.py"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() { if [ "${KEEP:-}" != 1 ]; then step "Tearing down"; $ENVCTL down; fi; }
trap cleanup EXIT

step "Bringing up the loopback cluster (etcd, kube-apiserver, controller-manager, scheduler, local node, Kafka, MongoDB peers)"
$ENVCTL up
source .env/env
kubectl() { "$SLUICE_BIN_DIR/kubectl" "$@"; }

step "The cluster"
kubectl get nodes -o wide

step "A pod of the sluice image, scheduled onto the local node"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n demo delete pod sluice-version --ignore-not-found >/dev/null
kubectl -n demo run sluice-version --image=ghcr.io/sluice-dev/sluice:dev --restart=Never -- --version
kubectl -n demo wait --for=jsonpath='{.status.phase}'=Succeeded pod/sluice-version --timeout=60s
kubectl -n demo get pod sluice-version -o wide
echo "its output: $(cat "$SLUICE_NODE_PODS_DIR"/$(kubectl -n demo get pod sluice-version -o jsonpath='{.metadata.uid}')/containers/sluice-version/output.log 2>/dev/null || echo '(removed)')"

if [ "${KEEP:-}" = 1 ]; then
  step "Left running. Try:"
  echo "  source $SLUICE_ENV_DIR/env"
  echo "  $SLUICE_BIN_DIR/kubectl get nodes,pods -A"
  echo "  make env-down    # when done"
fi
