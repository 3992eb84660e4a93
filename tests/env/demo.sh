#!/usr/bin/env bash
# make demo: sluice on the embedded loopback cluster. Grows with the project; today it brings the cluster up,
# installs the CRDs, runs the operator, applies a DeadLetterQueue and a source Connector, streams documents,
# then has MongoDB lose the source's resume point and shows the automatic offset-partition rotation.
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

step "Installing the CRDs"
kubectl apply --server-side -f crds/

step "Running the operator (log: $SLUICE_ENV_DIR/logs/operator.log)"
# The marker lets `envctl.py down` find and stop it with the rest of the environment.
env "${SLUICE_ENV_MARKER%%=*}=${SLUICE_ENV_MARKER#*=}" SLUICE_METRICS_ADDR=127.0.0.1:0 POD_NAMESPACE=default \
  SLUICE_TASK_IMAGE=ghcr.io/sluice-dev/sluice:dev SLUICE_TASK_STATUS_INTERVAL=2s target/debug/sluice operator >"$SLUICE_ENV_DIR/logs/operator.log" 2>&1 &

step "A DeadLetterQueue and a source Connector"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# The source reaches MongoDB through the fault peer, which passes everything through until scripted.
kubectl -n demo create secret generic mongo --from-literal=uri="$SLUICE_FAULT_PEER_URI" --dry-run=client -o yaml \
  | kubectl apply -f - >/dev/null
manifest=$(cat <<YAML
apiVersion: sluice.dev/v1alpha1
kind: DeadLetterQueue
metadata: {name: orders-dlq}
spec:
  kafka: {bootstrapServers: "$KAFKA_BOOTSTRAP_SERVERS"}
  partitions: 3
  retentionMs: 604800000
---
apiVersion: sluice.dev/v1alpha1
kind: Connector
metadata: {name: orders}
spec:
  type: mongodb-source
  kafka: {bootstrapServers: "$KAFKA_BOOTSTRAP_SERVERS"}
  mongodb: {connectionUriSecretRef: {name: mongo, key: uri}, database: shop, collection: orders}
  source: {topicPrefix: cdc}
  errors: {tolerance: all, deadLetterQueueRef: {name: orders-dlq}}
  restart: {backoffInitialSeconds: 5, backoffMaxSeconds: 60}
YAML
)
echo "$manifest"
echo "$manifest" | kubectl -n demo apply -f -
kubectl -n demo wait --for=condition=Ready dlq/orders-dlq --timeout=60s
kubectl -n demo wait --for=condition=Ready conn/orders --timeout=90s

step "kubectl get conn,dlq"
kubectl -n demo get conn,dlq
step "The task pod the operator created, run by the local node"
kubectl -n demo get pods -o wide
step "Writing documents into MongoDB; the source task streams them to Kafka (topic cdc.shop.orders)"
.cache/venv/bin/python - <<PY
import os, pymongo
orders = pymongo.MongoClient(os.environ["MONGODB_URI"]).shop.orders
orders.insert_many([{"_id": 1, "item": "apple", "qty": 3}, {"_id": 2, "item": "pear", "qty": 1}])
orders.update_one({"_id": 1}, {"\$set": {"qty": 5}})
print("inserted 2 documents, updated 1")
PY
pod_ip=$(kubectl -n demo get pod orders-task-0 -o jsonpath='{.status.podIP}')
for _ in $(seq 1 50); do
  status=$(curl -s "http://$pod_ip:8080/v1/status" || true)
  case "$status" in *'"recordsOut":3'*) break ;; esac
  sleep 0.2
done
echo "task status (http://$pod_ip:8080/v1/status): $status"
step "The Connector's conditions"
kubectl -n demo get conn orders -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
step "Task 0 as the Connector's status shows it (the operator reads /v1/status every 2 s)"
kubectl -n demo wait --for=jsonpath='{.status.tasks[0].recordsOut}'=3 conn/orders --timeout=30s >/dev/null
kubectl -n demo get conn orders -o jsonpath='{.status.tasks[0]}{"\n"}'

step "MongoDB loses the resume point: the fault peer answers the next resume with error 286"
curl -s -X POST "$SLUICE_FAULT_PEER_CONTROL/rules" -d '{"command": "aggregate", "changeStream": true,
  "database": "shop", "times": 1, "reply": {"ok": 0, "code": 286, "codeName": "ChangeStreamHistoryLost",
  "errmsg": "Resume of change stream was not possible, as the resume point may no longer be in the oplog."}}'
echo
# The live cursor is gone (CursorNotFound), so the driver resumes from its token, which meets the 286.
curl -s -X POST "$SLUICE_FAULT_PEER_CONTROL/rules" -d '{"command": "getMore", "database": "shop",
  "collection": "orders", "times": 1, "reply": {"ok": 0, "code": 43, "codeName": "CursorNotFound",
  "errmsg": "cursor id 1 not found"}}'
echo
kubectl -n demo wait --for=jsonpath='{.status.offsets.partitionName}'=orders.1 conn/orders --timeout=60s
kubectl -n demo wait --for=condition=ResumeTokenRecovered conn/orders --timeout=60s
kubectl -n demo get conn orders
echo "rotations: $(kubectl -n demo get conn orders -o jsonpath='{.status.offsets.rotations}')"
step "The new task streams under the new partition name"
.cache/venv/bin/python - <<PY
import os, pymongo
pymongo.MongoClient(os.environ["MONGODB_URI"]).shop.orders.insert_one({"_id": 3, "item": "plum", "qty": 2})
print("inserted 1 document")
PY
kubectl -n demo wait --for=jsonpath='{.status.tasks[0].recordsOut}'=1 conn/orders --timeout=30s >/dev/null
kubectl -n demo get conn orders -o jsonpath='{.status.tasks[0]}{"\n"}'
step "The Connector's conditions"
kubectl -n demo get conn orders -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
step "Events"
kubectl -n demo get events --field-selector involvedObject.kind=Connector --sort-by=.lastTimestamp | tail -10

if [ "${KEEP:-}" = 1 ]; then
  step "Left running. Try:"
  echo "  source $SLUICE_ENV_DIR/env"
  echo "  \$SLUICE_BIN_DIR/kubectl -n demo get conn,dlq,pods"
  echo "  \$SLUICE_BIN_DIR/kubectl -n demo describe conn orders"
  echo "  make env-down    # when done"
fi
