//! Which size limit refused a record.
//!
//! A produce answer says only `MESSAGE_TOO_LARGE` (or
//! `RECORD_LIST_TOO_LARGE`), without the limit. The limit that applies to a
//! batch is the topic's `max.message.bytes` (whose default is the broker's
//! `message.max.bytes`), or for `RECORD_LIST_TOO_LARGE` the topic's
//! `segment.bytes`; DescribeConfigs tells its value and where it comes from.
//! This runs only when a single-record batch was refused, so its cost does
//! not matter.

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::DescribeConfigsRequest;
use kafka_protocol::protocol::StrBytes;

use crate::client::Client;
use crate::error::{BrokerError, Error, Result};
use crate::protocol::error_codes::RECORD_LIST_TOO_LARGE;

/// DescribeConfigs resource type of a topic.
const TOPIC_RESOURCE: i8 = 2;
/// DescribeConfigs config source of a topic's own setting.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;

/// The limit that refused a batch with `code`, and its name for
/// [`Error::RecordTooLarge`]'s `which`.
pub(crate) async fn refusing_limit(
    client: &Client,
    topic: &str,
    code: i16,
) -> Result<(usize, &'static str)> {
    let key = if code == RECORD_LIST_TOO_LARGE {
        "segment.bytes"
    } else {
        "max.message.bytes"
    };
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(TOPIC_RESOURCE)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configuration_keys(Some(vec![StrBytes::from_static_str(key)]))]);
    let cluster = client.cluster();
    let response = cluster
        .with_retries("DescribeConfigs", |_| async {
            let conn = cluster.any_broker().await?;
            conn.request(&request)
                .await
                .map(|r| (conn.addr().to_string(), r))
        })
        .await;
    let (addr, response) = response?;
    let result = response
        .results
        .iter()
        .find(|r| r.resource_name.as_str() == topic)
        .ok_or_else(|| Error::Protocol {
            broker: addr.clone(),
            reason: format!("DescribeConfigs answer lacks topic {topic}"),
        })?;
    if result.error_code != 0 {
        return Err(BrokerError::new(
            &addr,
            "DescribeConfigs",
            result.error_code,
            result.error_message.as_ref().map(|m| m.to_string()),
        )
        .into());
    }
    let entry = result
        .configs
        .iter()
        .find(|c| c.name.as_str() == key)
        .ok_or_else(|| Error::Protocol {
            broker: addr.clone(),
            reason: format!("DescribeConfigs answer lacks {key} of {topic}"),
        })?;
    let limit = entry
        .value
        .as_ref()
        .and_then(|v| v.as_str().parse::<usize>().ok())
        .ok_or_else(|| Error::Protocol {
            broker: addr.clone(),
            reason: format!("{key} of {topic} is not a number: {:?}", entry.value),
        })?;
    let which = match (key, entry.config_source == DYNAMIC_TOPIC_CONFIG) {
        ("segment.bytes", true) => "the topic's segment.bytes",
        ("segment.bytes", false) => "the topic's segment.bytes (the broker's log.segment.bytes)",
        (_, true) => "the topic's max.message.bytes",
        (_, false) => "the broker's message.max.bytes (the topic's max.message.bytes default)",
    };
    Ok((limit, which))
}
