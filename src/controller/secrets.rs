//! The Secrets a spec references: read once per reconcile (dereference), then looked up without I/O
//! (validate). A missing Secret or key is a [`Problem`] naming the spec field that points at it. Values
//! never leave the operator except into a Kafka client config.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::{Problem, Result, reason};
use crate::crd::KafkaConnection;
use crate::kafka::KafkaCredentials;

/// The Secrets of one namespace that a spec names, as the API server had them (`None`: not found).
#[derive(Clone, Default)]
pub struct Secrets {
    namespace: String,
    by_name: BTreeMap<String, Option<Secret>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("namespace", &self.namespace)
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets {
    /// Reads the named Secrets of `namespace`.
    pub async fn read(
        client: &Client,
        namespace: &str,
        names: impl IntoIterator<Item = String>,
    ) -> Result<Self> {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let mut by_name = BTreeMap::new();
        for name in names {
            if let std::collections::btree_map::Entry::Vacant(slot) = by_name.entry(name) {
                let secret = api.get_opt(slot.key()).await?;
                slot.insert(secret);
            }
        }
        Ok(Self {
            namespace: namespace.into(),
            by_name,
        })
    }

    /// Secrets as given (for tests of the pure steps).
    pub fn from_secrets(namespace: &str, secrets: impl IntoIterator<Item = Secret>) -> Self {
        Self {
            namespace: namespace.into(),
            by_name: secrets
                .into_iter()
                .filter_map(|s| Some((s.metadata.name.clone()?, Some(s))))
                .collect(),
        }
    }

    /// One key of a Secret; `field` is the spec field that names it, for the problem's message.
    pub fn value(&self, name: &str, key: &str, field: &str) -> Result<String, Problem> {
        let namespace = &self.namespace;
        let Some(Some(secret)) = self.by_name.get(name) else {
            return Err(Problem::new(
                reason::SECRET_NOT_FOUND,
                format!("Secret {namespace}/{name} ({field}) not found"),
            ));
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key).cloned())
            });
        value.ok_or_else(|| {
            Problem::new(
                reason::SECRET_KEY_NOT_FOUND,
                format!("Secret {namespace}/{name} has no key {key:?} ({field})"),
            )
        })
    }

    /// The credentials of a Kafka connection at spec field `field` (`spec.kafka`).
    pub fn kafka_credentials(
        &self,
        conn: &KafkaConnection,
        field: &str,
    ) -> Result<KafkaCredentials, Problem> {
        let mut creds = KafkaCredentials::default();
        if let Some(sasl) = &conn.sasl {
            let r = &sasl.secret_ref;
            let at = format!("{field}.sasl.secretRef");
            let user = self.value(&r.name, &r.username_key, &at)?;
            let password = self.value(&r.name, &r.password_key, &at)?;
            creds.sasl = Some((user, password));
        }
        if let Some(tls) = &conn.tls {
            for (slot, reference, name) in [
                (&mut creds.ca_pem, &tls.ca, "ca"),
                (&mut creds.certificate_pem, &tls.certificate, "certificate"),
                (&mut creds.key_pem, &tls.key, "key"),
            ] {
                if let Some(r) = reference {
                    *slot = Some(self.value(&r.name, &r.key, &format!("{field}.tls.{name}"))?);
                }
            }
        }
        Ok(creds)
    }
}

/// The Secrets a Kafka connection references.
pub fn kafka_secret_names(conn: &KafkaConnection) -> Vec<String> {
    let mut names = vec![];
    if let Some(sasl) = &conn.sasl {
        names.push(sasl.secret_ref.name.clone());
    }
    if let Some(tls) = &conn.tls {
        names.extend(
            [&tls.ca, &tls.certificate, &tls.key]
                .into_iter()
                .flatten()
                .map(|r| r.name.clone()),
        );
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::common::{CredentialsSecretRef, KafkaSasl, SaslMechanism};

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "stringData": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        }))
        .unwrap()
    }

    #[test]
    fn a_missing_secret_or_key_names_the_field() {
        let secrets = Secrets::from_secrets("shop", [secret("mongo", &[("uri", "mongodb://x")])]);
        assert_eq!(
            secrets.value("mongo", "uri", "spec.mongodb.connectionUriSecretRef"),
            Ok("mongodb://x".into())
        );
        let missing = secrets.value("other", "uri", "spec.x").unwrap_err();
        assert_eq!(missing.reason, reason::SECRET_NOT_FOUND);
        assert_eq!(missing.message, "Secret shop/other (spec.x) not found");
        let no_key = secrets.value("mongo", "url", "spec.x").unwrap_err();
        assert_eq!(no_key.reason, reason::SECRET_KEY_NOT_FOUND);
    }

    #[test]
    fn kafka_credentials_come_from_the_referenced_secret() {
        let conn = KafkaConnection {
            bootstrap_servers: "k:9092".into(),
            tls: None,
            sasl: Some(KafkaSasl {
                mechanism: SaslMechanism::ScramSha512,
                secret_ref: CredentialsSecretRef {
                    name: "user".into(),
                    username_key: "username".into(),
                    password_key: "password".into(),
                },
            }),
            properties: Default::default(),
        };
        assert_eq!(kafka_secret_names(&conn), ["user"]);
        let secrets = Secrets::from_secrets(
            "shop",
            [secret("user", &[("username", "app"), ("password", "pw")])],
        );
        let creds = secrets.kafka_credentials(&conn, "spec.kafka").unwrap();
        assert_eq!(creds.sasl, Some(("app".into(), "pw".into())));
        let err = Secrets::from_secrets("shop", [])
            .kafka_credentials(&conn, "spec.kafka")
            .unwrap_err();
        assert!(
            err.message.contains("(spec.kafka.sasl.secretRef)"),
            "{}",
            err.message
        );
    }
}
