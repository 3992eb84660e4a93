//! Proves each component of the loopback environment through the clients sluice uses: kube-rs against the
//! real apiserver, controller-manager, scheduler and local node; rdkafka against Apache Kafka; the official
//! MongoDB driver against mongo-java-server and the scripted fault peer.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::{WatchStreamExt, conditions, wait::await_condition, watcher};
use kube::{Api, ResourceExt};
use mongodb::bson::{Document, doc};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::json;
use support::{Env, merge, namespace, unique, wait_for};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn kube_client_creates_and_watches_a_configmap() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    let ns = namespace(&client, &env, "smoke-watch").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    let mut seen = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "hello" }, "data": { "greeting": "hi" }
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();

    let got = tokio::time::timeout(WAIT, async {
        while let Some(obj) = seen.try_next().await.expect("watch stream") {
            if obj.name_any() == "hello" {
                return obj;
            }
        }
        panic!("watch ended without the ConfigMap");
    })
    .await
    .expect("the watch delivers the ConfigMap");
    assert_eq!(got.data.unwrap()["greeting"], "hi");
}

#[tokio::test]
async fn a_crd_with_a_cel_rule_rejects_a_bad_object() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    let group = format!("{}.smoke.sluice.dev", unique("g"));
    let crd_name = format!("ranges.{group}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": { "name": crd_name },
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": { "plural": "ranges", "singular": "range", "kind": "Range" },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "required": ["min", "max"],
                        "properties": { "min": { "type": "integer" }, "max": { "type": "integer" } },
                        "x-kubernetes-validations": [{ "rule": "self.min <= self.max",
                                                       "message": "min must not exceed max" }]
                    }}
                }}
            }]
        }
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(crds.clone(), &crd_name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established in time")
    .unwrap();

    let ns = namespace(&client, &env, "smoke-cel").await;
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, "v1", "Range"), "ranges");
    let ranges: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let object = |min: i64, max: i64| {
        DynamicObject::new(&format!("r{min}-{max}"), &resource)
            .data(json!({ "spec": { "min": min, "max": max } }))
    };
    let err = ranges
        .create(&PostParams::default(), &object(5, 1))
        .await
        .expect_err("the CEL rule rejects min > max");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(
                status.message.contains("min must not exceed max"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 422 from the apiserver, got {other:?}"),
    }
    ranges
        .create(&PostParams::default(), &object(1, 5))
        .await
        .expect("a valid object is accepted");

    crds.delete(&crd_name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_garbage_collector_deletes_owned_objects() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    let ns = namespace(&client, &env, "smoke-gc").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": "owner" } })).unwrap();
    let owner = api.create(&PostParams::default(), &owner).await.unwrap();
    let dependent: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "dependent", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().unwrap()
        }]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &dependent)
        .await
        .unwrap();

    api.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    wait_for("the dependent to be garbage-collected", WAIT, || async {
        match api.get_opt("dependent").await {
            Ok(None) => Ok(()),
            Ok(Some(cm)) => Err(format!(
                "dependent still there, ownerReferences {:?}",
                cm.metadata.owner_references
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

/// A pod of the sluice image, as the scheduler and the local node see it.
fn sluice_pod(name: &str, args: &[&str], extra: serde_json::Value) -> Pod {
    let mut pod = json!({
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "sluice", "image": "ghcr.io/sluice-dev/sluice:dev", "args": args,
                "env": [{ "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }]
            }]
        }
    });
    merge(&mut pod, extra);
    serde_json::from_value(pod).unwrap()
}

async fn wait_for_phase(pods: &Api<Pod>, name: &str, phase: &str) -> Pod {
    wait_for(&format!("pod {name} to be {phase}"), WAIT, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        let status = pod.status.clone().unwrap_or_default();
        if status.phase.as_deref() == Some(phase) {
            Ok(pod)
        } else {
            Err(format!(
                "phase {:?}, node {:?}, status {:?}",
                status.phase,
                pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                status.container_statuses
            ))
        }
    })
    .await
}

#[tokio::test]
async fn a_pod_is_scheduled_onto_the_local_node_and_succeeds() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    let ns = namespace(&client, &env, "smoke-pod").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &sluice_pod("version", &["--version"], json!({})),
    )
    .await
    .unwrap();

    let pod = wait_for_phase(&pods, "version", "Succeeded").await;
    let spec = pod.spec.unwrap();
    let status = pod.status.unwrap();
    assert_eq!(
        spec.node_name.as_deref(),
        Some("sluice-local"),
        "bound by the scheduler"
    );
    let ip = status.pod_ip.expect("pod IP");
    assert!(
        ip.starts_with("127.1."),
        "a loopback pod IP of its own, got {ip}"
    );
    let terminated = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .expect("terminated state");
    assert_eq!(terminated.exit_code, 0);
    assert_eq!(terminated.reason.as_deref(), Some("Completed"));
}

#[tokio::test]
async fn a_failing_pod_reports_its_termination_message() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    let ns = namespace(&client, &env, "smoke-fail").await;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "task" },
        "data": { "task.yaml": "connector: orders\ntaskId: 0\ntype: mongodb-sourc\n" }
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = sluice_pod(
        "bad-config",
        &["task", "--config", "/etc/sluice/task.yaml"],
        json!({ "spec": {
            "containers": [{
                "name": "sluice", "image": "ghcr.io/sluice-dev/sluice:dev",
                "args": ["task", "--config", "/etc/sluice/task.yaml"],
                "env": [{ "name": "SLUICE_TERMINATION_LOG", "value": "/dev/termination-log" }],
                "volumeMounts": [{ "name": "config", "mountPath": "/etc/sluice" }]
            }],
            "volumes": [{ "name": "config", "configMap": { "name": "task" } }]
        }}),
    );
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let pod = wait_for_phase(&pods, "bad-config", "Failed").await;
    let terminated = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .expect("terminated state");
    assert_eq!(terminated.exit_code, 2);
    assert_eq!(terminated.reason.as_deref(), Some("Error"));
    let message: serde_json::Value =
        serde_json::from_str(terminated.message.as_deref().expect("termination message")).unwrap();
    assert_eq!(message["reason"], "ConfigInvalid");
    let text = message["message"].as_str().unwrap();
    assert!(
        text.contains("type: unknown variant `mongodb-sourc`"),
        "{text}"
    );
}

#[tokio::test]
async fn rdkafka_creates_a_topic_produces_consumes_and_commits_a_transaction() {
    let Some(env) = Env::get() else { return };
    let topic = unique("smoke");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created[0].is_ok(), "{created:?}");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("transactional.id", unique("smoke-tx"))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "__connect.errors.topic",
            value: Some("orders"),
        })
        .insert(Header {
            key: "__connect.errors.partition",
            value: Some("0"),
        });
    // One record outside a transaction is not allowed on a transactional producer: everything goes in one.
    producer.begin_transaction().unwrap();
    producer
        .send(
            FutureRecord::to(&topic)
                .key("k1")
                .payload("v1")
                .headers(headers)
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();
    producer.begin_transaction().unwrap();
    producer
        .send(
            FutureRecord::to(&topic)
                .key("aborted")
                .payload("x")
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    producer.abort_transaction(Duration::from_secs(30)).unwrap();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", unique("smoke-group"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let msg = tokio::time::timeout(WAIT, consumer.recv())
        .await
        .expect("a record within the deadline")
        .unwrap();
    assert_eq!(msg.key(), Some(&b"k1"[..]));
    assert_eq!(msg.payload(), Some(&b"v1"[..]));
    let got: BTreeMap<String, String> = msg
        .headers()
        .expect("headers")
        .iter()
        .map(|h| {
            (
                h.key.to_string(),
                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    assert_eq!(got["__connect.errors.topic"], "orders");
    assert_eq!(got["__connect.errors.partition"], "0");
    consumer.commit_message(&msg, CommitMode::Sync).unwrap();
    drop(msg);
    // The aborted record is never delivered to a read_committed consumer.
    let next = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await;
    assert!(
        next.is_err(),
        "only the committed record arrives, got {:?}",
        next.map(|m| m.map(|m| m.key().map(|k| k.to_vec())))
    );
    let committed = consumer.committed(Duration::from_secs(10)).unwrap();
    let offset = committed
        .find_partition(&topic, 0)
        .expect("partition 0 committed")
        .offset();
    assert_eq!(
        offset,
        rdkafka::Offset::Offset(1),
        "the group's committed position follows the record"
    );

    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_mongodb_driver_inserts_and_receives_a_change_event() {
    let Some(env) = Env::get() else { return };
    let client = mongodb::Client::with_uri_str(&env.mongodb_uri)
        .await
        .unwrap();
    let coll = client
        .database(&unique("smoke"))
        .collection::<Document>("orders");
    let mut stream = coll.watch().await.expect("open a change stream");
    coll.insert_one(doc! { "_id": 1, "item": "apple" })
        .await
        .unwrap();

    let event = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a change event within the deadline")
        .expect("stream open")
        .expect("change event");
    assert_eq!(
        event.operation_type,
        mongodb::change_stream::event::OperationType::Insert
    );
    assert_eq!(
        event.full_document.unwrap().get_str("item").unwrap(),
        "apple"
    );
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1);
}

#[tokio::test]
async fn through_the_fault_peer_watch_returns_error_286() {
    let Some(env) = Env::get() else { return };
    let collection = unique("lost");
    env.fault_peer_rule(json!({
        "command": "aggregate", "changeStream": true, "collection": collection, "times": 1,
        "reply": { "ok": 0, "code": 286, "codeName": "ChangeStreamHistoryLost",
                   "errmsg": "Resume of change stream was not possible, as the resume point may no longer be in the oplog." }
    }))
    .await;
    let before = env.fault_peer_commands().await;

    let client = mongodb::Client::with_uri_str(&env.fault_peer_uri)
        .await
        .unwrap();
    let coll = client.database("smoke").collection::<Document>(&collection);
    let err = coll.watch().await.expect_err("the fault peer answers 286");
    match *err.kind {
        mongodb::error::ErrorKind::Command(ref command) => {
            assert_eq!(command.code, 286, "{command:?}");
            assert_eq!(command.code_name, "ChangeStreamHistoryLost");
        }
        ref other => panic!("expected a command error, got {other:?}"),
    }
    let after = env.fault_peer_commands().await;
    let count = |v: &serde_json::Value| v["changeStreamAggregates"].as_u64().unwrap_or(0);
    assert_eq!(
        count(&after) - count(&before),
        1,
        "the driver does not retry a non-resumable error"
    );
}

#[test]
fn the_environment_listens_on_loopback_only() {
    let Some(env) = Env::get() else { return };
    let ours = pids_with_marker(&env.marker);
    assert!(
        ours.len() >= 8,
        "expected the environment's processes, found {ours:?}"
    );
    let sockets = socket_owners(&ours);
    let mut checked = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (cols[1], cols[3], cols[9]);
            if state != "0A" {
                continue; // not LISTEN
            }
            if let Some(pid) = sockets.get(inode) {
                checked += 1;
                assert!(
                    is_loopback(local.split(':').next().unwrap()),
                    "pid {pid} listens on {local} ({table})"
                );
            }
        }
    }
    assert!(
        checked >= 8,
        "found only {checked} listening sockets of the environment"
    );
}

fn pids_with_marker(marker: &str) -> HashSet<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

fn socket_owners(pids: &HashSet<u32>) -> HashMap<String, u32> {
    let mut owners = HashMap::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                {
                    owners.insert(inode.to_string(), *pid);
                }
            }
        }
    }
    owners
}

/// `/proc/net/tcp{,6}` addresses are hex words in host (little-endian) order.
fn is_loopback(hex: &str) -> bool {
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .map(|w| w.to_le_bytes()[0] == 127)
            .unwrap_or(false),
        32 => {
            let words: Vec<u32> = (0..4)
                .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).unwrap())
                .collect();
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let v4_mapped = bytes[..10].iter().all(|b| *b == 0)
                && bytes[10] == 0xff
                && bytes[11] == 0xff
                && bytes[12] == 127;
            let v6_loopback = bytes[..15].iter().all(|b| *b == 0) && bytes[15] == 1;
            v4_mapped || v6_loopback
        }
        _ => false,
    }
}
