//! Rebalance hooks: the application learns which partitions it gets and
//! loses, to set up and flush per-partition state (Java's
//! `ConsumerRebalanceListener`, franz-go's `OnPartitions*`).
//!
//! The session calls a hook on a task of its own and waits for it only so
//! long (see [`RebalanceListener`] for the bounds): a hook that panics or
//! hangs is reported ([`ConsumerError::RebalanceHook`]) and the session goes
//! on as if it had returned, since the group does not wait for a member
//! whose hook hangs (the coordinator evicts a member that does not rejoin
//! within the rebalance timeout).
//!
//! [`ConsumerError::RebalanceHook`]: super::ConsumerError::RebalanceHook

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::events::{ConsumerError, Reporter};
use super::runtime::panic_message;
use crate::TopicPartition;

/// Told when partitions are assigned, revoked and lost. Every method has a
/// default that does nothing; implement the ones you need with plain
/// `async fn`s. Install it with
/// [`GroupConsumerBuilder::on_rebalance`](super::GroupConsumerBuilder::on_rebalance).
///
/// # When each hook runs
///
/// - [`assigned`](Self::assigned): once the start positions of newly
///   assigned partitions are known, before the first of their records is
///   handled. Only the partitions new to this member (a cooperative member
///   keeps the others across a rebalance); never called with an empty list.
/// - [`revoked`](Self::revoked): for partitions given up in a rebalance or at
///   shutdown, after their records in flight finished (or the revoke
///   timeout, or the shutdown deadline, passed) and before their final
///   commit. Records of these partitions still with a handler have seen
///   [`ConsumerRecord::revoked`](super::ConsumerRecord::revoked) fire.
/// - [`lost`](Self::lost): for partitions given up without a commit, when
///   an answer from the coordinator says the membership is lost (the member
///   was evicted, for example after its session expired, or the group moved
///   on without it) or the consumer stops for a fatal error. Another member
///   may own them already: do not commit anything for them.
///
/// A partition gets `revoked` or `lost` only after it got `assigned`, and
/// hooks are called one at a time, in that order, from the group session.
///
/// # Bounds
///
/// Each call gets at most the
/// [`revoke_timeout`](super::GroupConsumerBuilder::revoke_timeout) (30 s by
/// default). `revoked` at shutdown gets at most the shutdown deadline, and
/// during a rebalance no more than the rebalance timeout leaves after the
/// records in flight were waited for, so that the member still rejoins in
/// time. A call still running at its bound is abandoned (its future is
/// dropped); a call that panics is caught. Both are logged and reported
/// ([`ConsumerError::RebalanceHook`](super::ConsumerError::RebalanceHook)),
/// and the consumer goes on as if the hook had returned. Hooks run on a
/// task of their own, but one that blocks its thread (instead of awaiting)
/// cannot be abandoned: keep blocking work in `spawn_blocking`.
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

type Hook<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// [`RebalanceListener`] behind `dyn`.
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

/// Which hook of a [`RebalanceListener`] was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RebalanceEvent {
    /// [`RebalanceListener::assigned`].
    Assigned,
    /// [`RebalanceListener::revoked`].
    Revoked,
    /// [`RebalanceListener::lost`].
    Lost,
}

impl fmt::Display for RebalanceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RebalanceEvent::Assigned => "assigned",
            RebalanceEvent::Revoked => "revoked",
            RebalanceEvent::Lost => "lost",
        })
    }
}

/// Call one hook of `listener` for `partitions` on a task of its own,
/// waiting at most `bound`. A panic or a call still running at the bound
/// (then abandoned) is logged and reported; the caller goes on either way.
pub(crate) async fn call_hook(
    listener: &Arc<dyn DynRebalanceListener>,
    event: RebalanceEvent,
    partitions: &[TopicPartition],
    bound: Duration,
    reporter: &Reporter,
) {
    if partitions.is_empty() {
        return;
    }
    let hook = Arc::clone(listener);
    let owned = partitions.to_vec();
    let mut task = tokio::spawn(async move {
        match event {
            RebalanceEvent::Assigned => hook.assigned_boxed(&owned).await,
            RebalanceEvent::Revoked => hook.revoked_boxed(&owned).await,
            RebalanceEvent::Lost => hook.lost_boxed(&owned).await,
        }
    });
    let reason = match tokio::time::timeout(bound, &mut task).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) if e.is_panic() => format!("panicked: {}", panic_message(&*e.into_panic())),
        Ok(Err(_)) => "was cancelled".to_string(),
        Err(_) => {
            task.abort();
            format!("did not return within {bound:?}; abandoned")
        }
    };
    tracing::error!(
        %event,
        partitions = ?partitions.iter().map(ToString::to_string).collect::<Vec<_>>(),
        %reason,
        "rebalance hook failed; the consumer goes on"
    );
    reporter.report(ConsumerError::RebalanceHook {
        event,
        partitions: partitions.to_vec(),
        reason,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Calls(Mutex<Vec<(RebalanceEvent, Vec<TopicPartition>)>>);

    struct Listener(Arc<Calls>);

    impl RebalanceListener for Listener {
        async fn assigned(&self, partitions: &[TopicPartition]) {
            self.0
                 .0
                .lock()
                .unwrap()
                .push((RebalanceEvent::Assigned, partitions.to_vec()));
        }
        async fn revoked(&self, partitions: &[TopicPartition]) {
            if partitions[0].partition() == 13 {
                panic!("revoked hook broke");
            }
            std::future::pending::<()>().await;
        }
    }

    fn listener() -> (Arc<dyn DynRebalanceListener>, Arc<Calls>) {
        let calls = Arc::new(Calls::default());
        (Arc::new(Listener(Arc::clone(&calls))), calls)
    }

    #[tokio::test]
    async fn a_hook_is_called_with_its_partitions() {
        let (l, calls) = listener();
        let reporter = Reporter::default();
        let mut errors = reporter.stream();
        let tps = [TopicPartition::new("t", 0), TopicPartition::new("t", 1)];
        call_hook(
            &l,
            RebalanceEvent::Assigned,
            &tps,
            Duration::from_secs(5),
            &reporter,
        )
        .await;
        call_hook(
            &l,
            RebalanceEvent::Assigned,
            &[],
            Duration::from_secs(5),
            &reporter,
        )
        .await;
        call_hook(
            &l,
            RebalanceEvent::Lost,
            &tps,
            Duration::from_secs(5),
            &reporter,
        )
        .await;
        assert_eq!(
            *calls.0.lock().unwrap(),
            vec![(RebalanceEvent::Assigned, tps.to_vec())],
            "empty lists are not passed on; default hooks do nothing"
        );
        assert!(errors.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_hook_that_panics_or_hangs_is_reported_and_left_behind() {
        let (l, _) = listener();
        let reporter = Reporter::default();
        let mut errors = reporter.stream();
        let broken = [TopicPartition::new("t", 13)];
        call_hook(
            &l,
            RebalanceEvent::Revoked,
            &broken,
            Duration::from_secs(5),
            &reporter,
        )
        .await;
        let Some(ConsumerError::RebalanceHook {
            event,
            partitions,
            reason,
        }) = errors.try_recv()
        else {
            panic!("a panic is reported")
        };
        assert_eq!(
            (event, partitions),
            (RebalanceEvent::Revoked, broken.to_vec())
        );
        assert!(reason.contains("revoked hook broke"), "{reason}");

        let started = std::time::Instant::now();
        let hangs = [TopicPartition::new("t", 2)];
        call_hook(
            &l,
            RebalanceEvent::Revoked,
            &hangs,
            Duration::from_millis(100),
            &reporter,
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let problem = errors.try_recv().expect("a hang is reported");
        assert!(
            problem.to_string().contains("did not return within 100ms"),
            "{problem}"
        );
    }
}
