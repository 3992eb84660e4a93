//! What failed, where, and on which record: the stage (Kafka Connect's names), the classified failure (error
//! class, code, whether a retry can help), and the record's coordinates and contents. Kafka and MongoDB
//! errors are classified here, in one place for every stage. A leaf: it uses nothing else of the task.

/// Kafka Connect's stages (`__connect.errors.stage`), as routes name them.
pub use crate::crd::connector::ErrorStage as Stage;

/// What a task depends on that can be unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dependency {
    MongoDB,
    Kafka,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::MongoDB => "MongoDB",
            Dependency::Kafka => "Kafka",
        }
    }
}

/// One failed attempt at one operation, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    /// The error class (`__connect.errors.exception.class.name`), e.g. `DataException`, `MongoWriteException`.
    pub class: String,
    pub message: String,
    /// A MongoDB or Kafka error code, when there is one.
    pub code: Option<i32>,
    /// Whether trying again can help (network errors, timeouts, retryable labels, broker-retriable errors).
    pub retriable: bool,
    /// Set when the failure says a dependency is unavailable (unreachable, not primary, shutting down,
    /// refusing authentication or authorization, a write concern not met) rather than anything about the
    /// record: an outage, waited out, never a record error.
    pub outage: Option<Dependency>,
}

impl Failure {
    pub fn new(
        stage: Stage,
        class: impl Into<String>,
        message: impl Into<String>,
        retriable: bool,
    ) -> Self {
        Self {
            stage,
            class: class.into(),
            message: message.into(),
            code: None,
            retriable,
            outage: None,
        }
    }

    /// The same failure, marked as an outage of `dependency`.
    pub fn outage_of(mut self, dependency: Dependency) -> Self {
        self.outage = Some(dependency);
        self.retriable = true;
        self
    }

    pub fn with_code(mut self, code: i32) -> Self {
        self.code = Some(code);
        self
    }

    /// A conversion failure: never retried.
    pub fn conversion(stage: Stage, message: impl Into<String>) -> Self {
        Self::new(
            stage,
            "org.apache.kafka.connect.errors.DataException",
            message,
            false,
        )
    }

    /// A task config that can't work: never retried.
    pub fn config(stage: Stage, message: impl Into<String>) -> Self {
        Self::new(stage, "ConfigException", message, false)
    }

    /// A librdkafka error: retriable when the broker error clears by itself, and then an outage of Kafka
    /// (but for an unknown topic or partition, which sluice's own topic creation clears).
    pub fn kafka(stage: Stage, err: &rdkafka::error::KafkaError) -> Self {
        let code = err.rdkafka_error_code();
        let retriable = code.is_some_and(crate::kafka::is_retriable);
        let mut f = Self::new(
            stage,
            "org.apache.kafka.common.KafkaException",
            err.to_string(),
            retriable,
        );
        if let Some(c) = code {
            f.code = Some(c as i32);
        }
        if retriable && code != Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition) {
            f.outage = Some(Dependency::Kafka);
        }
        f
    }

    /// A MongoDB driver error, with its [`mongo_message`]: network problems, timeouts, server selection,
    /// authentication, and the codes and labels of an unavailable server are outages; other command errors
    /// belong to the command.
    pub fn mongo(stage: Stage, err: &mongodb::error::Error) -> Self {
        use mongodb::error::ErrorKind;
        let labelled = err.contains_label("RetryableWriteError")
            || err.contains_label("ResumableChangeStreamError");
        let (class, code, outage) = match err.kind.as_ref() {
            ErrorKind::Command(c) => (
                "com.mongodb.MongoCommandException",
                Some(c.code),
                is_outage_code(c.code),
            ),
            ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(wce)) => (
                "com.mongodb.MongoWriteConcernException",
                Some(wce.code),
                true,
            ),
            ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => {
                ("com.mongodb.MongoSocketException", None, true)
            }
            ErrorKind::ServerSelection { .. } => ("com.mongodb.MongoTimeoutException", None, true),
            ErrorKind::Authentication { .. } => ("com.mongodb.MongoSecurityException", None, true),
            _ => ("com.mongodb.MongoException", None, false),
        };
        let mut f = Self::new(stage, class, mongo_message(err), outage || labelled);
        f.code = code;
        if outage || labelled {
            f.outage = Some(Dependency::MongoDB);
        }
        f
    }
}

/// MongoDB server error codes that a retry can clear (the retryable-writes specification's list): the
/// server is unreachable, not primary, stepping down or shutting down.
pub const RETRYABLE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// MongoDB server error codes of a server that refuses the client rather than the record: Unauthorized,
/// AuthenticationFailed.
pub const ACCESS_CODES: &[i32] = &[13, 18];

/// Whether a MongoDB error code says the server is unavailable to this client (an outage), not that the
/// command or record is wrong.
pub fn is_outage_code(code: i32) -> bool {
    RETRYABLE_CODES.contains(&code) || ACCESS_CODES.contains(&code)
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in {}: {}",
            self.class,
            self.stage.connect_name(),
            self.message
        )
    }
}

/// Whether a record failure is retried: its own classification unless the user listed its class or code in
/// `notRetryable` (Spring Kafka's not-retryable exceptions). Outages are always waited out, whatever
/// `notRetryable` says: they are not about the record.
pub fn is_retriable(failure: &Failure, not_retryable: &[String]) -> bool {
    failure.retriable && !not_retryable.iter().any(|n| names_failure(n, failure))
}

/// Whether `name` (as `notRetryable` and dead-letter routes take them) names the failure: its error class
/// whole or its last part, or its MongoDB error code.
pub fn names_failure(name: &str, failure: &Failure) -> bool {
    name == failure.class
        || failure.class.rsplit('.').next() == Some(name)
        || failure.code.is_some_and(|c| name == c.to_string())
}

/// Where a record came from and what it held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordContext {
    /// The original topic (sink) or the topic it was going to (source).
    pub topic: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    /// For a source record: the change event's `_id` (its resume token).
    pub event_id: Option<String>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// A sink record's timestamp (milliseconds since the epoch), which its dead letter keeps.
    pub timestamp_ms: Option<i64>,
    /// Whether that timestamp is the broker's (`LogAppendTime`) rather than the producer's.
    pub log_append_time: bool,
}

impl RecordContext {
    /// The ledger its counts go to: its Kafka partition's (a sink record); `None` for a source record
    /// (the source's offset partition name is the one worked on).
    pub fn ledger_key(&self) -> Option<String> {
        self.partition
            .map(|p| super::ledger::partition_key(&self.topic, p))
    }

    /// Where the record is, for logs and termination messages (never its contents).
    pub fn coordinates(&self) -> String {
        match (&self.partition, &self.offset, &self.event_id) {
            (Some(p), Some(o), _) => format!("{}-{p}@{o}", self.topic),
            (_, _, Some(id)) => format!("{} change event {id}", self.topic),
            _ => self.topic.clone(),
        }
    }

    /// Key and value as text, for `errors.logIncludeMessages`.
    pub fn contents_for_log(&self) -> String {
        let text = |b: &Option<Vec<u8>>| {
            b.as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned()
        };
        format!("key={:?} value={:?}", text(&self.key), text(&self.value))
    }
}

/// A MongoDB driver error as people read it. The driver's own Display is `Kind: …, labels: {…}, source: …,
/// server response: …` with Debug dumps inside, so the text comes from the kind: the server's code name,
/// code and message for a command or write error.
fn mongo_message(err: &mongodb::error::Error) -> String {
    use mongodb::error::{ErrorKind, WriteFailure};
    match err.kind.as_ref() {
        ErrorKind::Command(c) => format!("{} ({}): {}", c.code_name, c.code, c.message),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => format!(
            "write concern not met: {} ({}): {}",
            w.code_name, w.code, w.message
        ),
        ErrorKind::Write(WriteFailure::WriteError(w)) => format!(
            "{} ({}): {}",
            w.code_name.as_deref().unwrap_or("WriteError"),
            w.code,
            w.message
        ),
        ErrorKind::Authentication { message, .. } => format!("authentication failed: {message}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mongodb_errors_read_as_text_not_debug_dumps() {
        let command: mongodb::error::CommandError = mongodb::bson::from_document(mongodb::bson::doc! {
            "code": 13, "codeName": "Unauthorized", "errmsg": "not authorized on shop to execute command insert"
        })
        .unwrap();
        let err = mongodb::error::Error::from(mongodb::error::ErrorKind::Command(command));
        assert!(
            err.to_string().contains("labels: {}"),
            "the driver's Display"
        );
        let f = Failure::mongo(Stage::TaskPut, &err);
        assert_eq!(
            f.message,
            "Unauthorized (13): not authorized on shop to execute command insert"
        );
        let io = mongodb::error::Error::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        let f = Failure::mongo(Stage::TaskPut, &io);
        assert_eq!(f.message, "I/O error: connection refused");
        assert_eq!(f.outage, Some(Dependency::MongoDB));
    }

    #[test]
    fn classification_and_not_retryable() {
        let net = Failure::new(
            Stage::TaskPut,
            "com.mongodb.MongoSocketException",
            "reset",
            true,
        );
        assert!(is_retriable(&net, &[]));
        assert!(
            !is_retriable(&net, &["MongoSocketException".into()]),
            "short class names match"
        );
        let dup = Failure::new(Stage::TaskPut, "MongoWriteException", "dup", true).with_code(11000);
        assert!(!is_retriable(&dup, &["11000".into()]), "codes match");
        assert!(
            !is_retriable(&Failure::conversion(Stage::ValueConverter, "bad json"), &[]),
            "conversion never retries"
        );
    }

    #[test]
    fn a_source_record_is_placed_by_its_change_event() {
        let record = RecordContext {
            topic: "cdc.shop.orders".into(),
            event_id: Some("8263…".into()),
            ..Default::default()
        };
        assert_eq!(record.coordinates(), "cdc.shop.orders change event 8263…");
    }
}
