//! Where the broker is: `--bootstrap`, else `KAFKA_BOOTSTRAP`, else a broker
//! started for this run by the repository's test fixture.

use anyhow::anyhow;

use crate::testcontainers::{self, Broker, BrokerOptions};

pub const BOOTSTRAP_ENV: &str = "KAFKA_BOOTSTRAP";

/// The bootstrap address from `KAFKA_BOOTSTRAP`, if set.
pub fn from_env() -> Option<String> {
    std::env::var(BOOTSTRAP_ENV)
        .ok()
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

/// A broker to run against, and the local broker started for it, if any;
/// that broker stops when the returned guard drops.
pub fn resolve(explicit: Option<&str>) -> anyhow::Result<(String, Option<Broker>)> {
    if let Some(bootstrap) = explicit.map(str::to_string).or_else(from_env) {
        return Ok((bootstrap, None));
    }
    eprintln!("{BOOTSTRAP_ENV} is not set: starting a local Kafka broker");
    // The fixture's JVM defaults favour start-up time (C1 only); a broker
    // that is being measured against gets the full JIT.
    let options = BrokerOptions {
        jvm_args: vec!["-XX:TieredStopAtLevel=4".to_string()],
        ..BrokerOptions::default()
    };
    let broker = testcontainers::start_broker(options).map_err(|error| {
        anyhow!(
            "{BOOTSTRAP_ENV} is not set and no local broker could be started: {error}\n\
             Point {BOOTSTRAP_ENV} at a Kafka 4.x broker (host:port), pass \
             --bootstrap HOST:PORT, or use run.sh"
        )
    })?;
    Ok((broker.bootstrap().to_string(), Some(broker)))
}
