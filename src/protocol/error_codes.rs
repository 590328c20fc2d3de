//! Kafka error codes: names and retriability.
//!
//! The table itself comes from `kafka-protocol` (generated from Kafka's
//! `Errors.java`); this module only turns it into the forms our errors print.

use kafka_protocol::error::ResponseError;

/// Error code `OFFSET_OUT_OF_RANGE`.
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
/// Error code `UNKNOWN_TOPIC_OR_PARTITION`.
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// Error code `LEADER_NOT_AVAILABLE`.
pub const LEADER_NOT_AVAILABLE: i16 = 5;
/// Error code `NOT_LEADER_OR_FOLLOWER`.
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// Error code `MESSAGE_TOO_LARGE`.
pub const MESSAGE_TOO_LARGE: i16 = 10;
/// Error code `TOPIC_ALREADY_EXISTS`.
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Error code `UNSUPPORTED_VERSION`.
pub const UNSUPPORTED_VERSION: i16 = 35;
/// Error code `RECORD_LIST_TOO_LARGE`.
pub const RECORD_LIST_TOO_LARGE: i16 = 18;
/// Error code `OUT_OF_ORDER_SEQUENCE_NUMBER`.
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
/// Error code `DUPLICATE_SEQUENCE_NUMBER`.
pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
/// Error code `INVALID_PRODUCER_EPOCH`.
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
/// Error code `UNKNOWN_PRODUCER_ID`.
pub const UNKNOWN_PRODUCER_ID: i16 = 59;

/// The Kafka name of an error code in its documented form (`NOT_LEADER_OR_FOLLOWER`).
pub fn name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(c)) => format!("UNKNOWN_CODE_{c}"),
        Some(e) => upper_snake(&e.to_string()),
    }
}

/// Whether Kafka marks the error code as retriable.
pub fn is_retriable(code: i16) -> bool {
    ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable())
}

/// Whether the error means our view of partition leadership is stale and
/// metadata must be refreshed before retrying.
pub fn needs_metadata_refresh(code: i16) -> bool {
    matches!(
        code,
        UNKNOWN_TOPIC_OR_PARTITION | LEADER_NOT_AVAILABLE | NOT_LEADER_OR_FOLLOWER
    ) || code == 74 /* FENCED_LEADER_EPOCH */
        || code == 75 /* UNKNOWN_LEADER_EPOCH */
}

fn upper_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_kafka_documentation() {
        assert_eq!(name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(name(0), "NONE");
        assert_eq!(name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(name(9999), "UNKNOWN_CODE_9999");
    }

    #[test]
    fn retriability_follows_kafka() {
        assert!(is_retriable(6));
        assert!(is_retriable(3));
        assert!(!is_retriable(10));
        assert!(!is_retriable(9999));
        assert!(needs_metadata_refresh(6));
        assert!(!needs_metadata_refresh(10));
    }
}
