//! Types both resources use: the Kafka connection, Secret references, condition helpers.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Kafka topic name: letters, digits, '.', '_' and '-', but not `.` or `..` (Kafka refuses both); the
/// length (at most 249) is checked beside it.
pub const TOPIC_NAME_PATTERN: &str = r"^([a-zA-Z0-9._-]*[a-zA-Z0-9_-][a-zA-Z0-9._-]*|\.{3,})$";

/// A key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret holding a username and a password.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the username.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// The key holding the password.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// How to reach Kafka. Credentials only ever come from Secrets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaConnection {
    /// Comma-separated `host:port` list (Kafka Connect: `bootstrap.servers`).
    #[schemars(length(min = 1, max = 4096))]
    pub bootstrap_servers: String,
    /// TLS to the brokers (Kafka: `security.protocol=SSL` or `SASL_SSL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,
    /// SASL authentication (Kafka: `sasl.mechanism` with `sasl.jaas.config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka client properties, e.g. `compression.type: zstd`. Secrets do not belong here:
    /// every property librdkafka treats as sensitive (`sasl.username`, `sasl.password`, `ssl.key.*`,
    /// `ssl.ca.pem`, `ssl.keystore.password`, `sasl.oauthbearer.config`, `sasl.oauthbearer.client.secret`,
    /// `sasl.oauthbearer.assertion.private.key.*`) is rejected, and so is any name with `password`,
    /// `secret`, `passphrase`, `private.key`, `keytab` or `keystore` in it, ending in `.pem`, or
    /// `sasl.jaas.config`; use `tls` and `sasl` with Secret references.
    /// sluice's consumers default `fetch.queue.backoff.ms` to 10 (librdkafka's 1000 idles a consumer that
    /// keeps up); a value here replaces it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new(
        "self.all(k, !(k.contains('password') || k.contains('secret') || k.contains('passphrase') || k.contains('private.key') || k.contains('keytab') || k.contains('keystore') || k.endsWith('.pem') || k.endsWith('.key') || k.startsWith('ssl.key') || k.startsWith('ssl_key') || k == 'sasl.oauthbearer.config' || k == 'sasl.jaas.config' || k == 'sasl.username'))"
    ).message("kafka.properties must not carry credentials: use kafka.sasl.secretRef and kafka.tls Secret references"))]
    pub properties: BTreeMap<String, String>,
}

/// TLS material, each piece from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.certificate) == has(self.key)")
    .message("kafka.tls.certificate and kafka.tls.key go together (client authentication needs both)"))]
pub struct KafkaTls {
    /// CA certificate(s) to trust, PEM (Kafka: `ssl.truststore.*`). Absent: the system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKeyRef>,
    /// Client certificate, PEM, for mutual TLS (Kafka: `ssl.keystore.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<SecretKeyRef>,
    /// Client private key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<SecretKeyRef>,
}

/// SASL mechanisms librdkafka speaks with a username and password.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// SASL authentication with credentials from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSasl {
    /// Kafka: `sasl.mechanism`.
    pub mechanism: SaslMechanism,
    /// The Secret with the username and password.
    pub secret_ref: CredentialsSecretRef,
}

/// A reference to another object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}
