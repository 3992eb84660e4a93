//! What every pod the operator creates shares: the restricted security context, and Kafka credentials
//! passed by reference (Secret-backed env and volumes), never by value.

use serde_json::{Value, json};

use crate::crd::KafkaConnection;

/// Where a pod mounts its config and Secret material.
pub const CONFIG_DIR: &str = "/etc/sluice";

/// What the operator's flags set on every pod it creates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodDefaults {
    /// The sluice image (a Connector's `template.image` overrides it for its tasks).
    pub image: String,
    /// The ServiceAccount pods run as (a Connector's `template.serviceAccountName` overrides it). The chart
    /// makes one with no API rights; pods never mount its token.
    pub service_account: Option<String>,
}

/// How a pod's (first) container ended, as the operator reads it: the termination message's `reason` and
/// `message` when sluice wrote one, else the kubelet's reason and the exit code with the log tail.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ended {
    pub reason: String,
    pub message: String,
    /// The termination message as JSON, when it is sluice's.
    pub parsed: Option<Value>,
    pub finished_at: Option<k8s_openapi::jiff::Timestamp>,
}

/// How the pod's container ended, if it did.
pub fn ended(pod: &k8s_openapi::api::core::v1::Pod) -> Option<Ended> {
    let terminated = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .clone()?;
    let parsed: Option<Value> = terminated
        .message
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok())
        .filter(|v: &Value| v["reason"].is_string());
    let (reason, message) = match &parsed {
        Some(v) => (
            v["reason"].as_str().unwrap_or_default().to_string(),
            v["message"].as_str().unwrap_or_default().to_string(),
        ),
        None => (
            terminated.reason.clone().unwrap_or_else(|| "Error".into()),
            format!(
                "exit code {}: {}",
                terminated.exit_code,
                terminated.message.clone().unwrap_or_default().trim()
            ),
        ),
    };
    Some(Ended {
        reason,
        message,
        parsed,
        finished_at: terminated.finished_at.map(|f| f.0),
    })
}

/// The pod security context of every operator-made pod (Pod Security Standards: restricted).
pub fn pod_security_context() -> Value {
    json!({ "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "seccompProfile": { "type": "RuntimeDefault" } })
}

/// The container security context of every operator-made container (restricted).
pub fn container_security_context() -> Value {
    json!({ "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] } })
}

/// Env from the downward API every sluice process reads.
pub fn downward_env() -> Vec<Value> {
    let field = |name: &str, path: &str| json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } });
    vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        json!({ "name": "SLUICE_TERMINATION_LOG", "value": "/dev/termination-log" }),
    ]
}

/// An env var from a Secret key.
pub fn secret_env(name: &str, secret: &str, key: &str) -> Value {
    json!({ "name": name, "valueFrom": { "secretKeyRef": { "name": secret, "key": key } } })
}

/// Env for a Kafka connection: SASL credentials from their Secret, and where the TLS files are mounted
/// (see [`kafka_tls_volumes`]).
pub fn kafka_env(kafka: &KafkaConnection) -> Vec<Value> {
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
        for (var, present) in [
            ("SLUICE_KAFKA_TLS_CA_FILE", tls.ca.is_some()),
            ("SLUICE_KAFKA_TLS_CERT_FILE", tls.certificate.is_some()),
            ("SLUICE_KAFKA_TLS_KEY_FILE", tls.key.is_some()),
        ] {
            if present {
                let file = var
                    .trim_start_matches("SLUICE_KAFKA_TLS_")
                    .trim_end_matches("_FILE")
                    .to_lowercase();
                env.push(json!({ "name": var, "value": format!("{CONFIG_DIR}/kafka-tls/{file}/{file}.pem") }));
            }
        }
    }
    env
}

/// Secret volumes (and their mounts) for the Kafka TLS material, under `/etc/sluice/kafka-tls/<part>/`.
pub fn kafka_tls_volumes(kafka: &KafkaConnection) -> (Vec<Value>, Vec<Value>) {
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
            volumes.push(json!({ "name": name, "secret": { "secretName": r.name,
                "items": [{ "key": r.key, "path": format!("{part}.pem") }] } }));
            mounts.push(json!({ "name": name, "mountPath": format!("{CONFIG_DIR}/kafka-tls/{part}"), "readOnly": true }));
        }
    }
    (volumes, mounts)
}
