//! Cutting text to a size limit (Event notes, termination messages, status messages) without splitting a
//! character.

/// The longest prefix of `text` of at most `max_bytes` bytes that ends on a character boundary.
pub fn cut(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let end = (0..=max_bytes)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..end]
}

/// `text` within `max_bytes`, with `marker` appended (and counted) when it had to be cut.
pub fn cut_with_marker(text: &str, max_bytes: usize, marker: &str) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    format!(
        "{}{marker}",
        cut(text, max_bytes.saturating_sub(marker.len()))
    )
}

/// An error message fit for status, metrics, Events and logs: MongoDB quotes record contents in braces —
/// key values in duplicate-key errors (`dup key: { _id: "…" }`), documents in others (`illegal update:
/// { … }`, validation details) — so every braced part is left out (`{…}`), and the message kept short.
pub fn without_record_contents(message: &str) -> String {
    let text = match message.find("dup key:") {
        Some(i) => format!("{}dup key: (omitted)", &message[..i]),
        None => without_braced(&without_quoted_value(message)),
    };
    if text.len() > 300 {
        format!("{}…", cut(&text, 300))
    } else {
        text
    }
}

/// Kafka Connect's "Could not convert value '<the value>' (<class>) …" with the value left out.
fn without_quoted_value(text: &str) -> String {
    const OPEN: &str = "Could not convert value '";
    let Some(start) = text.find(OPEN).map(|i| i + OPEN.len()) else {
        return text.to_string();
    };
    match text[start..].rfind("' (") {
        Some(end) => format!("{}…{}", &text[..start], &text[start + end..]),
        None => format!("{}…", &text[..start]),
    }
}

/// `text` with every outermost `{ … }` replaced by `{…}` (an unclosed one runs to the end).
fn without_braced(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '{' => {
                if depth == 0 {
                    out.push_str("{…}");
                }
                depth += 1;
            }
            '}' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_leave_out_duplicate_key_values_and_stay_short() {
        let m = "E11000 duplicate key error collection: shop.orders index: _id_ dup key: { _id: \"4111-1111\" }";
        assert_eq!(
            without_record_contents(m),
            "E11000 duplicate key error collection: shop.orders index: _id_ dup key: (omitted)"
        );
        let long = "é".repeat(400);
        assert!(without_record_contents(&long).len() <= 304);
    }

    #[test]
    fn documents_mongodb_quotes_are_left_out() {
        assert_eq!(
            without_record_contents(
                "Performing an update on the path '_id' would modify the immutable field '_id': illegal \
                 update: { $set: { card: \"4111-1111\", nested: { a: 1 } } } (code 66)"
            ),
            "Performing an update on the path '_id' would modify the immutable field '_id': illegal update: \
             {…} (code 66)"
        );
        assert_eq!(
            without_record_contents("Document failed validation: { details: { x"),
            "Document failed validation: {…}"
        );
        assert_eq!(without_record_contents("no braces here"), "no braces here");
        assert_eq!(
            without_record_contents(
                "Could not convert value '[4111-1111, x' (y)]' (java.util.ArrayList) into a BsonDocument."
            ),
            "Could not convert value '…' (java.util.ArrayList) into a BsonDocument."
        );
    }

    #[test]
    fn cuts_on_a_character_boundary() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééé", 3), "é", "é is two bytes");
        assert_eq!(cut_with_marker("abcdef", 5, "..."), "ab...");
        assert_eq!(cut_with_marker("abc", 5, "..."), "abc");
        let long = "é".repeat(600);
        let cut = cut_with_marker(&long, 1024, "...");
        assert!(cut.len() <= 1024 && cut.ends_with("..."), "{}", cut.len());
    }
}
