//! Change events as Kafka records: the topic a namespace goes to (the MongoDB connector's naming), and a
//! change event's key (`{"_id": <resume token>}`) and value (the event, or only its full document) as
//! relaxed extended JSON.

use mongodb::bson::{Bson, Document, doc};

use crate::task::failure::{Failure, Stage};

/// The topic for a namespace: the namespace map (`db.coll`, then `db`, then `*`), else
/// `<prefix>.<db>.<coll>.<suffix>` without empty parts (MongoDB connector naming).
pub fn topic_for(source: &crate::crd::connector::SourceSpec, db: &str, coll: &str) -> String {
    if let Some(map) = &source.topic_namespace_map {
        for key in [format!("{db}.{coll}"), db.to_string(), "*".to_string()] {
            if let Some(t) = map.get(&key) {
                return t.clone();
            }
        }
    }
    [
        source.topic_prefix.as_deref().unwrap_or(""),
        db,
        coll,
        source.topic_suffix.as_deref().unwrap_or(""),
    ]
    .iter()
    .filter(|p| !p.is_empty())
    .copied()
    .collect::<Vec<_>>()
    .join(".")
}

/// A change event as a Kafka record: key and value JSON, or the conversion failure.
pub fn event_record(
    event: &Document,
    publish_full_document_only: bool,
) -> Result<(String, Option<String>), Failure> {
    let id = event
        .get("_id")
        .cloned()
        .ok_or_else(|| Failure::conversion(Stage::ValueConverter, "change event without _id"))?;
    let key = Bson::Document(doc! { "_id": id })
        .into_relaxed_extjson()
        .to_string();
    let value = if publish_full_document_only {
        match event.get("fullDocument") {
            Some(Bson::Document(d)) => {
                Some(Bson::Document(d.clone()).into_relaxed_extjson().to_string())
            }
            _ => None, // deletes have no full document: a tombstone
        }
    } else {
        Some(
            Bson::Document(event.clone())
                .into_relaxed_extjson()
                .to_string(),
        )
    };
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::connector::SourceSpec;
    use std::collections::BTreeMap;

    #[test]
    fn topics_follow_the_mongodb_connector_naming() {
        let mut s = SourceSpec {
            topic_prefix: Some("cdc".into()),
            ..Default::default()
        };
        assert_eq!(topic_for(&s, "shop", "orders"), "cdc.shop.orders");
        s.topic_suffix = Some("v1".into());
        assert_eq!(topic_for(&s, "shop", "orders"), "cdc.shop.orders.v1");
        s.topic_namespace_map = Some(BTreeMap::from([
            ("shop.orders".into(), "orders".into()),
            ("shop".into(), "shop-all".into()),
        ]));
        assert_eq!(topic_for(&s, "shop", "orders"), "orders");
        assert_eq!(topic_for(&s, "shop", "users"), "shop-all");
    }

    #[test]
    fn events_become_records_keyed_by_their_id() {
        let event = doc! { "_id": { "_data": "8263" }, "operationType": "insert", "fullDocument": { "_id": 1, "item": "apple" } };
        let (key, value) = event_record(&event, false).unwrap();
        assert_eq!(key, r#"{"_id":{"_data":"8263"}}"#);
        assert!(value.unwrap().contains(r#""operationType":"insert""#));
        let (_, only) = event_record(&event, true).unwrap();
        assert_eq!(only.unwrap(), r#"{"_id":1,"item":"apple"}"#);
        let delete = doc! { "_id": { "_data": "8264" }, "operationType": "delete" };
        assert_eq!(
            event_record(&delete, true).unwrap().1,
            None,
            "a delete is a tombstone"
        );
    }
}
