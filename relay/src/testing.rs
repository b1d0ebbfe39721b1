//! Test support: a real Kafka-protocol broker (tansu) per test, a consumer, and the check that
//! what reached the broker is the log (every event, in order per key, duplicates only of ids
//! already seen, CloudEvents fields as encoded).
//!
//! The broker binary is `FLEETLEDGER_TANSU_BIN`, else `tansu` on `PATH` or in `~/.cargo/bin`
//! (`cargo install tansu --locked --features dynostore`). A missing binary fails the test; it
//! never skips. The broker stores in memory: a broker that is killed and started again comes
//! back empty, which the restart tests take into account. Its output is shown with
//! `TEST_LOG=1`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventstore::{Checkpoint, EventStore, RecordedEvent};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

use crate::RelayConfig;
use crate::cloudevents::{CONTENT_TYPE, to_cloudevent};

/// Where the tansu binary is, or a message saying how to get it.
pub fn tansu_bin() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("FLEETLEDGER_TANSU_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
    }
    candidates.into_iter().find(|c| c.is_file()).ok_or_else(|| {
        "the Kafka-protocol broker `tansu` is not installed: run \
         `scripts/test` (the README's test command builds it once), or set \
         FLEETLEDGER_TANSU_BIN"
            .to_owned()
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A tansu broker on a free loopback port, killed when dropped.
#[derive(Debug)]
pub struct Broker {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    /// Start a broker and wait until it answers metadata requests.
    ///
    /// # Panics
    /// When tansu is missing or does not come up: the test must fail, not skip.
    pub async fn start() -> Self {
        let bin = tansu_bin().unwrap_or_else(|e| panic!("{e}"));
        let mut broker = Self {
            bin,
            port: free_port(),
            child: None,
        };
        broker.spawn().await;
        broker
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let show = std::env::var_os("TEST_LOG").is_some();
        let output = || {
            if show {
                Stdio::inherit()
            } else {
                Stdio::null()
            }
        };
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let brokers = self.brokers();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("tansu exited at start: {status}");
            }
            let b = brokers.clone();
            let answered = tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &b)
                    .create()
                    .ok()?;
                consumer
                    .fetch_metadata(None, Duration::from_secs(2))
                    .ok()
                    .map(|_| ())
            })
            .await
            .ok()
            .flatten();
            if answered.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not answer on {brokers}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status()
                .unwrap_or_else(|e| panic!("kill -{signal}: {e}"));
            assert!(status.success(), "kill -{signal} failed");
        }
    }

    /// Stop the broker's process (SIGSTOP): it keeps its data and its sockets, but answers
    /// nothing, like a broker that hangs or a network that drops packets.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Let a frozen broker run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// Kill the broker (SIGKILL). Connections are refused until [`Broker::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start a new broker on the same port. It stores in memory: it comes back empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A relay configuration for a test: its own topic prefix, short delivery timeout.
pub fn test_config(brokers: &str) -> RelayConfig {
    let mut config = RelayConfig::new(brokers);
    config.topic_prefix = format!("fltest-{}", uuid::Uuid::new_v4().simple());
    config.delivery_timeout = Duration::from_secs(5);
    // Small batches: a test's history spans many checkpoint moves.
    config.batch_size = 100;
    config
}

/// One consumed message.
#[derive(Clone, Debug)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub content_type: Option<String>,
    pub value: Value,
}

impl Received {
    /// The CloudEvents `id`.
    pub fn id(&self) -> String {
        self.value
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

/// Read every partition of the relay's topics from the beginning until `done` holds for what
/// was received (checked after each poll), or the deadline passes (returns what it has).
pub async fn consume_until(
    config: &RelayConfig,
    deadline: Duration,
    done: impl Fn(&[Received]) -> bool + Send + 'static,
) -> Vec<Received> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || consume_blocking(&config, deadline, &done))
        .await
        .unwrap_or_else(|e| panic!("consumer thread: {e}"))
}

fn consume_blocking(
    config: &RelayConfig,
    deadline: Duration,
    done: &dyn Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set(
            "group.id",
            format!("fltest-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    let end = Instant::now() + deadline;
    let mut assignment = TopicPartitionList::new();
    for topic in config.topics() {
        let partitions = loop {
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5));
            let count = metadata
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
                .unwrap_or(0);
            if count > 0 {
                break count;
            }
            assert!(Instant::now() < end, "topic {topic} never appeared");
            std::thread::sleep(Duration::from_millis(200));
        };
        for p in 0..partitions {
            let p = i32::try_from(p).unwrap_or(i32::MAX);
            assignment
                .add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap_or_else(|e| panic!("assign {topic}/{p}: {e}"));
        }
    }
    consumer
        .assign(&assignment)
        .unwrap_or_else(|e| panic!("assign: {e}"));
    let mut received = Vec::new();
    while Instant::now() < end {
        if done(&received) {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => {
                eprintln!("consumer error (continuing): {e}");
            }
            Some(Ok(m)) => received.push(received_of(&m)),
        }
    }
    received
}

/// Read the relay's topics as member `group` of a consumer group (subscribe, offsets from the
/// group or else the earliest), until `done` holds or the deadline passes; then commit the
/// offsets reached, as integrators are told to (docs/integrators.md).
pub async fn consume_as_group(
    config: &RelayConfig,
    group: &str,
    deadline: Duration,
    done: impl Fn(&[Received]) -> bool + Send + 'static,
) -> Vec<Received> {
    let config = config.clone();
    let group = group.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap_or_else(|e| panic!("consumer: {e}"));
        let topics = config.topics();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .unwrap_or_else(|e| panic!("subscribe: {e}"));
        let end = Instant::now() + deadline;
        let mut received = Vec::new();
        while Instant::now() < end && !done(&received) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                received.push(received_of(&m));
            }
        }
        if !received.is_empty() {
            consumer
                .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
                .unwrap_or_else(|e| panic!("commit: {e}"));
        }
        received
    })
    .await
    .unwrap_or_else(|e| panic!("consumer thread: {e}"))
}

fn received_of<M: Message>(m: &M) -> Received
where
    M::Headers: Headers,
{
    let value = m
        .payload()
        .and_then(|p| serde_json::from_slice(p).ok())
        .unwrap_or(Value::Null);
    let content_type = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == "content-type")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    });
    Received {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        content_type,
        value,
    }
}

/// Every event committed when called, in commit order. Waits while transactions still open
/// elsewhere in the cluster hold the no-skip reader back.
pub async fn read_log(store: &EventStore) -> Vec<RecordedEvent> {
    let target = store
        .committed_head()
        .await
        .unwrap_or_else(|e| panic!("committed_head: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut events = Vec::new();
    let mut after = Checkpoint::START;
    while after < target {
        let batch = store
            .read_all(after, 1000)
            .await
            .unwrap_or_else(|e| panic!("read_all: {e}"));
        match batch.last() {
            Some(last) => after = last.checkpoint(),
            None => {
                assert!(
                    Instant::now() < deadline,
                    "the log stayed behind {target} (a long transaction elsewhere?)"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        events.extend(batch);
    }
    events
}

/// Whether every id of `log` was received.
pub fn has_all(log_ids: &HashSet<String>, received: &[Received]) -> bool {
    let seen: HashSet<String> = received.iter().map(Received::id).collect();
    log_ids.is_subset(&seen)
}

/// What [`check_delivery`] found.
#[derive(Debug, Default)]
pub struct DeliveryReport {
    pub messages: usize,
    pub events: usize,
    pub duplicates: usize,
}

/// Compare what the broker holds with the log:
/// - every event of `log` was received, with the value [`to_cloudevent`] gives, on its
///   aggregate type's topic, keyed by its aggregate id, with the structured-mode content type;
/// - nothing was received that is not in the log (duplicates repeat an id already seen);
/// - each key's messages are on one partition, and the first occurrences of its ids come in
///   stream-version order (1, 2, 3… from the first version `log` holds) (a redelivery may repeat earlier ids, never skip ahead).
pub fn check_delivery(
    config: &RelayConfig,
    log: &[RecordedEvent],
    received: &[Received],
) -> Result<DeliveryReport, String> {
    let by_id: HashMap<String, &RecordedEvent> =
        log.iter().map(|e| (e.event_id.to_string(), e)).collect();
    let mut seen = HashSet::new();
    // Each stream's first expected version: 1 for a whole log, later for a log's tail.
    let mut next_version: HashMap<String, i64> = HashMap::new();
    for e in log {
        let v = next_version
            .entry(format!("{}/{}", e.aggregate_type, e.aggregate_id))
            .or_insert(e.version);
        *v = (*v).min(e.version);
    }
    let mut partition_of: HashMap<String, (String, i32)> = HashMap::new();
    let mut report = DeliveryReport {
        messages: received.len(),
        events: log.len(),
        duplicates: 0,
    };
    let mut ordered: Vec<&Received> = received.iter().collect();
    // Offsets order messages within a partition; across partitions there is no order to keep.
    ordered
        .sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    for m in ordered {
        let id = m.id();
        let event = by_id
            .get(&id)
            .ok_or_else(|| format!("received an id that is not in the log: {}", m.value))?;
        let expected_topic = config.topic_for(&event.aggregate_type).unwrap_or_default();
        if m.topic != expected_topic {
            return Err(format!("{id} on {} instead of {expected_topic}", m.topic));
        }
        if m.key.as_deref() != Some(event.aggregate_id.as_str()) {
            return Err(format!("{id} has key {:?}", m.key));
        }
        if m.content_type.as_deref() != Some(CONTENT_TYPE) {
            return Err(format!("{id} has content type {:?}", m.content_type));
        }
        let expected = to_cloudevent(event, &config.source);
        if m.value != expected {
            return Err(format!("{id}: got {} expected {expected}", m.value));
        }
        let place = (m.topic.clone(), m.partition);
        let stream = format!("{}/{}", event.aggregate_type, event.aggregate_id);
        if let Some(first) = partition_of.get(&stream) {
            if *first != place {
                return Err(format!("{stream} is on partitions {first:?} and {place:?}"));
            }
        } else {
            partition_of.insert(stream.clone(), place);
        }
        if !seen.insert(id.clone()) {
            report.duplicates += 1;
            continue;
        }
        let next = next_version.entry(stream.clone()).or_insert(1);
        if event.version != *next {
            return Err(format!(
                "{stream}: version {} arrived first where {} was due",
                event.version, next
            ));
        }
        *next += 1;
    }
    let missing: Vec<_> = log
        .iter()
        .filter(|e| !seen.contains(&e.event_id.to_string()))
        .map(|e| format!("{}/{} v{}", e.aggregate_type, e.aggregate_id, e.version))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} of {} events missing, first: {:?}",
            missing.len(),
            log.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    Ok(report)
}
