//! Counters of one client's wire activity, for [`Client::status`].
//!
//! One [`WireCounters`] per client, shared (through
//! `ConnectionSettings`) by every connection, fetch pipeline and produce
//! pipeline made from it. Writers only add; readers take a snapshot. All
//! relaxed atomics: the numbers are for operators and tests, never for
//! decisions.
//!
//! [`Client::status`]: crate::Client::status

use std::sync::atomic::{AtomicU64, Ordering};

/// The live counters (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct WireCounters {
    /// Connections opened successfully (TCP, TLS, versions, SASL done).
    pub connections_opened: AtomicU64,
    /// Connections dropped after opening; open = opened - closed.
    pub connections_closed: AtomicU64,
    /// Fetch requests sent.
    pub fetch_requests: AtomicU64,
    /// Of those, requests in an established fetch session that listed only
    /// what changed (KIP-227 incremental fetches).
    pub incremental_fetches: AtomicU64,
    /// Partitions listed in fetch requests, summed over requests.
    pub fetch_partitions: AtomicU64,
    /// Fetch requests sent to a replica that is not the leader (KIP-392).
    pub follower_fetches: AtomicU64,
    /// Produce requests sent.
    pub produce_requests: AtomicU64,
    /// Partition batches carried by produce requests, summed over requests.
    pub produce_batches: AtomicU64,
    /// Successful SASL re-authentications of open connections (KIP-368).
    pub reauthentications: AtomicU64,
}

impl WireCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A snapshot of the counters.
    pub(crate) fn snapshot(&self) -> ClientStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let opened = get(&self.connections_opened);
        let closed = get(&self.connections_closed);
        ClientStatus {
            open_connections: opened.saturating_sub(closed),
            connections_opened: opened,
            fetch_requests: get(&self.fetch_requests),
            incremental_fetches: get(&self.incremental_fetches),
            fetch_partitions: get(&self.fetch_partitions),
            follower_fetches: get(&self.follower_fetches),
            produce_requests: get(&self.produce_requests),
            produce_batches: get(&self.produce_batches),
            reauthentications: get(&self.reauthentications),
        }
    }
}

/// What a [`Client`](crate::Client) and everything made from it have done
/// on the wire so far: connections, fetches and produce requests.
///
/// ```no_run
/// # async fn demo(client: kastellan::Client) {
/// let status = client.status();
/// println!(
///     "{} connections open, {:.1} batches per produce request",
///     status.open_connections,
///     status.produce_batches as f64 / status.produce_requests.max(1) as f64,
/// );
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ClientStatus {
    /// Broker connections open now, of every kind (metadata and admin,
    /// produce, fetch, group coordinator).
    pub open_connections: u64,
    /// Broker connections opened since the client was made.
    pub connections_opened: u64,
    /// Fetch requests sent (readers and group consumers).
    pub fetch_requests: u64,
    /// Fetch requests that used an established fetch session and listed
    /// only the partitions whose position changed (KIP-227).
    pub incremental_fetches: u64,
    /// Partitions listed in fetch requests, summed over requests.
    pub fetch_partitions: u64,
    /// Fetch requests sent to a replica in the consumer's rack that is not
    /// the partition's leader, as the leader directed (KIP-392; group
    /// consumers with a [`rack`](crate::group::GroupConsumerBuilder::rack)).
    pub follower_fetches: u64,
    /// Produce requests sent.
    pub produce_requests: u64,
    /// Partition batches carried by produce requests, summed over requests:
    /// `produce_batches / produce_requests` is how many partitions one
    /// request carried on average.
    pub produce_batches: u64,
    /// SASL re-authentications of open connections (KIP-368): a broker
    /// with `connections.max.reauth.ms` set announces a session lifetime,
    /// and each connection authenticates again before it ends.
    pub reauthentications: u64,
}
