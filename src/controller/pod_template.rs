//! The one pod template every operator-made pod (task and replay) is built from: Pod Security Standards
//! `restricted`, no service account token, `restartPolicy: Never` (the operator restarts with its own
//! backoff), the termination message read back from the file or the log tail, and Secret material passed
//! by reference (Secret-backed env and volumes), never by value.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector,
    Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::crd::KafkaConnection;
use crate::names::CONFIG_DIR;

/// What the operator's flags set on every pod it creates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodDefaults {
    /// The sluice image (a Connector's `template.image` overrides it for its tasks).
    pub image: String,
    /// The ServiceAccount pods run as (a Connector's `template.serviceAccountName` overrides it). The chart
    /// makes one with no API rights; pods never mount its token.
    pub service_account: Option<String>,
}

/// The parts of a pod that differ between task and replay pods.
#[derive(Clone, Debug, Default)]
pub struct PodParts {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub owner: Option<OwnerReference>,
    /// The container's name (`task`, `replay`).
    pub container: String,
    pub image: String,
    pub args: Vec<String>,
    /// Env beyond the downward API's, which every pod gets.
    pub env: Vec<EnvVar>,
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    pub ports: Vec<ContainerPort>,
    pub readiness_probe: Option<Probe>,
    pub resources: Option<ResourceRequirements>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// The pod's ServiceAccount; the operator's default when `None`.
    pub service_account: Option<String>,
}

/// How long a stopping pod has before SIGKILL.
pub const TERMINATION_GRACE_SECONDS: i64 = 30;

/// The pod, restricted, from its parts and the operator's defaults.
pub fn restricted_pod(parts: PodParts, defaults: &PodDefaults) -> Pod {
    let mut env = downward_env();
    env.extend(parts.env);
    let some_map = |m: BTreeMap<String, String>| (!m.is_empty()).then_some(m);
    Pod {
        metadata: ObjectMeta {
            name: Some(parts.name),
            namespace: Some(parts.namespace),
            labels: some_map(parts.labels),
            annotations: some_map(parts.annotations),
            owner_references: parts.owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            node_selector: some_map(parts.node_selector),
            tolerations: non_empty(parts.tolerations),
            service_account_name: parts
                .service_account
                .or_else(|| defaults.service_account.clone()),
            security_context: Some(pod_security_context()),
            volumes: non_empty(parts.volumes),
            containers: vec![Container {
                name: parts.container,
                image: Some(parts.image),
                args: non_empty(parts.args),
                env: Some(env),
                ports: non_empty(parts.ports),
                readiness_probe: parts.readiness_probe,
                resources: parts.resources,
                volume_mounts: non_empty(parts.mounts),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                security_context: Some(container_security_context()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// The pod security context of every operator-made pod (Pod Security Standards: restricted).
fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container security context of every operator-made container (restricted).
fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Env from the downward API every sluice process reads.
fn downward_env() -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        plain_env(
            "SLUICE_TERMINATION_LOG",
            crate::wire::termination::DEFAULT_PATH,
        ),
    ]
}

/// An env var with a value.
pub fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// An env var from a Secret key.
pub fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Env for a Kafka connection: SASL credentials from their Secret, and where the TLS files are mounted
/// (see [`kafka_tls_volumes`]).
pub fn kafka_env(kafka: &KafkaConnection) -> Vec<EnvVar> {
    let mut env = vec![];
    if let Some(sasl) = &kafka.sasl {
        let r = &sasl.secret_ref;
        env.push(secret_env(
            "SLUICE_KAFKA_SASL_USERNAME",
            &r.name,
            &r.username_key,
        ));
        env.push(secret_env(
            "SLUICE_KAFKA_SASL_PASSWORD",
            &r.name,
            &r.password_key,
        ));
    }
    if let Some(tls) = &kafka.tls {
        for (var, part, present) in [
            ("SLUICE_KAFKA_TLS_CA_FILE", "ca", tls.ca.is_some()),
            (
                "SLUICE_KAFKA_TLS_CERT_FILE",
                "cert",
                tls.certificate.is_some(),
            ),
            ("SLUICE_KAFKA_TLS_KEY_FILE", "key", tls.key.is_some()),
        ] {
            if present {
                env.push(plain_env(
                    var,
                    &format!("{CONFIG_DIR}/kafka-tls/{part}/{part}.pem"),
                ));
            }
        }
    }
    env
}

/// Secret volumes (and their mounts) for the Kafka TLS material, under `/etc/sluice/kafka-tls/<part>/`.
pub fn kafka_tls_volumes(kafka: &KafkaConnection) -> (Vec<Volume>, Vec<VolumeMount>) {
    let Some(tls) = &kafka.tls else {
        return (vec![], vec![]);
    };
    let mut volumes = vec![];
    let mut mounts = vec![];
    for (part, reference) in [
        ("ca", &tls.ca),
        ("cert", &tls.certificate),
        ("key", &tls.key),
    ] {
        if let Some(r) = reference {
            let name = format!("kafka-tls-{part}");
            volumes.push(Volume {
                name: name.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(r.name.clone()),
                    items: Some(vec![KeyToPath {
                        key: r.key.clone(),
                        path: format!("{part}.pem"),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name,
                mount_path: format!("{CONFIG_DIR}/kafka-tls/{part}"),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    (volumes, mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pod_is_restricted_and_takes_the_default_service_account() {
        let defaults = PodDefaults {
            image: "sluice:dev".into(),
            service_account: Some("sluice-task".into()),
        };
        let pod = restricted_pod(
            PodParts {
                name: "p".into(),
                namespace: "ns".into(),
                container: "task".into(),
                image: "sluice:dev".into(),
                ..Default::default()
            },
            &defaults,
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.service_account_name.as_deref(), Some("sluice-task"));
        let c = &spec.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(
            env,
            [
                "POD_NAME",
                "POD_NAMESPACE",
                "POD_IP",
                "SLUICE_TERMINATION_LOG"
            ]
        );
        assert_eq!(spec.security_context.unwrap().run_as_non_root, Some(true));
    }
}
