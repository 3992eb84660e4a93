//! The CRDs: the committed YAML is what `sluice crdgen` generates, and the real apiserver enforces the
//! schema and CEL rules with messages that name the field.

mod support;

use std::path::{Path, PathBuf};

use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice::crd::{Connector, DeadLetterQueue};
use support::{Env, install_crds, kubectl, namespace};

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn the_committed_reference_is_the_generated_one() {
    let path = repo_path("docs/reference.md");
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make docs`)", path.display()));
    assert!(
        committed == sluice::docs::reference(),
        "docs/reference.md differs from the CRD schemas: run `make docs` and commit the result"
    );
}

#[test]
fn committed_crds_match_the_generated_ones() {
    let generated = sluice::crd::crds();
    for dir in ["crds", "charts/sluice/crds"] {
        for (file, crd) in &generated {
            let path = repo_path(dir).join(file);
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (run `make crds`)", path.display()));
            assert!(
                committed == sluice::crd::to_yaml(crd).unwrap(),
                "{} differs from the generated CRD: run `make crds` and commit the result",
                path.display()
            );
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(repo_path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut expected: Vec<String> = generated.iter().map(|(f, _)| f.clone()).collect();
        expected.sort();
        assert_eq!(on_disk, expected, "{dir}/ holds exactly the generated CRDs");
    }
}

/// One manifest of `tests/invalid/`: the message the apiserver must answer with is on its first line.
struct InvalidManifest {
    file: String,
    expect: String,
    object: DynamicObject,
}

fn invalid_manifests() -> Vec<InvalidManifest> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path("tests/invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} must start with `# expect: <message>`", path.display()))
            .to_string();
        let object: DynamicObject = serde_yaml::from_str(&text).unwrap();
        out.push(InvalidManifest {
            file: path.file_name().unwrap().to_string_lossy().into_owned(),
            expect,
            object,
        });
    }
    out
}

#[tokio::test]
async fn every_invalid_manifest_is_rejected_with_a_message_naming_the_field() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    install_crds(&client).await;
    let ns = namespace(&client, &env, "crd-invalid").await;
    let manifests = invalid_manifests();
    assert!(
        manifests.len() >= 15,
        "the catalog has {} manifests",
        manifests.len()
    );

    let mut wrong = Vec::new();
    for m in &manifests {
        let kind = m
            .object
            .types
            .as_ref()
            .expect("apiVersion and kind")
            .kind
            .clone();
        let resource = match kind.as_str() {
            "Connector" => ApiResource::erase::<Connector>(&()),
            "DeadLetterQueue" => ApiResource::erase::<DeadLetterQueue>(&()),
            other => panic!("{}: unexpected kind {other}", m.file),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        match api.create(&PostParams::default(), &m.object).await {
            Ok(_) => wrong.push(format!("{}: accepted", m.file)),
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(&m.expect) => {}
            Err(other) => wrong.push(format!(
                "{}: expected 422 containing {:?}, got {other}",
                m.file, m.expect
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "manifests not rejected as expected:\n{}",
        wrong.join("\n")
    );
}

fn valid_source() -> serde_json::Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
        "metadata": { "name": "orders" },
        "spec": {
            "type": "mongodb-source",
            "kafka": { "bootstrapServers": "kafka:9092" },
            "mongodb": { "connectionUriSecretRef": { "name": "mongo", "key": "uri" }, "database": "shop" },
            "source": { "topicPrefix": "cdc" }
        }
    })
}

/// Every property librdkafka 2.12 marks sensitive (`_RK_SENSITIVE` in rdkafka_conf.c), and the Java
/// client's credential settings people copy from Kafka Connect.
const SECRET_PROPERTIES: &[&str] = &[
    "ssl.key.location",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.ca.pem",
    "ssl.keystore.password",
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "sasl.jaas.config",
    "sasl.kerberos.keytab",
    "ssl.keystore.location",
    "ssl.truststore.password",
];

#[tokio::test]
async fn every_secret_property_is_rejected_in_kafka_properties_and_others_pass() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    install_crds(&client).await;
    let ns = namespace(&client, &env, "crd-secrets").await;
    let connectors: Api<Connector> = Api::namespaced(client.clone(), &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let with = |property: &str| {
        let mut c = valid_source();
        c["spec"]["kafka"]["properties"] = json!({ property: "x" });
        serde_json::from_value::<Connector>(c).unwrap()
    };
    let mut accepted = Vec::new();
    for property in SECRET_PROPERTIES {
        match connectors.create(&dry_run, &with(property)).await {
            Err(kube::Error::Api(s))
                if s.code == 422
                    && s.message
                        .contains("kafka.properties must not carry credentials") => {}
            other => accepted.push(format!("{property}: {other:?}")),
        }
    }
    assert!(
        accepted.is_empty(),
        "not rejected:\n{}",
        accepted.join("\n")
    );
    for property in [
        "compression.type",
        "ssl.ca.location",
        "sasl.oauthbearer.scope",
        "linger.ms",
    ] {
        connectors
            .create(&dry_run, &with(property))
            .await
            .unwrap_or_else(|e| panic!("{property} is not a secret: {e}"));
    }
}

#[tokio::test]
async fn transition_rules_guard_immutable_and_grow_only_fields() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    install_crds(&client).await;
    let ns = namespace(&client, &env, "crd-transition").await;
    let connectors: Api<Connector> = Api::namespaced(client.clone(), &ns);
    let created: Connector = serde_json::from_value(valid_source()).unwrap();
    connectors
        .create(&PostParams::default(), &created)
        .await
        .unwrap();
    let change_type = json!({ "spec": { "type": "mongodb-sink", "source": null,
        "sink": { "topics": ["orders"] }, "mongodb": { "collection": "orders" } } });
    let err = connectors
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(&change_type),
        )
        .await
        .expect_err("type is immutable");
    assert!(err.to_string().contains("spec.type is immutable"), "{err}");

    let dlqs: Api<DeadLetterQueue> = Api::namespaced(client.clone(), &ns);
    let dlq: DeadLetterQueue = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterQueue",
        "metadata": { "name": "orders-dlq" },
        "spec": { "kafka": { "bootstrapServers": "kafka:9092" }, "partitions": 3 }
    }))
    .unwrap();
    dlqs.create(&PostParams::default(), &dlq).await.unwrap();
    let shrink = json!({ "spec": { "partitions": 2 } });
    let err = dlqs
        .patch(
            "orders-dlq",
            &PatchParams::default(),
            &Patch::Merge(&shrink),
        )
        .await
        .expect_err("partitions only grow");
    assert!(
        err.to_string().contains("spec.partitions can only grow"),
        "{err}"
    );
    // Immutable means it can't be removed either (that would orphan the topic and make another).
    let named: DeadLetterQueue = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterQueue",
        "metadata": { "name": "named-dlq" },
        "spec": { "kafka": { "bootstrapServers": "kafka:9092" }, "topicName": "orders.dlq",
                  "replicationFactor": 1 }
    }))
    .unwrap();
    dlqs.create(&PostParams::default(), &named).await.unwrap();
    for (field, message) in [
        ("topicName", "spec.topicName is immutable"),
        ("replicationFactor", "spec.replicationFactor is immutable"),
    ] {
        let remove = json!({ "spec": { field: null } });
        let err = dlqs
            .patch("named-dlq", &PatchParams::default(), &Patch::Merge(&remove))
            .await
            .expect_err("an immutable field can't be removed");
        assert!(err.to_string().contains(message), "{field}: {err}");
    }
    let add = json!({ "spec": { "topicName": "other" } });
    let err = dlqs
        .patch("orders-dlq", &PatchParams::default(), &Patch::Merge(&add))
        .await
        .expect_err("an immutable field can't be added");
    assert!(
        err.to_string().contains("spec.topicName is immutable"),
        "{err}"
    );
    let grow = json!({ "spec": { "partitions": 6 } });
    dlqs.patch("orders-dlq", &PatchParams::default(), &Patch::Merge(&grow))
        .await
        .expect("growing is fine");

    // A replay can be added, but once applied its settings stay as they were.
    let add = json!({ "spec": { "replays": [{ "id": "fix-1", "filter": { "originalTopics": ["orders"] } }] } });
    dlqs.patch("orders-dlq", &PatchParams::default(), &Patch::Merge(&add))
        .await
        .expect("adding a replay is fine");
    let change = json!({ "spec": { "replays": [{ "id": "fix-1", "filter": { "originalTopics": ["payments"] } }] } });
    let err = dlqs
        .patch(
            "orders-dlq",
            &PatchParams::default(),
            &Patch::Merge(&change),
        )
        .await
        .expect_err("a replay's settings are fixed");
    assert!(
        err.to_string()
            .contains("a replay's settings can't change once applied"),
        "{err}"
    );
    let another = json!({ "spec": { "replays": [
        { "id": "fix-1", "filter": { "originalTopics": ["orders"] } },
        { "id": "fix-2", "dryRun": true }
    ] } });
    dlqs.patch(
        "orders-dlq",
        &PatchParams::default(),
        &Patch::Merge(&another),
    )
    .await
    .expect("a second replay with a new id is fine");
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns_and_short_names() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    install_crds(&client).await;
    let ns = namespace(&client, &env, "crd-columns").await;
    let created: Connector = serde_json::from_value(valid_source()).unwrap();
    Api::<Connector>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &created)
        .await
        .unwrap();

    let table = kubectl(&env, &["get", "conn", "-n", &ns]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "STATE",
            "READY",
            "TASKS",
            "FAILURES",
            "SKIPPED",
            "DLQ",
            "PARTITION",
            "AGE"
        ]
    );
    assert!(
        table.lines().nth(1).unwrap().starts_with("orders"),
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[1..3],
        ["mongodb-source", "running"],
        "type and state (defaulted) columns: {table}"
    );

    let dlq: DeadLetterQueue = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterQueue",
        "metadata": { "name": "orders-dlq" },
        "spec": { "kafka": { "bootstrapServers": "kafka:9092" } }
    }))
    .unwrap();
    Api::<DeadLetterQueue>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &dlq)
        .await
        .unwrap();
    let table = kubectl(&env, &["get", "dlq", "-n", &ns]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TOPIC",
            "READY",
            "DEPTH",
            "OLDEST",
            "CONNECTORS",
            "AGE"
        ]
    );
    assert!(
        table.lines().nth(1).unwrap().starts_with("orders-dlq"),
        "{table}"
    );
}

/// `sluice convert` on the Connect and Strimzi configs of `tests/convert/`: the apiserver takes every
/// manifest it prints (a server-side dry run), so a converted config applies as printed.
#[tokio::test]
async fn converted_kafka_connect_configs_are_accepted_by_the_apiserver() {
    let Some(env) = Env::get() else { return };
    let client = env.kube().await;
    install_crds(&client).await;
    let ns = namespace(&client, &env, "crd-convert").await;
    let connectors: Api<Connector> = Api::namespaced(client.clone(), &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    for file in [
        "connect-source.json",
        "connect-sink.json",
        "strimzi-kafkaconnector.yaml",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["convert", "--bootstrap-servers", "kafka:9092"])
            .arg(repo_path("tests/convert").join(file))
            .output()
            .expect("run sluice convert");
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conn: Connector =
            serde_yaml::from_str(&printed).unwrap_or_else(|e| panic!("{file}: {e}\n{printed}"));
        if let Err(e) = connectors.create(&dry_run, &conn).await {
            panic!("{file}: the apiserver refused the converted manifest: {e}\n{printed}");
        }
    }
}
