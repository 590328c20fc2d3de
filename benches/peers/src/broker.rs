//! Where the broker is.

use anyhow::bail;

pub const BOOTSTRAP_ENV: &str = "KAFKA_BOOTSTRAP";

/// The bootstrap address from `KAFKA_BOOTSTRAP`.
pub fn bootstrap() -> anyhow::Result<String> {
    match std::env::var(BOOTSTRAP_ENV) {
        Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_string()),
        _ => bail!(
            "{BOOTSTRAP_ENV} is not set: point it at a Kafka 4.x broker \
             (e.g. {BOOTSTRAP_ENV}=127.0.0.1:9092), pass --bootstrap HOST:PORT, \
             or use run.sh, which starts a local broker"
        ),
    }
}
