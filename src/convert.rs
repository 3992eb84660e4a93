//! `sluice convert`: a Kafka Connect MongoDB connector's config as a Connector manifest. The input is what
//! Connect's REST API holds (`{"name": …, "config": {…}}`, or the bare config map) or a Strimzi
//! `KafkaConnector` manifest (YAML or JSON). Every setting of the README's configuration table is mapped;
//! what can't be is listed with the reason, never dropped silently. The connection string is never copied
//! (it holds credentials): the manifest references a Secret the user creates.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::crd::ConnectorSpec;

/// What the conversion made: the Connector manifest, the Secret it needs, and the notes.
#[derive(Debug)]
pub struct Converted {
    pub name: String,
    /// The Connector, as `kubectl apply` takes it (checked against sluice's types).
    pub manifest: Value,
    /// The Secret to create for `connection.uri` (name, key), when the config has one.
    pub secret: Option<(String, String)>,
    /// Settings with no sluice equivalent, or a value sluice can't take: (setting, why).
    pub unmapped: Vec<(String, String)>,
    /// Where the result behaves differently from the Connect config, though mapped.
    pub differences: Vec<String>,
}

/// Settings of the conversion that the Connect config does not hold.
#[derive(Debug, Default)]
pub struct Options {
    /// Kafka's `bootstrap.servers` (a worker setting in Connect, absent from connector configs).
    pub bootstrap_servers: Option<String>,
}

const SOURCE_CLASS: &str = "com.mongodb.kafka.connect.MongoSourceConnector";
const SINK_CLASS: &str = "com.mongodb.kafka.connect.MongoSinkConnector";
/// Where the manifest's Kafka address goes when neither the config nor `--bootstrap-servers` says.
pub const BOOTSTRAP_PLACEHOLDER: &str = "REPLACE-ME:9092";

/// Converts a Connect REST config, a bare config map, or a Strimzi `KafkaConnector`.
pub fn convert(input: &str, options: &Options) -> Result<Converted, String> {
    let doc: Value =
        serde_yaml::from_str(input).map_err(|e| format!("input is not JSON or YAML: {e}"))?;
    let (name, config, strimzi) = split_input(&doc)?;
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in config {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Null => continue,
            other => other.to_string(),
        };
        settings.insert(k.clone(), text);
    }
    let mut c = Conversion {
        name: name.clone(),
        settings,
        unmapped: Vec::new(),
        differences: Vec::new(),
    };
    let class = strimzi
        .class
        .clone()
        .or_else(|| c.take("connector.class"))
        .ok_or("the config has no connector.class")?;
    c.take("connector.class");
    let source = match class.as_str() {
        SOURCE_CLASS | "MongoSourceConnector" => true,
        SINK_CLASS | "MongoSinkConnector" => false,
        other => {
            return Err(format!(
                "connector.class {other}: sluice converts the MongoDB source ({SOURCE_CLASS}) and sink \
                 ({SINK_CLASS}) only"
            ));
        }
    };
    c.take("name");
    let mut spec = Map::new();
    spec.insert(
        "type".into(),
        json!(if source {
            "mongodb-source"
        } else {
            "mongodb-sink"
        }),
    );
    let tasks = strimzi
        .tasks_max
        .or_else(|| c.take_parsed::<i64>("tasks.max"));
    if let Some(tasks) = tasks {
        if source && tasks > 1 {
            c.differences.push(format!(
                "tasks.max {tasks}: a sluice source runs one task (a change stream has one reader; Connect's \
                 MongoDB source uses one task too)"
            ));
        } else if !source {
            spec.insert("tasksMax".into(), json!(tasks));
        }
    }
    if let Some(state) = &strimzi.state {
        spec.insert("state".into(), json!(state));
    }
    let servers = options
        .bootstrap_servers
        .clone()
        .or_else(|| c.take("bootstrap.servers"));
    if servers.is_none() {
        c.differences.push(format!(
            "kafka.bootstrapServers is {BOOTSTRAP_PLACEHOLDER}: Connect keeps bootstrap.servers in the worker \
             config (give --bootstrap-servers)"
        ));
    }
    spec.insert(
        "kafka".into(),
        json!({ "bootstrapServers": servers.unwrap_or_else(|| BOOTSTRAP_PLACEHOLDER.into()) }),
    );
    let secret = (format!("{name}-mongodb"), "uri".to_string());
    let had_uri = c.take("connection.uri").is_some();
    let mut mongodb = json!({
        "connectionUriSecretRef": { "name": secret.0, "key": secret.1 },
    });
    if let Some(db) = c.take("database").filter(|d| !d.is_empty()) {
        mongodb["database"] = json!(db);
    }
    if let Some(coll) = c.take("collection").filter(|d| !d.is_empty()) {
        mongodb["collection"] = json!(coll);
    }
    spec.insert("mongodb".into(), mongodb);
    if source {
        spec.insert("source".into(), c.source());
    } else {
        spec.insert("sink".into(), c.sink());
    }
    spec.insert("errors".into(), c.errors());
    let converters = c.converters(source);
    if let Some(sink) = spec.get_mut("sink").and_then(Value::as_object_mut) {
        for (field, converter) in converters {
            sink.insert(field.into(), json!(converter));
        }
    }
    for (key, _) in std::mem::take(&mut c.settings) {
        let why = if key.starts_with("transforms") || key.starts_with("predicates") {
            "single message transforms are not supported yet"
        } else if key.starts_with("producer.override.") || key.starts_with("consumer.override.") {
            "client overrides go in spec.kafka.properties (review each: credentials never go there)"
        } else {
            "no sluice equivalent"
        };
        c.unmapped.push((key, why.into()));
    }
    let manifest = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "Connector",
        "metadata": { "name": name },
        "spec": Value::Object(spec),
    });
    serde_json::from_value::<ConnectorSpec>(manifest["spec"].clone())
        .map_err(|e| format!("the converted spec is not a valid Connector spec: {e}"))?;
    c.unmapped.sort();
    Ok(Converted {
        name,
        manifest,
        secret: had_uri.then_some(secret),
        unmapped: c.unmapped,
        differences: c.differences,
    })
}

/// A setting's value as the notes show it: quoted, or `(value hidden)` for a setting that may hold a
/// credential (the notes are printed, and kept with the manifest).
fn shown(key: &str, value: &str) -> String {
    let key = key.to_ascii_lowercase();
    let secret = [
        "password",
        "secret",
        "jaas",
        "token",
        "credential",
        "ssl.key",
        ".uri",
        "apikey",
    ]
    .iter()
    .any(|s| key.contains(s));
    if secret {
        "(value hidden)".into()
    } else {
        format!("{value:?}")
    }
}

/// What a Strimzi `KafkaConnector` says outside its `config`.
#[derive(Default)]
struct StrimziFields {
    class: Option<String>,
    tasks_max: Option<i64>,
    state: Option<String>,
}

/// The connector's name, its config map, and (for a Strimzi manifest) its other fields.
fn split_input(doc: &Value) -> Result<(String, &Map<String, Value>, StrimziFields), String> {
    let obj = doc.as_object().ok_or("input is not an object")?;
    if obj.get("kind").and_then(Value::as_str) == Some("KafkaConnector") {
        let name = doc["metadata"]["name"]
            .as_str()
            .ok_or("KafkaConnector has no metadata.name")?
            .to_string();
        let spec = &doc["spec"];
        let config = spec["config"]
            .as_object()
            .ok_or("KafkaConnector has no spec.config")?;
        let state = match (spec["state"].as_str(), spec["pause"].as_bool()) {
            (Some(s), _) => Some(s.to_string()),
            (None, Some(true)) => Some("paused".to_string()),
            _ => None,
        };
        let fields = StrimziFields {
            class: spec["class"].as_str().map(String::from),
            tasks_max: spec["tasksMax"].as_i64(),
            state,
        };
        return Ok((name, config, fields));
    }
    let (name, config) = match obj.get("config").and_then(Value::as_object) {
        Some(config) => (obj.get("name").and_then(Value::as_str), config),
        None => (obj.get("name").and_then(Value::as_str), obj),
    };
    let name = name.ok_or("the config has no name")?.to_string();
    Ok((name, config, StrimziFields::default()))
}

/// The settings not yet taken, and the notes so far.
struct Conversion {
    /// The connector's name.
    name: String,
    settings: BTreeMap<String, String>,
    unmapped: Vec<(String, String)>,
    differences: Vec<String>,
}

impl Conversion {
    fn take(&mut self, key: &str) -> Option<String> {
        self.settings.remove(key)
    }

    /// A setting parsed as `T`; one that does not parse is unmapped.
    fn take_parsed<T: std::str::FromStr>(&mut self, key: &str) -> Option<T> {
        let raw = self.take(key)?;
        match raw.trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                let value = shown(key, &raw);
                self.unmapped
                    .push((key.into(), format!("{value} is not a valid value")));
                None
            }
        }
    }

    fn take_bool(&mut self, key: &str) -> Option<bool> {
        self.take_parsed(key)
    }

    fn unmappable(&mut self, key: &str, why: &str) {
        if let Some(v) = self.take(key) {
            self.unmapped
                .push((key.into(), format!("{}: {why}", shown(key, &v))));
        }
    }

    fn source(&mut self) -> Value {
        let mut s = Map::new();
        for (key, field) in [
            ("topic.prefix", "topicPrefix"),
            ("topic.suffix", "topicSuffix"),
        ] {
            if let Some(v) = self.take(key).filter(|v| !v.is_empty()) {
                s.insert(field.into(), json!(v));
            }
        }
        if let Some(map) = self.take("topic.namespace.map").filter(|v| !v.is_empty()) {
            match serde_json::from_str::<BTreeMap<String, String>>(&map) {
                Ok(m) => {
                    s.insert("topicNamespaceMap".into(), json!(m));
                }
                Err(e) => self.unmapped.push((
                    "topic.namespace.map".into(),
                    format!("not a JSON object of strings: {e}"),
                )),
            }
        }
        if !s.contains_key("topicPrefix") && !s.contains_key("topicNamespaceMap") {
            // Connect's topics are `<db>.<coll>` without a prefix; sluice needs a prefix or a map.
            self.differences.push(
                "no topic.prefix: sluice needs topicPrefix or topicNamespaceMap; set to \"mongodb\", so \
                 topics are mongodb.<db>.<collection> (Connect's were <db>.<collection>: map them with \
                 topicNamespaceMap to keep the names)"
                    .into(),
            );
            s.insert("topicPrefix".into(), json!("mongodb"));
        }
        if let Some(p) = self
            .take("pipeline")
            .filter(|p| p.trim() != "[]" && !p.is_empty())
        {
            s.insert("pipeline".into(), json!(p));
        }
        if let Some(fd) = self
            .take("change.stream.full.document")
            .filter(|v| !v.is_empty())
        {
            match fd.as_str() {
                "default" | "updateLookup" | "whenAvailable" | "required" => {
                    s.insert("fullDocument".into(), json!(fd));
                }
                other => self.unmapped.push((
                    "change.stream.full.document".into(),
                    format!(
                        "{other:?} is not one of default, updateLookup, whenAvailable, required"
                    ),
                )),
            }
        }
        if let Some(only) = self.take_bool("publish.full.document.only") {
            s.insert("publishFullDocumentOnly".into(), json!(only));
        }
        let copy_existing = self.take_bool("copy.existing") == Some(true);
        let mut startup = Map::new();
        match self.take("startup.mode").as_deref() {
            Some("copy_existing") => {
                startup.insert("mode".into(), json!("copyExisting"));
            }
            Some("timestamp") => {
                startup.insert("mode".into(), json!("timestamp"));
                if let Some(t) = self.take("startup.mode.timestamp.start.at.operation.time") {
                    startup.insert("startAtOperationTime".into(), json!(t));
                }
            }
            Some("latest") | None if copy_existing => {
                startup.insert("mode".into(), json!("copyExisting"));
            }
            Some("latest") | None => {}
            Some(other) => self.unmapped.push((
                "startup.mode".into(),
                format!("{other:?} is not one of latest, timestamp, copy_existing"),
            )),
        }
        if !startup.is_empty() {
            s.insert("startup".into(), Value::Object(startup));
        }
        let mut heartbeat = Map::new();
        match self.take_parsed::<i64>("heartbeat.interval.ms") {
            Some(ms) => {
                heartbeat.insert("intervalMs".into(), json!(ms));
            }
            None => {
                heartbeat.insert("intervalMs".into(), json!(0));
                self.differences.push(
                    "heartbeat.interval.ms unset: heartbeats off (0) as in Connect; sluice's own default is \
                     10000, which keeps resume tokens fresh on quiet collections"
                        .into(),
                );
            }
        }
        if let Some(topic) = self.take("heartbeat.topic.name") {
            heartbeat.insert("topic".into(), json!(topic));
        }
        s.insert("heartbeat".into(), Value::Object(heartbeat));
        let mut offsets = Map::new();
        if let Some(p) = self.take("offset.partition.name") {
            offsets.insert("partitionName".into(), json!(p));
        }
        if let Some(t) = self.take("offset.storage.topic") {
            offsets.insert("storageTopic".into(), json!(t));
        }
        if !offsets.is_empty() {
            s.insert("offsets".into(), Value::Object(offsets));
        }
        match self.take("exactly.once.support").as_deref() {
            Some("required") => {
                s.insert("exactlyOnce".into(), json!("required"));
            }
            Some("requested") | Some("") | None => {}
            Some(other) => self.unmapped.push((
                "exactly.once.support".into(),
                format!("{other:?} is not one of requested, required"),
            )),
        }
        match self.take("transaction.boundary").as_deref() {
            Some("poll") | None => {}
            Some(other) => self.unmapped.push((
                "transaction.boundary".into(),
                format!("{other:?}: sluice commits one transaction per batch (poll)"),
            )),
        }
        for key in ["output.format.key", "output.format.value"] {
            match self.take(key).as_deref() {
                Some("json") | None => {}
                Some(other) => self.unmapped.push((
                    key.into(),
                    format!("{other:?}: sluice writes JSON text (relaxed extended JSON)"),
                )),
            }
        }
        let formatter = self.take("output.json.formatter");
        self.differences.push(format!(
            "values are relaxed extended JSON (output.json.formatter {}: {})",
            formatter.as_deref().unwrap_or("unset, DefaultJson"),
            match formatter.as_deref() {
                Some(f) if f.ends_with("SimplifiedJson") =>
                    "Connect's simplified JSON writes dates as ISO strings and ObjectIds as hex strings",
                Some(f) if f.ends_with("ExtendedJson") =>
                    "Connect's extended JSON is the canonical mode, with type wrappers on every number",
                _ => "Connect's DefaultJson is the legacy strict mode, {\"$numberLong\": …} for 64-bit numbers",
            }
        ));
        for (key, why) in [
            (
                "poll.max.batch.size",
                "sluice sizes batches itself (up to 500 events, 2,000 under exactly once)",
            ),
            (
                "poll.await.time.ms",
                "sluice's change stream waits on the server (maxAwaitTime) itself",
            ),
            (
                "batch.size",
                "the change stream's cursor batch size is the driver's default",
            ),
            (
                "topic.separator",
                "sluice joins prefix, database and collection with \".\"",
            ),
            (
                "topic.mapper",
                "custom Java topic mappers can't run in sluice; use topicNamespaceMap",
            ),
            (
                "change.stream.full.document.before.change",
                "pre-images are not supported yet",
            ),
            (
                "change.stream.show.expanded.events",
                "expanded events are not supported yet",
            ),
            (
                "change.stream.document.key.as.key",
                "sluice keys records by the document key",
            ),
            (
                "publish.full.document.only.tombstone.on.delete",
                "not supported yet",
            ),
            ("collation", "not supported"),
            ("output.schema.key", "sluice writes no Avro/schema output"),
            ("output.schema.value", "sluice writes no Avro/schema output"),
            (
                "output.schema.infer.value",
                "sluice writes no Avro/schema output",
            ),
            (
                "startup.mode.copy.existing.namespace.regex",
                "copyExisting copies the watched namespace",
            ),
            ("startup.mode.copy.existing.pipeline", "not supported"),
            (
                "startup.mode.copy.existing.max.threads",
                "copyExisting copies with one cursor",
            ),
            (
                "startup.mode.copy.existing.queue.size",
                "copyExisting copies with one cursor",
            ),
            ("startup.mode.copy.existing.allow.disk.use", "not supported"),
            (
                "copy.existing.namespace.regex",
                "copyExisting copies the watched namespace",
            ),
            ("copy.existing.pipeline", "not supported"),
            (
                "copy.existing.max.threads",
                "copyExisting copies with one cursor",
            ),
            (
                "copy.existing.queue.size",
                "copyExisting copies with one cursor",
            ),
            ("copy.existing.allow.disk.use", "not supported"),
        ] {
            self.unmappable(key, why);
        }
        Value::Object(s)
    }

    fn sink(&mut self) -> Value {
        let mut s = Map::new();
        match (self.take("topics"), self.take("topics.regex")) {
            (Some(topics), _) => {
                let list: Vec<&str> = topics
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .collect();
                s.insert("topics".into(), json!(list));
            }
            (None, Some(regex)) => {
                s.insert("topicsRegex".into(), json!(regex));
                self.differences.push(
                    "topics.regex: librdkafka compiles it (POSIX extended syntax, not Java's: no look-around)"
                        .into(),
                );
            }
            (None, None) => {}
        }
        if let Some(strategy) = self.take("writemodel.strategy") {
            let simple = strategy.rsplit('.').next().unwrap_or_default();
            let model = match simple {
                "ReplaceOneDefaultStrategy" | "DefaultWriteModelStrategy" => Some("replace"),
                "InsertOneDefaultStrategy" => Some("insert"),
                "UpdateOneDefaultStrategy" => Some("upsert"),
                _ => None,
            };
            match model {
                Some(m) => {
                    s.insert("writeModel".into(), json!(m));
                }
                None => self.unmapped.push((
                    "writemodel.strategy".into(),
                    format!("{simple}: sluice has insert, replace, upsert and insertIfAbsent"),
                )),
            }
        }
        if let Some(strategy) = self.take("document.id.strategy") {
            let simple = strategy.rsplit('.').next().unwrap_or_default();
            let id = match simple {
                "BsonOidStrategy" => Some("objectId"),
                "ProvidedInKeyStrategy" => Some("providedInKey"),
                "ProvidedInValueStrategy" => Some("providedInValue"),
                "KafkaMetaDataStrategy" => Some("kafkaCoordinates"),
                _ => None,
            };
            match id {
                Some(i) => {
                    s.insert("documentIdStrategy".into(), json!(i));
                }
                None => self.unmapped.push((
                    "document.id.strategy".into(),
                    format!(
                        "{simple}: sluice has BsonOidStrategy, ProvidedInKeyStrategy, \
                         ProvidedInValueStrategy and KafkaMetaDataStrategy"
                    ),
                )),
            }
        }
        if let Some(n) = self.take_parsed::<i64>("max.batch.size") {
            s.insert("maxBatchSize".into(), json!(n));
        }
        // Connect orders bulks by default; sluice doesn't: keep Connect's behaviour.
        let ordered = self.take_bool("bulk.write.ordered").unwrap_or(true);
        s.insert("bulkWriteOrdered".into(), json!(ordered));
        if let Some(delete) = self.take_bool("delete.on.null.values") {
            s.insert("deleteOnNullValues".into(), json!(delete));
        }
        if let Some(ms) = self.take_parsed::<i64>("offset.flush.interval.ms") {
            s.insert("offsetFlushIntervalMs".into(), json!(ms));
        }
        // Go on from Connect's committed offsets: its group, unless the config names another.
        let group = self
            .take("consumer.override.group.id")
            .unwrap_or_else(|| format!("connect-{}", self.name));
        self.differences.push(format!(
            "consumerGroupId {group}: the sink goes on from the offsets the Connect connector committed (stop \
             it first); remove the field for a group of sluice's own"
        ));
        s.insert("consumerGroupId".into(), json!(group));
        for (key, why) in [
            (
                "namespace.mapper",
                "records go to the one database and collection of spec.mongodb",
            ),
            ("delete.writemodel.strategy", "not supported yet"),
            (
                "post.processor.chain",
                "post processors are not supported yet",
            ),
            (
                "field.renamer.mapping",
                "post processors are not supported yet",
            ),
            (
                "field.renamer.regexp",
                "post processors are not supported yet",
            ),
            (
                "key.projection.type",
                "post processors are not supported yet",
            ),
            (
                "key.projection.list",
                "post processors are not supported yet",
            ),
            (
                "value.projection.type",
                "post processors are not supported yet",
            ),
            (
                "value.projection.list",
                "post processors are not supported yet",
            ),
            ("field.value.transformer", "not supported"),
            (
                "change.data.capture.handler",
                "change-event handlers are not supported yet",
            ),
            ("rate.limiting.timeout", "sluice has no rate limit"),
            ("rate.limiting.every.n", "sluice has no rate limit"),
            (
                "timeseries.timefield",
                "time series collections are not created by sluice",
            ),
            (
                "timeseries.metafield",
                "time series collections are not created by sluice",
            ),
            (
                "timeseries.granularity",
                "time series collections are not created by sluice",
            ),
            (
                "timeseries.expire.after.seconds",
                "time series collections are not created by sluice",
            ),
            ("document.id.strategy.overwrite.existing", "not supported"),
            ("document.id.strategy.uuid.format", "not supported"),
        ] {
            self.unmappable(key, why);
        }
        Value::Object(s)
    }

    fn errors(&mut self) -> Value {
        let mut e = Map::new();
        let tolerance = self
            .take("mongo.errors.tolerance")
            .into_iter()
            .chain(self.take("errors.tolerance"))
            .next();
        match tolerance.as_deref() {
            Some("all") => {
                e.insert("tolerance".into(), json!("all"));
            }
            Some("none") | None => {}
            Some(other) => self.unmapped.push((
                "errors.tolerance".into(),
                format!("{other:?} is not one of none, all"),
            )),
        }
        if let Some(ms) = self.take_parsed::<i64>("errors.retry.timeout") {
            e.insert("retryTimeoutMs".into(), json!(ms));
        }
        if let Some(ms) = self.take_parsed::<i64>("errors.retry.delay.max.ms") {
            e.insert("retryDelayMaxMs".into(), json!(ms));
        }
        let log = self
            .take_bool("mongo.errors.log.enable")
            .into_iter()
            .chain(self.take_bool("errors.log.enable"))
            .next();
        if let Some(log) = log {
            e.insert("logEnable".into(), json!(log));
        }
        if let Some(include) = self.take_bool("errors.log.include.messages") {
            e.insert("logIncludeMessages".into(), json!(include));
        }
        let dlq = self
            .take("mongo.errors.deadletterqueue.topic.name")
            .into_iter()
            .chain(self.take("errors.deadletterqueue.topic.name"))
            .find(|t| !t.is_empty());
        if let Some(topic) = dlq {
            e.insert("deadLetterQueueTopic".into(), json!(topic));
        }
        if let Some(headers) = self.take_bool("errors.deadletterqueue.context.headers.enable") {
            e.insert("contextHeadersEnable".into(), json!(headers));
        }
        self.unmappable(
            "errors.deadletterqueue.topic.replication.factor",
            "a DeadLetterQueue resource sets its topic's replicationFactor (use deadLetterQueueRef)",
        );
        if e.contains_key("tolerance") || e.contains_key("deadLetterQueueTopic") {
            self.differences.push(
                "an unavailable MongoDB or Kafka is waited out (errors.outageTimeoutMs: -1); Connect counts it \
                 against errors.retry.timeout and then fails or, with tolerance all, skips the records"
                    .into(),
            );
        }
        Value::Object(e)
    }

    /// The converters, as a sink's `keyConverter`/`valueConverter` (none for a source: it writes JSON
    /// text, which Connect's StringConverter, or JsonConverter without schemas, carries unchanged).
    fn converters(&mut self, source: bool) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        for (key, field) in [
            ("key.converter", "keyConverter"),
            ("value.converter", "valueConverter"),
        ] {
            let schemas = self.take_bool(&format!("{key}.schemas.enable"));
            let Some(class) = self.take(key) else {
                continue;
            };
            let simple = class.rsplit('.').next().unwrap_or_default().to_string();
            let mapped = match simple.as_str() {
                "JsonConverter" if schemas == Some(true) => None,
                "JsonConverter" => Some("json"),
                "StringConverter" => Some("string"),
                "ByteArrayConverter" => Some("bytes"),
                _ => None,
            };
            match (mapped, source) {
                (Some(_), true) => {}
                (Some(m), false) => out.push((field, m)),
                (None, _) => self.unmapped.push((
                    key.into(),
                    match schemas {
                        Some(true) => format!("{simple} with schemas.enable=true: sluice reads JSON without an embedded schema"),
                        _ => format!("{simple}: sluice reads JSON, strings, bytes or BSON"),
                    },
                )),
            }
        }
        out
    }
}

/// The manifest as YAML, after comments saying what to do before applying it, where it behaves
/// differently, and what was not mapped.
pub fn render(c: &Converted) -> String {
    let mut out = format!(
        "# Kafka Connect connector {} as a sluice Connector (sluice convert).\n",
        c.name
    );
    if let Some((secret, key)) = &c.secret {
        out.push_str(&format!(
            "# Before applying: kubectl create secret generic {secret} --from-literal={key}='<connection.uri>'\n\
             #   (the connection string is not copied here: it may hold credentials)\n"
        ));
    }
    if !c.differences.is_empty() {
        out.push_str("# Mapped, but behaves differently:\n");
        for d in &c.differences {
            out.push_str(&format!("#   - {d}\n"));
        }
    }
    if c.unmapped.is_empty() {
        out.push_str("# Every setting was mapped.\n");
    } else {
        out.push_str(&format!("# Not mapped ({}):\n", c.unmapped.len()));
        for (key, why) in &c.unmapped {
            out.push_str(&format!("#   - {key}: {why}\n"));
        }
    }
    out.push_str(&serde_yaml::to_string(&c.manifest).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converted(input: &str) -> Converted {
        convert(input, &Options::default()).unwrap()
    }

    fn unmapped_keys(c: &Converted) -> Vec<&str> {
        c.unmapped.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn a_source_from_connect_s_rest_api_maps_every_setting_of_the_table() {
        let c = converted(include_str!("../tests/convert/connect-source.json"));
        assert_eq!(c.name, "orders-cdc");
        let spec = &c.manifest["spec"];
        assert_eq!(spec["type"], "mongodb-source");
        assert_eq!(spec.get("tasksMax"), None, "a source runs one task");
        assert_eq!(spec["mongodb"]["database"], "shop");
        assert_eq!(spec["mongodb"]["collection"], "orders");
        assert_eq!(
            spec["mongodb"]["connectionUriSecretRef"],
            json!({ "name": "orders-cdc-mongodb", "key": "uri" })
        );
        let source = &spec["source"];
        assert_eq!(source["topicPrefix"], "cdc");
        assert_eq!(
            source["topicNamespaceMap"],
            json!({ "shop.orders": "orders-events" })
        );
        assert_eq!(
            source["pipeline"],
            r#"[{"$match": {"operationType": "insert"}}]"#
        );
        assert_eq!(source["fullDocument"], "updateLookup");
        assert_eq!(source["publishFullDocumentOnly"], true);
        assert_eq!(
            source["startup"],
            json!({ "mode": "timestamp", "startAtOperationTime": "1735689600" })
        );
        assert_eq!(
            source["heartbeat"],
            json!({ "intervalMs": 5000, "topic": "__cdc_heartbeats" })
        );
        assert_eq!(
            source["offsets"],
            json!({ "partitionName": "orders-cdc.1" })
        );
        assert_eq!(source["exactlyOnce"], "required");
        let errors = &spec["errors"];
        assert_eq!(
            errors,
            &json!({ "tolerance": "all", "retryTimeoutMs": 60000, "retryDelayMaxMs": 10000,
                     "logEnable": true, "logIncludeMessages": false })
        );
        assert_eq!(unmapped_keys(&c), ["poll.max.batch.size"]);
        assert!(c.secret.is_some());
        let text = render(&c);
        assert!(
            !text.contains("s3cret"),
            "the connection string is never copied: {text}"
        );
        assert!(
            text.contains("kubectl create secret generic orders-cdc-mongodb"),
            "{text}"
        );
        assert!(
            text.contains("#   - poll.max.batch.size: \"2000\": sluice sizes batches itself"),
            "{text}"
        );
    }

    #[test]
    fn a_sink_lists_what_it_could_not_map_and_keeps_connect_s_defaults() {
        let c = converted(include_str!("../tests/convert/connect-sink.json"));
        let spec = &c.manifest["spec"];
        assert_eq!(spec["type"], "mongodb-sink");
        assert_eq!(spec["tasksMax"], 3);
        let sink = &spec["sink"];
        assert_eq!(sink["topics"], json!(["orders", "refunds"]));
        assert_eq!(sink["writeModel"], "upsert");
        assert_eq!(sink["documentIdStrategy"], "providedInValue");
        assert_eq!(sink["maxBatchSize"], 500);
        assert_eq!(
            sink["bulkWriteOrdered"], true,
            "Connect's default, not sluice's"
        );
        assert_eq!(
            sink["consumerGroupId"], "connect-orders-sink",
            "Connect's group"
        );
        assert_eq!(sink["deleteOnNullValues"], true);
        assert_eq!(sink["valueConverter"], "json");
        assert_eq!(sink["keyConverter"], "string");
        assert_eq!(spec["errors"]["deadLetterQueueTopic"], "orders-dlq");
        assert_eq!(spec["errors"]["contextHeadersEnable"], true);
        assert_eq!(
            unmapped_keys(&c),
            [
                "errors.deadletterqueue.topic.replication.factor",
                "post.processor.chain",
                "rate.limiting.every.n",
                "transforms",
                "transforms.route.regex",
                "transforms.route.replacement",
                "transforms.route.type",
            ]
        );
        assert_eq!(
            spec["kafka"]["bootstrapServers"], BOOTSTRAP_PLACEHOLDER,
            "Connect's connector config has no bootstrap.servers"
        );
        assert!(
            c.differences
                .iter()
                .any(|d| d.contains("--bootstrap-servers"))
        );
    }

    #[test]
    fn a_strimzi_kafka_connector_takes_class_tasks_and_state_from_its_spec() {
        let c = convert(
            include_str!("../tests/convert/strimzi-kafkaconnector.yaml"),
            &Options {
                bootstrap_servers: Some("my-cluster-kafka-bootstrap:9092".into()),
            },
        )
        .unwrap();
        assert_eq!(c.name, "payments-sink");
        let spec = &c.manifest["spec"];
        assert_eq!(spec["type"], "mongodb-sink");
        assert_eq!(spec["tasksMax"], 2);
        assert_eq!(spec["state"], "paused");
        assert_eq!(
            spec["kafka"]["bootstrapServers"],
            "my-cluster-kafka-bootstrap:9092"
        );
        assert_eq!(spec["sink"]["topicsRegex"], "payments\\..*");
        assert_eq!(spec["sink"]["writeModel"], "replace");
        assert_eq!(
            c.unmapped,
            [(
                "value.converter".to_string(),
                "JsonConverter with schemas.enable=true: sluice reads JSON without an embedded schema"
                    .to_string()
            )]
        );
    }

    #[test]
    fn other_connectors_and_bad_values_are_named() {
        let err = convert(
            r#"{"name": "s3", "config": {"connector.class": "io.confluent.connect.s3.S3SinkConnector"}}"#,
            &Options::default(),
        )
        .unwrap_err();
        assert!(
            err.starts_with("connector.class io.confluent.connect.s3.S3SinkConnector"),
            "{err}"
        );
        let c = converted(
            r#"{"name": "x", "connector.class": "MongoSinkConnector", "topics": "a",
                "writemodel.strategy": "com.mongodb.kafka.connect.sink.writemodel.strategy.ReplaceOneBusinessKeyStrategy",
                "max.batch.size": "lots"}"#,
        );
        assert_eq!(
            c.unmapped,
            [
                ("max.batch.size".to_string(), "\"lots\" is not a valid value".to_string()),
                (
                    "writemodel.strategy".to_string(),
                    "ReplaceOneBusinessKeyStrategy: sluice has insert, replace, upsert and insertIfAbsent"
                        .to_string()
                ),
            ]
        );
        assert!(convert("[1, 2]", &Options::default()).is_err());
    }

    #[test]
    fn a_credential_in_an_unmapped_setting_is_never_printed() {
        let c = converted(
            r#"{"name": "x", "connector.class": "MongoSinkConnector", "topics": "a",
                "consumer.override.sasl.jaas.config": "ScramLoginModule required password=\"pw1\";",
                "timeseries.timefield": "ts", "max.batch.size": "x-token"}"#,
        );
        let text = render(&c);
        assert!(!text.contains("pw1"), "{text}");
        assert!(
            text.contains(
                "consumer.override.sasl.jaas.config: client overrides go in spec.kafka.properties"
            ),
            "{text}"
        );
        assert!(text.contains("timeseries.timefield: \"ts\""), "{text}");
    }
}
