#!/usr/bin/env bash
# make demo: sluice on the embedded loopback cluster, installed with helm like in a real cluster. It applies the
# examples, streams MongoDB changes to Kafka, sends a poison record to a dead-letter queue and replays it, has
# MongoDB lose the source's resume point and shows the automatic offset-partition rotation, printing
# `kubectl get conn,dlq` and the Connectors' status along the way. KEEP=1 leaves everything running.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENVCTL="python3 tests/env/envctl.py"
KAFKA_CP="tests/env/kafka/target/lib/*"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() { if [ "${KEEP:-}" != 1 ]; then step "Tearing down"; $ENVCTL down; fi; }
trap cleanup EXIT

step "Bringing up the loopback cluster (etcd, kube-apiserver, controller-manager, scheduler, local node, Kafka, MongoDB peers)"
$ENVCTL up
source .env/env
kubectl() { "$SLUICE_BIN_DIR/kubectl" "$@"; }
helm() { "$SLUICE_BIN_DIR/helm" "$@"; }
# Kafka's own tools, from the broker's jars.
kafka_tool() { java -cp "$KAFKA_CP" "$@" --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" 2>/dev/null; }
consume() { # topic count [extra properties...]
  local topic=$1 count=$2; shift 2
  kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer --topic "$topic" --from-beginning \
    --max-messages "$count" --timeout-ms 20000 "$@" | cut -c1-220 || true
}
mongo() { .cache/venv/bin/python -c "import os, pymongo; db = pymongo.MongoClient(os.environ['MONGODB_URI']).shop; $1"; }
example() { sed "s/my-cluster-kafka-bootstrap:9092/$KAFKA_BOOTSTRAP_SERVERS/" "examples/$1"; }
conn_status() { # connector: per-task counters as the Connector's status shows them
  kubectl -n demo get conn "$1" -o jsonpath='{range .status.tasks[*]}task {.id}: pod {.pod}, recordsIn {.recordsIn}, recordsOut {.recordsOut}, {.metrics}{"\n"}{end}'
}
conditions() {
  kubectl -n demo get conn "$1" -o jsonpath='{range .status.conditions[*]}  {.type}={.status} {.reason}: {.message}{"\n"}{end}'
}

step "The cluster"
kubectl get nodes -o wide

step "Installing sluice with helm (cluster mode; the operator runs as a pod on the local node)"
kubectl create namespace demo
echo '$ helm install sluice charts/sluice -n sluice-system --create-namespace --set taskServiceAccount.namespaces={demo} ...'
helm install sluice charts/sluice --namespace sluice-system --create-namespace --set image.tag=dev \
  --set 'taskServiceAccount.namespaces={demo}' --set taskStatusInterval=2s --set deadLetterRefresh=2s \
  --wait --timeout 120s
kubectl -n sluice-system get deploy,pods -o wide

step "The examples: a source with heartbeats and a DLQ, a sink with a DLQ"
kubectl -n demo create secret generic mongodb --from-literal=uri="$SLUICE_FAULT_PEER_URI"
kafka_tool org.apache.kafka.tools.TopicCommand --create --topic orders --partitions 1 --replication-factor 1
for f in source-with-heartbeats.yaml sink-with-dead-letter-queue.yaml; do
  echo "\$ kubectl -n demo apply -f examples/$f"
  example "$f" | kubectl -n demo apply -f -
done
kubectl -n demo wait --for=condition=Ready conn/orders-cdc conn/orders-sink dlq/orders-dlq dlq/orders-sink-dlq --timeout=120s
step "kubectl get conn,dlq,pods"
kubectl -n demo get conn,dlq,pods

step "Documents into MongoDB shop.orders; the source streams them to Kafka topic cdc.shop.orders"
mongo 'db.orders.insert_many([{"_id": 1, "item": "apple", "qty": 3}, {"_id": 2, "item": "pear", "qty": 1}]); db.orders.update_one({"_id": 1}, {"$set": {"qty": 5}}); print("inserted 2 documents, updated 1")'
consume cdc.shop.orders 3
kubectl -n demo wait --for=jsonpath='{.status.tasks[0].recordsOut}'=3 conn/orders-cdc --timeout=30s >/dev/null
echo "orders-cdc as its status shows it (the operator reads each task's /v1/status every 2 s):"
conn_status orders-cdc

step "A poison record for the sink: topic orders gets one good and one unreadable record"
printf '{"_id": 7, "item": "plum", "qty": 2}\nthis is not JSON\n' | java -cp "$KAFKA_CP" org.apache.kafka.tools.ConsoleProducer \
  --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --topic orders 2>/dev/null
kubectl -n demo wait --for=jsonpath='{.status.totals.deadLetterQueueProduceRequests}'=1 conn/orders-sink --timeout=60s >/dev/null
kubectl -n demo get conn orders-sink
conn_status orders-sink
echo "conditions:"; conditions orders-sink
step "The record in the dead-letter topic: original value, Kafka Connect's context headers"
consume orders-sink-dlq 1 --formatter-property print.headers=true --formatter-property headers.separator=$'\n  ' \
  --formatter-property headers.key.separator='=' --formatter-property print.value=true --formatter-property key.separator=$'\n  value: '
kubectl -n demo wait --for=jsonpath='{.status.inspection.depth}'=1 dlq/orders-sink-dlq --timeout=60s >/dev/null
kubectl -n demo get dlq orders-sink-dlq
echo "by error class: $(kubectl -n demo get dlq orders-sink-dlq -o jsonpath='{.status.inspection.byErrorClass}')"

step "Replaying the DLQ (examples/dead-letter-replay.yaml): a dry run, then the replay"
example dead-letter-replay.yaml | kubectl -n demo apply -f -
kubectl -n demo wait --for=jsonpath='{.status.replays[1].phase}'=Succeeded dlq/orders-sink-dlq --timeout=90s >/dev/null
kubectl -n demo get dlq orders-sink-dlq -o jsonpath='{range .status.replays[*]}  replay {.id}: {.phase}, {.message}{"\n"}{end}'
echo "The record is still not JSON, so it failed again and came back with sluice.replay.count=1:"
kubectl -n demo wait --for=jsonpath='{.status.inspection.depth}'=2 dlq/orders-sink-dlq --timeout=60s >/dev/null
consume orders-sink-dlq 2 --formatter-property print.headers=true | grep -oE 'sluice\.replay\.[a-z]+:[^,[:space:]]+' | sed 's/^/  /' || true

step "MongoDB loses the source's resume point: the fault peer answers the next resume with error 286"
curl -s -X POST "$SLUICE_FAULT_PEER_CONTROL/rules" -d '{"command": "aggregate", "changeStream": true,
  "database": "shop", "times": 1, "reply": {"ok": 0, "code": 286, "codeName": "ChangeStreamHistoryLost",
  "errmsg": "Resume of change stream was not possible, as the resume point may no longer be in the oplog."}}' >/dev/null
# The live cursor is gone (CursorNotFound), so the driver resumes from its token, which meets the 286.
curl -s -X POST "$SLUICE_FAULT_PEER_CONTROL/rules" -d '{"command": "getMore", "database": "shop",
  "collection": "orders", "times": 1, "reply": {"ok": 0, "code": 43, "codeName": "CursorNotFound",
  "errmsg": "cursor id 1 not found"}}' >/dev/null
kubectl -n demo wait --for=jsonpath='{.status.offsets.partitionName}'=orders-cdc.1 conn/orders-cdc --timeout=60s >/dev/null
kubectl -n demo wait --for=condition=ResumeTokenRecovered conn/orders-cdc --timeout=60s >/dev/null
kubectl -n demo get conn orders-cdc
echo "rotation: $(kubectl -n demo get conn orders-cdc -o jsonpath='{.status.offsets.rotations[0]}')"
mongo 'db.orders.insert_one({"_id": 3, "item": "fig", "qty": 2}); print("inserted 1 document")'
kubectl -n demo wait --for=jsonpath='{.status.tasks[0].recordsOut}'=1 conn/orders-cdc --timeout=30s >/dev/null
echo "The new task streams under the new partition name:"
conn_status orders-cdc
echo "conditions:"; conditions orders-cdc

step "Events"
kubectl -n demo get events --field-selector involvedObject.apiVersion=sluice.dev/v1alpha1 --sort-by=.eventTime \
  -o custom-columns=TYPE:.type,REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message | cut -c1-200 | tail -14
step "kubectl get conn,dlq"
kubectl -n demo get conn,dlq

if [ "${KEEP:-}" = 1 ]; then
  step "Left running. Try:"
  echo "  source $SLUICE_ENV_DIR/env"
  echo "  \$SLUICE_BIN_DIR/kubectl -n demo get conn,dlq,pods"
  echo "  \$SLUICE_BIN_DIR/kubectl -n demo describe conn orders-cdc"
  echo "  \$SLUICE_BIN_DIR/helm -n sluice-system status sluice"
  echo "  make env-down    # when done"
fi
