//! The desired objects of a Connector (pure, no client): every task's config, the ConfigMap holding them,
//! and one Pod per task with the hash of its config and pod spec (a change of either replaces the pod).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, ContainerPort, HTTPGetAction, KeyToPath, Pod, Probe, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::offsets::{offset_partition_name, offset_storage_topic, startup_mode};
use super::plan::desired_tasks;
use super::validate::Resolved;
use crate::controller::pod_template::{self, PodDefaults, PodParts};
use crate::controller::{Error, Result};
use crate::crd::Connector;
use crate::names::{self, CONFIG_DIR, TASK_HTTP_PORT};
use crate::wire::{TaskConfig, TaskErrors, TaskKafka, TaskMongo, TaskSource};

/// What a Connector should have in the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub config_map: ConfigMap,
    /// One per task, in task order.
    pub pods: Vec<Pod>,
    /// The config hash of each pod, in task order.
    pub hashes: Vec<String>,
}

/// The ConfigMap and the Pods of every task that should run.
pub fn build(conn: &Connector, resolved: &Resolved, defaults: &PodDefaults) -> Result<Desired> {
    let configs: Vec<TaskConfig> = (0..desired_tasks(conn))
        .map(|id| task_config(conn, id, resolved))
        .collect();
    let mut data = BTreeMap::new();
    for cfg in &configs {
        let yaml = serde_yaml::to_string(cfg).map_err(|e| Error::Serialize {
            what: "task config",
            source: serde_json::Error::io(std::io::Error::other(e)),
        })?;
        data.insert(names::task_config_key(cfg.task_id), yaml);
    }
    let mut pods = Vec::with_capacity(configs.len());
    let mut hashes = Vec::with_capacity(configs.len());
    for cfg in &configs {
        let (pod, hash) = build_pod(
            conn,
            cfg.task_id,
            defaults,
            &data[&names::task_config_key(cfg.task_id)],
        )?;
        pods.push(pod);
        hashes.push(hash);
    }
    Ok(Desired {
        config_map: build_config_map(conn, data)?,
        pods,
        hashes,
    })
}

/// The config of task `task_id`.
pub fn task_config(conn: &Connector, task_id: u32, resolved: &Resolved) -> TaskConfig {
    let spec = &conn.spec;
    TaskConfig {
        connector_type: spec.connector_type,
        connector: conn.name_any(),
        namespace: conn.namespace().unwrap_or_default(),
        task_id,
        tasks: desired_tasks(conn).max(1),
        kafka: TaskKafka::from(&spec.kafka),
        mongodb: TaskMongo {
            database: spec.mongodb.database.clone(),
            collection: spec.mongodb.collection.clone(),
        },
        source: spec.source.as_ref().map(|source| TaskSource {
            spec: source.clone(),
            offset_partition_name: offset_partition_name(conn),
            offset_storage_topic: offset_storage_topic(conn),
            startup_mode: startup_mode(conn).unwrap_or(source.startup.mode),
        }),
        sink: spec.sink.clone(),
        errors: TaskErrors {
            spec: spec.errors.clone(),
            dead_letter_routes: resolved.dead_letter_routes.clone(),
        },
        http_port: TASK_HTTP_PORT,
        discard_writes: false,
    }
}

/// A stable 64-bit FNV-1a hash (std's hasher may change between Rust releases; this must not).
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn owner(
    conn: &Connector,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    conn.controller_owner_ref(&())
        .ok_or_else(|| Error::NotNamespaced(conn.name_any()))
}

/// The ConfigMap holding `task-<i>.yaml` for every task.
fn build_config_map(conn: &Connector, data: BTreeMap<String, String>) -> Result<ConfigMap> {
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(names::task_config_map(&conn.name_any())),
            namespace: conn.namespace(),
            labels: Some(names::task_labels(&conn.name_any())),
            owner_references: Some(vec![owner(conn)?]),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    })
}

/// The Pod of task `task_id` and its config hash, which covers the task's config and everything else that
/// shapes the pod.
pub fn build_pod(
    conn: &Connector,
    task_id: u32,
    defaults: &PodDefaults,
    config_yaml: &str,
) -> Result<(Pod, String)> {
    let template = &conn.spec.template;
    let mut labels = template.labels.clone();
    labels.extend(names::task_labels(&conn.name_any()));
    labels.insert(names::LABEL_TASK.into(), task_id.to_string());
    let uri = &conn.spec.mongodb.connection_uri_secret_ref;
    let mut env = vec![pod_template::secret_env(
        "SLUICE_MONGODB_URI",
        &uri.name,
        &uri.key,
    )];
    env.extend(pod_template::kafka_env(&conn.spec.kafka));
    let (tls_volumes, tls_mounts) = pod_template::kafka_tls_volumes(&conn.spec.kafka);
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names::task_config_map(&conn.name_any()),
            items: Some(vec![KeyToPath {
                key: names::task_config_key(task_id),
                path: "task.yaml".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }];
    volumes.extend(tls_volumes);
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    mounts.extend(tls_mounts);
    let parts = PodParts {
        name: names::task_pod(&conn.name_any(), task_id),
        namespace: conn.namespace().unwrap_or_default(),
        labels,
        annotations: template.annotations.clone(),
        owner: Some(owner(conn)?),
        container: "task".into(),
        image: template
            .image
            .clone()
            .unwrap_or_else(|| defaults.image.clone()),
        args: vec![
            "task".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/task.yaml"),
        ],
        env,
        volumes,
        mounts,
        ports: vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(TASK_HTTP_PORT),
            ..Default::default()
        }],
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        resources: template.resources.clone(),
        node_selector: template.node_selector.clone(),
        tolerations: template.tolerations.clone(),
        service_account: template.service_account_name.clone(),
    };
    let mut pod = pod_template::restricted_pod(parts, defaults);
    let spec = serde_json::to_string(&pod.spec).map_err(|source| Error::Serialize {
        what: "Pod",
        source,
    })?;
    let hash = fnv1a(format!("{config_yaml}\n{spec}").as_bytes());
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(names::ANNOTATION_CONFIG_HASH.into(), hash.clone());
    Ok((pod, hash))
}

#[cfg(test)]
mod tests {
    use super::super::plan::tests::{SINK, SOURCE, connector};
    use super::*;
    use crate::crd::ConnectorStatus;
    use crate::crd::connector::{OffsetsStatus, StartupMode};

    fn defaults(image: &str) -> PodDefaults {
        PodDefaults {
            image: image.into(),
            service_account: Some("sluice-task".into()),
        }
    }

    fn resolved() -> Resolved {
        Resolved {
            dead_letter_routes: vec![crate::wire::task_config::TaskDeadLetterRoute {
                stages: vec![],
                error_classes: vec![],
                topics: vec![],
                topic: "orders-dlq".into(),
                context_headers_enable: true,
                partition: Default::default(),
            }],
        }
    }

    #[test]
    fn task_configs_resolve_the_dead_letter_queue_and_offsets() {
        let cfg = task_config(&connector(SINK), 1, &resolved());
        assert_eq!((cfg.task_id, cfg.tasks), (1, 2));
        assert_eq!(cfg.errors.dead_letter_routes, resolved().dead_letter_routes);

        let mut src = connector(SOURCE);
        let cfg = task_config(&src, 0, &Resolved::default());
        let s = cfg.source.unwrap();
        assert_eq!(s.offset_partition_name, "shop-events");
        assert_eq!(s.offset_storage_topic, names::DEFAULT_OFFSET_TOPIC);
        assert_eq!(s.startup_mode, StartupMode::Latest);
        src.status = Some(ConnectorStatus {
            offsets: Some(OffsetsStatus {
                partition_name: Some("shop-events.2".into()),
                rotations: vec![Default::default()],
                ..Default::default()
            }),
            ..Default::default()
        });
        let s = task_config(&src, 0, &Resolved::default()).source.unwrap();
        assert_eq!(s.offset_partition_name, "shop-events.2");
        assert_eq!(
            s.startup_mode,
            StartupMode::CopyExisting,
            "after a rotation the recovery mode applies"
        );
    }

    #[test]
    fn the_config_map_holds_one_config_per_task_and_no_secret() {
        let conn = connector(SINK);
        let desired = build(&conn, &resolved(), &defaults("sluice:dev")).unwrap();
        let data = desired.config_map.data.unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["task-0.yaml", "task-1.yaml"]
        );
        assert_eq!(
            TaskConfig::parse(&data["task-1.yaml"]).unwrap(),
            task_config(&conn, 1, &resolved()),
            "the task reads back what was rendered"
        );
        assert!(
            !data["task-0.yaml"].contains("kafka-user"),
            "no secret names or values in the config"
        );
        assert_eq!(
            desired.config_map.metadata.owner_references.unwrap()[0].kind,
            "Connector"
        );
        assert_eq!(desired.pods.len(), 2);
        assert_eq!(
            desired.pods[1].annotations()[names::ANNOTATION_CONFIG_HASH],
            desired.hashes[1],
            "the hash build returns is the one the pod carries"
        );
    }

    #[test]
    fn pods_take_secrets_by_reference_and_change_hash_with_the_config() {
        let conn = connector(SINK);
        let (pod, hash) = build_pod(&conn, 0, &defaults("sluice:dev"), "a: 1").unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("orders-task-0"));
        let spec = pod.spec.clone().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.service_account_name.as_deref(), Some("sluice-task"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let mut own_sa = conn.clone();
        own_sa.spec.template.service_account_name = Some("orders-sa".into());
        let (own, _) = build_pod(&own_sa, 0, &defaults("sluice:dev"), "a: 1").unwrap();
        assert_eq!(
            own.spec.unwrap().service_account_name.as_deref(),
            Some("orders-sa"),
            "the template's ServiceAccount wins"
        );
        let env = spec.containers[0].env.clone().unwrap();
        let from_secret = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.clone()?.secret_key_ref)
                .map(|r| (r.name, r.key))
        };
        assert_eq!(
            from_secret("SLUICE_MONGODB_URI"),
            Some(("mongo".into(), "uri".into()))
        );
        assert_eq!(
            from_secret("SLUICE_KAFKA_SASL_PASSWORD"),
            Some(("kafka-user".into(), "password".into()))
        );
        assert!(
            env.iter()
                .all(|e| e.value.as_deref().is_none_or(|v| !v.contains("mongodb://")))
        );
        let hash_of =
            |image: &str, yaml: &str| build_pod(&conn, 0, &defaults(image), yaml).unwrap().1;
        assert_eq!(hash, hash_of("sluice:dev", "a: 1"), "stable");
        assert_ne!(hash, hash_of("sluice:dev", "a: 2"), "config changes it");
        assert_ne!(hash, hash_of("sluice:v2", "a: 1"), "image changes it");
        assert_eq!(pod.annotations()[names::ANNOTATION_CONFIG_HASH], hash);
    }
}
