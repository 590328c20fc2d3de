//! [`Router`] and [`Route`]: which handler, with which options, gets the
//! records of which topic.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::glob;
use crate::error::{Error, Result};
use crate::group::DynHandler;
use crate::group::Handler;
use crate::middleware::{Layered, Middleware, Stack};

/// One topic's (or pattern's) handler and what to do when it fails.
///
/// | option | default | |
/// |---|---|---|
/// | [`retries`](Self::retries) | 0 | how many times a `Retry` failure goes through the service's retry topic before the dead-letter topic |
/// | [`dead_letter`](Self::dead_letter) | on when the service has a dead-letter topic | park records that cannot succeed (a `DeadLetter` failure, or retries used up) in the dead-letter topic |
/// | [`layer`](Self::layer) | none | middleware around this route's handler |
/// | [`order_guard`](Self::order_guard) | off | keep per-key order across retries |
///
/// ```
/// use std::time::Duration;
/// use kastellan::group::{ConsumerRecord, HandlerError};
/// use kastellan::middleware::Timeout;
/// use kastellan::service::Route;
///
/// async fn charge(record: ConsumerRecord) -> Result<(), HandlerError> {
///     let _cents: u64 = record.json()?;
///     Ok(())
/// }
///
/// let route = Route::new(charge)
///     .retries(3)
///     .dead_letter(true)
///     .layer(Timeout::new(Duration::from_secs(10)));
/// # let _ = route;
/// ```
///
/// Any [`Handler`] converts into a route with the defaults, so
/// [`Router::route`] takes a bare handler too.
#[must_use = "a route does nothing until it is added to a Router"]
pub struct Route {
    handler: Arc<dyn DynHandler>,
    layers: Stack,
    retries: u32,
    dead_letter: Option<bool>,
    order_guard: bool,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("layers", &self.layers.len())
            .field("retries", &self.retries)
            .field("dead_letter", &self.dead_letter)
            .field("order_guard", &self.order_guard)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> From<H> for Route {
    fn from(handler: H) -> Self {
        Route::new(handler)
    }
}

impl Route {
    /// A route to `handler` with the defaults.
    pub fn new(handler: impl Handler) -> Self {
        Self {
            handler: Arc::new(handler),
            layers: Stack::new(),
            retries: 0,
            dead_letter: None,
            order_guard: false,
        }
    }

    /// Hand a record whose handler failed with
    /// [`FailureKind::Retry`](crate::group::FailureKind::Retry) to the
    /// service's retry topic up to `n` times (MiKa's `numberOfRetries`): it
    /// is handled at most `n + 1` times in all, each retry after the
    /// service's retry delay. Needs a retry topic
    /// ([`ServiceConfig::retry_topic`](super::ServiceConfig::retry_topic)).
    /// Default 0.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Whether records that cannot succeed — a
    /// [`FailureKind::DeadLetter`](crate::group::FailureKind::DeadLetter)
    /// failure, or a `Retry` failure with no retries left — go to the
    /// service's dead-letter topic. Default: yes when the service has one.
    /// `true` without a dead-letter topic is refused at start-up; with
    /// `false` such a record fails and holds its partition (see the
    /// [service docs](super#when-a-record-fails)).
    pub fn dead_letter(mut self, on: bool) -> Self {
        self.dead_letter = Some(on);
        self
    }

    /// Add a middleware around this route's handler. Records pass the
    /// route's middleware in the order they were added, after the
    /// router's ([`Router::layer`]), then reach the handler.
    pub fn layer(mut self, middleware: impl Middleware) -> Self {
        self.layers = self.layers.layer(middleware);
        self
    }

    /// Keep per-key order across retries: while a record with some key
    /// waits in the retry topic, later records of that key from the same
    /// partition follow it there (without being handled first) and are
    /// handled after it. Needs a retry topic. Default off.
    ///
    /// Limits (see the [service docs](super#the-order-guard)): the guard
    /// lives in the memory of one service instance; it holds fully while
    /// the instance that owns a key's origin partition also handles the
    /// key's retry records (always with one instance); after a rebalance
    /// moves the origin partition, its new owner knows nothing of the
    /// waiting records. Records without a key are not guarded.
    pub fn order_guard(mut self, on: bool) -> Self {
        self.order_guard = on;
        self
    }
}

/// Topics and patterns mapped to their [`Route`]s, plus middleware for all
/// of them (MiKa's consumer-to-topic binding, kafkaesk's glob
/// subscriptions).
///
/// A name with `*` (any run of characters) or `?` (one character) is a
/// pattern: the service also consumes topics created later that match it.
/// Kafka topic names cannot contain either character, so there is no
/// ambiguity.
///
/// ```
/// use kastellan::group::{ConsumerRecord, HandlerError};
/// use kastellan::middleware::ConcurrencyLimit;
/// use kastellan::service::{Route, Router};
///
/// async fn orders(_r: ConsumerRecord) -> Result<(), HandlerError> { Ok(()) }
/// async fn content(_r: ConsumerRecord) -> Result<(), HandlerError> { Ok(()) }
/// async fn audit(_r: ConsumerRecord) -> Result<(), HandlerError> { Ok(()) }
///
/// let router = Router::new()
///     .route("orders", Route::new(orders).retries(3))
///     .route("content.*", content)         // content.edited, content.deleted, ...
///     .route("content.audit", audit)       // an exact topic beats a pattern
///     .layer(ConcurrencyLimit::new(16));   // around every route
/// # let _ = router;
/// ```
///
/// # Overlaps
///
/// Checked when the service starts, refused with
/// [`Error::Config`](crate::Error::Config):
///
/// - no route at all; an empty or illegal topic name or pattern; the same
///   topic or pattern twice;
/// - an existing topic that two patterns match (and no exact route names);
/// - a route, or a pattern, that covers the service's retry or dead-letter
///   topic.
///
/// Allowed: an exact topic that a pattern also matches — **the exact route
/// wins** (carve exceptions out of a pattern this way); two patterns that
/// could both match some name no existing topic has (logged as a warning
/// at start-up). If such a topic is created later, its records are not
/// routed: each fails, holding its partition, and
/// [`ServiceError::AmbiguousRoute`](super::ServiceError::AmbiguousRoute)
/// names the patterns. Add an exact route for it and restart.
#[derive(Default)]
#[must_use = "a router does nothing until a Service runs it"]
pub struct Router {
    routes: Vec<(String, Route)>,
    layers: Stack,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field(
                "routes",
                &self.routes.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl Router {
    /// A router with no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Route records of `topic` — or of every topic matching a pattern with
    /// `*` or `?` — to `route` (a [`Route`], or any [`Handler`]).
    pub fn route(mut self, topic: impl Into<String>, route: impl Into<Route>) -> Self {
        self.routes.push((topic.into(), route.into()));
        self
    }

    /// Add a middleware around every route. Records pass the router's
    /// middleware in the order they were added, then the route's own.
    pub fn layer(mut self, middleware: impl Middleware) -> Self {
        self.layers = self.layers.layer(middleware);
        self
    }

    /// The topic names and patterns routed, in the order they were added.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|(n, _)| n.as_str())
    }
}

/// A route ready to run: its whole chain, and its failure options resolved
/// against the service's topics.
pub(crate) struct ResolvedRoute {
    /// The topic or pattern it was registered under.
    pub name: String,
    pub chain: Layered,
    pub retries: u32,
    pub dead_letter: bool,
    pub order_guard: bool,
}

impl fmt::Debug for ResolvedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedRoute")
            .field("name", &self.name)
            .field("retries", &self.retries)
            .field("dead_letter", &self.dead_letter)
            .field("order_guard", &self.order_guard)
            .finish()
    }
}

/// What [`RouteTable::lookup`] finds for a topic.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    Found(&'a Arc<ResolvedRoute>),
    /// Several patterns match and no exact route names the topic.
    Ambiguous(Vec<&'a str>),
    None,
}

/// The routes of a running service. Read-only once built.
#[derive(Debug)]
pub(crate) struct RouteTable {
    exact: BTreeMap<String, Arc<ResolvedRoute>>,
    patterns: Vec<(String, Arc<ResolvedRoute>)>,
}

/// The service's own topics, which no route may cover.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OwnTopics<'a> {
    pub retry: Option<&'a str>,
    pub dead_letter: Option<&'a str>,
}

impl RouteTable {
    /// Check the router against the service's topics and build the table.
    pub(crate) fn build(router: Router, own: OwnTopics<'_>) -> Result<RouteTable> {
        let refuse = |m: String| Err(Error::Config(m));
        if router.routes.is_empty() {
            return refuse(
                "the router has no routes; add one with Router::route(topic, handler)".into(),
            );
        }
        let mut exact = BTreeMap::new();
        let mut patterns: Vec<(String, Arc<ResolvedRoute>)> = Vec::new();
        for (name, route) in router.routes {
            let pattern = glob::is_pattern(&name);
            let checked = if pattern {
                glob::check_pattern(&name)
            } else {
                glob::check_topic(&name)
            };
            if let Err(e) = checked {
                return refuse(format!("route `{name}`: {e}"));
            }
            for (what, own_topic) in [("retry", own.retry), ("dead-letter", own.dead_letter)] {
                let Some(own_topic) = own_topic else { continue };
                let covered = if pattern {
                    glob::matches(&name, own_topic)
                } else {
                    name == own_topic
                };
                if covered {
                    return refuse(format!(
                        "route `{name}` covers the service's {what} topic `{own_topic}`; the \
                         service consumes it itself{}",
                        if pattern { ": narrow the pattern" } else { "" }
                    ));
                }
            }
            if route.retries > 0 && own.retry.is_none() {
                return refuse(format!(
                    "route `{name}` asks for {} retries but the service has no retry topic; \
                     set ServiceConfig::retry_topic (KAFKA_RETRY_TOPIC), or retry in process \
                     with the Retry middleware",
                    route.retries
                ));
            }
            if route.order_guard && own.retry.is_none() {
                return refuse(format!(
                    "route `{name}` has an order guard but the service has no retry topic"
                ));
            }
            if route.dead_letter == Some(true) && own.dead_letter.is_none() {
                return refuse(format!(
                    "route `{name}` asks for dead-lettering but the service has no dead-letter \
                     topic; set ServiceConfig::dead_letter_topic (KAFKA_DLQ_TOPIC)"
                ));
            }
            let resolved = Arc::new(ResolvedRoute {
                name: name.clone(),
                chain: router
                    .layers
                    .clone()
                    .extend(&route.layers)
                    .handler_arc(route.handler),
                retries: route.retries,
                dead_letter: route.dead_letter.unwrap_or(own.dead_letter.is_some())
                    && own.dead_letter.is_some(),
                order_guard: route.order_guard,
            });
            if pattern {
                if patterns.iter().any(|(p, _)| *p == name) {
                    return refuse(format!("pattern `{name}` is routed twice"));
                }
                patterns.push((name, resolved));
            } else if exact.insert(name.clone(), resolved).is_some() {
                return refuse(format!("topic `{name}` is routed twice"));
            }
        }
        for (i, (a, _)) in patterns.iter().enumerate() {
            for (b, _) in &patterns[i + 1..] {
                if glob::may_overlap(a, b) {
                    tracing::warn!(
                        "patterns `{a}` and `{b}` can both match a topic name; a topic matching \
                         both (without an exact route) will not be routed"
                    );
                }
            }
        }
        Ok(RouteTable { exact, patterns })
    }

    /// Refuse existing topics that two patterns match and no exact route
    /// names (checked at start-up, when the topics are known).
    pub(crate) fn check_topics<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut ambiguous = Vec::new();
        for topic in topics {
            if let Lookup::Ambiguous(patterns) = self.lookup(topic) {
                ambiguous.push(format!(
                    "`{topic}` (matched by {})",
                    patterns
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ));
            }
        }
        if ambiguous.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "topics matched by more than one pattern: {}; add an exact route for each, or \
                 narrow the patterns",
                ambiguous.join(", ")
            )))
        }
    }

    /// The route for `topic`: its exact route, else the one pattern that
    /// matches it.
    pub(crate) fn lookup(&self, topic: &str) -> Lookup<'_> {
        if let Some(route) = self.exact.get(topic) {
            return Lookup::Found(route);
        }
        let mut found = self
            .patterns
            .iter()
            .filter(|(p, _)| glob::matches(p, topic));
        match (found.next(), found.next()) {
            (None, _) => Lookup::None,
            (Some((_, route)), None) => Lookup::Found(route),
            (Some((a, _)), Some((b, _))) => {
                let mut names = vec![a.as_str(), b.as_str()];
                names.extend(found.map(|(p, _)| p.as_str()));
                Lookup::Ambiguous(names)
            }
        }
    }

    /// The exact topics routed.
    pub(crate) fn topics(&self) -> impl Iterator<Item = &str> {
        self.exact.keys().map(String::as_str)
    }

    /// The patterns routed.
    pub(crate) fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|(p, _)| p.as_str())
    }

    /// Whether any route keeps per-key order.
    pub(crate) fn any_order_guard(&self) -> bool {
        self.exact.values().any(|r| r.order_guard)
            || self.patterns.iter().any(|(_, r)| r.order_guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{ConsumerRecord, HandlerError};

    async fn ok(_r: ConsumerRecord) -> Result<(), HandlerError> {
        Ok(())
    }

    const OWN: OwnTopics<'static> = OwnTopics {
        retry: Some("svc.retry"),
        dead_letter: Some("app.dlq"),
    };

    fn table(router: Router) -> Result<RouteTable> {
        RouteTable::build(router, OWN)
    }

    fn name(l: Lookup<'_>) -> String {
        match l {
            Lookup::Found(r) => r.name.clone(),
            Lookup::Ambiguous(p) => format!("ambiguous {p:?}"),
            Lookup::None => "none".into(),
        }
    }

    #[test]
    fn exact_beats_pattern_and_patterns_route() {
        let t = table(
            Router::new()
                .route("orders", ok)
                .route("content.*", ok)
                .route("*.audit", ok)
                .route("content.audit", ok),
        )
        .unwrap();
        assert_eq!(name(t.lookup("orders")), "orders");
        assert_eq!(name(t.lookup("content.edited")), "content.*");
        assert_eq!(name(t.lookup("content.audit")), "content.audit");
        assert_eq!(name(t.lookup("orders.audit")), "*.audit");
        assert_eq!(name(t.lookup("payments")), "none");
        assert!(t
            .check_topics(["content.audit", "orders.audit", "x"])
            .is_ok());
    }

    #[test]
    fn two_patterns_on_one_topic_are_reported() {
        let t = table(Router::new().route("content.*", ok).route("*.audit", ok)).unwrap();
        assert_eq!(
            name(t.lookup("content.audit")),
            r#"ambiguous ["content.*", "*.audit"]"#
        );
        let e = t.check_topics(["content.audit"]).unwrap_err().to_string();
        assert!(
            e.contains("`content.audit` (matched by `content.*` and `*.audit`)"),
            "{e}"
        );
    }

    #[test]
    fn bad_registrations_are_refused() {
        let refused = |r: Router| table(r).unwrap_err().to_string();
        assert!(refused(Router::new()).contains("no routes"));
        assert!(refused(Router::new().route("a", ok).route("a", ok)).contains("twice"));
        assert!(refused(Router::new().route("b*", ok).route("b*", ok)).contains("twice"));
        assert!(refused(Router::new().route("", ok)).contains("empty"));
        assert!(refused(Router::new().route("bad name", ok)).contains("has ` `"));
        assert!(refused(Router::new().route("svc.retry", ok)).contains("retry topic"));
        assert!(refused(Router::new().route("*", ok)).contains("narrow the pattern"));
        assert!(refused(Router::new().route("app.*", ok)).contains("dead-letter topic"));
        let no_topics = OwnTopics {
            retry: None,
            dead_letter: None,
        };
        let e = RouteTable::build(
            Router::new().route("a", Route::new(ok).retries(2)),
            no_topics,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no retry topic"), "{e}");
        let e = RouteTable::build(
            Router::new().route("a", Route::new(ok).dead_letter(true)),
            no_topics,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no dead-letter topic"), "{e}");
        let e = RouteTable::build(
            Router::new().route("a", Route::new(ok).order_guard(true)),
            no_topics,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("order guard"), "{e}");
    }

    #[test]
    fn dead_letter_defaults_to_the_service_having_a_topic() {
        let t = table(
            Router::new()
                .route("a", ok)
                .route("b", Route::new(ok).dead_letter(false)),
        )
        .unwrap();
        let dl = |topic| match t.lookup(topic) {
            Lookup::Found(r) => r.dead_letter,
            _ => unreachable!(),
        };
        assert!(dl("a"));
        assert!(!dl("b"));
        let none = RouteTable::build(
            Router::new().route("a", ok),
            OwnTopics {
                retry: None,
                dead_letter: None,
            },
        )
        .unwrap();
        assert!(matches!(none.lookup("a"), Lookup::Found(r) if !r.dead_letter));
    }
}
