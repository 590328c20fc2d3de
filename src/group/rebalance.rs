//! Rebalance hooks: the application learns which partitions it gets and
//! loses, to set up and flush per-partition state (Java's
//! `ConsumerRebalanceListener`, franz-go's `OnPartitions*`).

use std::future::Future;
use std::pin::Pin;

use crate::TopicPartition;

/// Told when partitions are assigned, revoked and lost. Every method has a
/// default that does nothing; implement the ones you need with plain
/// `async fn`s.
///
/// ```
/// use kastellan::group::RebalanceListener;
/// use kastellan::TopicPartition;
///
/// struct FlushOnRevoke;
///
/// impl RebalanceListener for FlushOnRevoke {
///     async fn revoked(&self, partitions: &[TopicPartition]) {
///         for tp in partitions {
///             println!("flushing state of {tp}");
///         }
///     }
/// }
/// ```
pub trait RebalanceListener: Send + Sync + 'static {
    /// Partitions now owned, before their first record is handled.
    fn assigned(&self, partitions: &[TopicPartition]) -> impl Future<Output = ()> + Send {
        let _ = partitions;
        async {}
    }

    /// Partitions given up in a rebalance or at shutdown, once their
    /// records in flight finished (or the revoke timeout passed) and before
    /// their final commit.
    fn revoked(&self, partitions: &[TopicPartition]) -> impl Future<Output = ()> + Send {
        let _ = partitions;
        async {}
    }

    /// Partitions lost without a chance to commit (the member was evicted
    /// or the group moved on without it): another member may own them
    /// already.
    fn lost(&self, partitions: &[TopicPartition]) -> impl Future<Output = ()> + Send {
        let _ = partitions;
        async {}
    }
}

#[allow(dead_code)] // called by the session once hooks are wired in
type Hook<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// [`RebalanceListener`] behind `dyn`.
#[allow(dead_code)] // called by the session once hooks are wired in
pub(crate) trait DynRebalanceListener: Send + Sync + 'static {
    fn assigned_boxed<'a>(&'a self, partitions: &'a [TopicPartition]) -> Hook<'a>;
    fn revoked_boxed<'a>(&'a self, partitions: &'a [TopicPartition]) -> Hook<'a>;
    fn lost_boxed<'a>(&'a self, partitions: &'a [TopicPartition]) -> Hook<'a>;
}

impl<L: RebalanceListener> DynRebalanceListener for L {
    fn assigned_boxed<'a>(&'a self, partitions: &'a [TopicPartition]) -> Hook<'a> {
        Box::pin(self.assigned(partitions))
    }
    fn revoked_boxed<'a>(&'a self, partitions: &'a [TopicPartition]) -> Hook<'a> {
        Box::pin(self.revoked(partitions))
    }
    fn lost_boxed<'a>(&'a self, partitions: &'a [TopicPartition]) -> Hook<'a> {
        Box::pin(self.lost(partitions))
    }
}

impl std::fmt::Debug for dyn DynRebalanceListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RebalanceListener")
    }
}
