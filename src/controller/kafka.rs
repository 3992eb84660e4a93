//! Kafka client settings from a [`KafkaConnection`] and the Secrets it references, and the admin calls the
//! operator makes (topic metadata, creation, configs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::{Error, Problem, Result, secret_value};
use crate::crd::KafkaConnection;
use crate::crd::common::SaslMechanism;

/// Secret material a connection needs, read from the Secrets it references.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaCredentials {
    pub sasl: Option<(String, String)>,
    pub ca_pem: Option<String>,
    pub certificate_pem: Option<String>,
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for KafkaCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaCredentials(redacted)")
    }
}

/// librdkafka properties for a connection: the user's extra properties, then what sluice sets.
pub fn client_properties(
    conn: &KafkaConnection,
    creds: &KafkaCredentials,
) -> BTreeMap<String, String> {
    let mut props = conn.properties.clone();
    props.insert("bootstrap.servers".into(), conn.bootstrap_servers.clone());
    props.insert(
        "security.protocol".into(),
        security_protocol(conn.tls.is_some(), conn.sasl.is_some()).into(),
    );
    if let Some(sasl) = &conn.sasl {
        props.insert(
            "sasl.mechanism".into(),
            sasl_mechanism(sasl.mechanism).into(),
        );
        if let Some((user, password)) = &creds.sasl {
            props.insert("sasl.username".into(), user.clone());
            props.insert("sasl.password".into(), password.clone());
        }
    }
    for (key, pem) in [
        ("ssl.ca.pem", &creds.ca_pem),
        ("ssl.certificate.pem", &creds.certificate_pem),
        ("ssl.key.pem", &creds.key_pem),
    ] {
        if let Some(pem) = pem {
            props.insert(key.into(), pem.clone());
        }
    }
    props
}

/// librdkafka's `security.protocol` for TLS and SASL on or off.
pub fn security_protocol(tls: bool, sasl: bool) -> &'static str {
    match (tls, sasl) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    }
}

pub fn sasl_mechanism(m: SaslMechanism) -> &'static str {
    match m {
        SaslMechanism::Plain => "PLAIN",
        SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
    }
}

/// Reads the Secrets a connection references. `field` is where the connection sits in the spec
/// (`spec.kafka`), for messages.
pub async fn credentials(
    client: &Client,
    namespace: &str,
    conn: &KafkaConnection,
    field: &str,
) -> Result<Result<KafkaCredentials, Problem>> {
    let mut creds = KafkaCredentials::default();
    if let Some(sasl) = &conn.sasl {
        let r = &sasl.secret_ref;
        let at = format!("{field}.sasl.secretRef");
        let user = match secret_value(client, namespace, &r.name, &r.username_key, &at).await? {
            Ok(v) => v,
            Err(p) => return Ok(Err(p)),
        };
        let password = match secret_value(client, namespace, &r.name, &r.password_key, &at).await? {
            Ok(v) => v,
            Err(p) => return Ok(Err(p)),
        };
        creds.sasl = Some((user, password));
    }
    if let Some(tls) = &conn.tls {
        for (slot, reference, name) in [
            (&mut creds.ca_pem, &tls.ca, "ca"),
            (&mut creds.certificate_pem, &tls.certificate, "certificate"),
            (&mut creds.key_pem, &tls.key, "key"),
        ] {
            if let Some(r) = reference {
                let at = format!("{field}.tls.{name}");
                match secret_value(client, namespace, &r.name, &r.key, &at).await? {
                    Ok(v) => *slot = Some(v),
                    Err(p) => return Ok(Err(p)),
                }
            }
        }
    }
    Ok(Ok(creds))
}

/// An admin client for a connection.
pub fn admin(props: &BTreeMap<String, String>) -> Result<Arc<AdminClient<DefaultClientContext>>> {
    let mut config = ClientConfig::new();
    for (k, v) in props {
        config.set(k, v);
    }
    config.set("client.id", "sluice-operator");
    config
        .create()
        .map(Arc::new)
        .map_err(|source| Error::Kafka {
            operation: "create admin client",
            source,
        })
}

/// How long the operator waits for the broker in one call.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

pub fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT))
}

/// A topic as the broker describes it: partition count and replication factor, or `None` if missing.
pub async fn topic_metadata(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
) -> Result<Option<(i32, i32)>> {
    let admin = admin.clone();
    let topic = topic.to_string();
    // librdkafka's metadata call blocks; keep it off the async workers.
    let metadata = tokio::task::spawn_blocking(move || {
        admin.inner().fetch_metadata(Some(&topic), ADMIN_TIMEOUT)
    })
    .await
    .expect("metadata task panicked")
    .map_err(|source| Error::Kafka {
        operation: "fetch metadata",
        source,
    })?;
    Ok(metadata.topics().first().and_then(|t| {
        if t.error().is_some() || t.partitions().is_empty() {
            None
        } else {
            let replicas = t.partitions()[0].replicas().len() as i32;
            Some((t.partitions().len() as i32, replicas))
        }
    }))
}

fn client_config(props: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in props {
        config.set(k, v);
    }
    config.set("client.id", "sluice-operator");
    config
}

/// Deletes a source's stored resume token: a tombstone for its key in the offsets topic (what Kafka
/// Connect writes for a KIP-875 offset reset).
pub async fn delete_source_offset(
    props: &BTreeMap<String, String>,
    topic: &str,
    key: &str,
) -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = client_config(props)
        .set("enable.idempotence", "true")
        .create()
        .map_err(|source| Error::Kafka {
            operation: "create producer",
            source,
        })?;
    producer
        .send(FutureRecord::<str, [u8]>::to(topic).key(key), ADMIN_TIMEOUT)
        .await
        .map_err(|(source, _)| Error::Kafka {
            operation: "write offset tombstone",
            source,
        })?;
    Ok(())
}

/// Deletes a sink's consumer group (its committed offsets); a group that does not exist is fine.
pub async fn delete_consumer_group(props: &BTreeMap<String, String>, group: &str) -> Result<()> {
    let admin = admin(props)?;
    let results = admin
        .delete_groups(&[group], &admin_options())
        .await
        .map_err(|source| Error::Kafka {
            operation: "delete consumer group",
            source,
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((_, code)) => {
                return Err(Error::Kafka {
                    operation: "delete consumer group",
                    source: rdkafka::error::KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::common::{CredentialsSecretRef, KafkaSasl, KafkaTls, SecretKeyRef};

    fn conn() -> KafkaConnection {
        KafkaConnection {
            bootstrap_servers: "k1:9092,k2:9092".into(),
            tls: None,
            sasl: None,
            properties: BTreeMap::from([("compression.type".into(), "zstd".into())]),
        }
    }

    #[test]
    fn plaintext_keeps_user_properties() {
        let props = client_properties(&conn(), &KafkaCredentials::default());
        assert_eq!(props["bootstrap.servers"], "k1:9092,k2:9092");
        assert_eq!(props["security.protocol"], "plaintext");
        assert_eq!(props["compression.type"], "zstd");
    }

    #[test]
    fn sasl_over_tls_uses_secret_material() {
        let mut c = conn();
        let secret = |key: &str| {
            Some(SecretKeyRef {
                name: "kafka".into(),
                key: key.into(),
            })
        };
        c.tls = Some(KafkaTls {
            ca: secret("ca.crt"),
            certificate: None,
            key: None,
        });
        c.sasl = Some(KafkaSasl {
            mechanism: SaslMechanism::ScramSha512,
            secret_ref: CredentialsSecretRef {
                name: "user".into(),
                username_key: "username".into(),
                password_key: "password".into(),
            },
        });
        let creds = KafkaCredentials {
            sasl: Some(("app".into(), "s3cret".into())),
            ca_pem: Some("-----BEGIN CERTIFICATE-----".into()),
            ..Default::default()
        };
        let props = client_properties(&c, &creds);
        assert_eq!(props["security.protocol"], "sasl_ssl");
        assert_eq!(props["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(props["sasl.username"], "app");
        assert_eq!(props["ssl.ca.pem"], "-----BEGIN CERTIFICATE-----");
        assert!(
            !format!("{creds:?}").contains("s3cret"),
            "credentials never print"
        );
    }
}
