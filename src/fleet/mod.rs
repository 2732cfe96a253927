//! The fleet's shared state on Redis (`state.redis`): what one replica
//! admitted and decided, visible to the others.
//!
//! - **Tables** ([`Table`]): admitted blobs, index children, break-glass
//!   blobs and verdicts, one key each, under a revision ([`Shared::key`])
//!   that names the policy, the upstreams and the attestation store's
//!   evidence: a replica never reads what was decided under another
//!   revision. Values expire with the TTLs of the in-process tables.
//! - **Reloads**: a replica whose policy changed bumps a counter; the
//!   others poll it ([`Shared::reloads`]) and re-read their own
//!   configuration.
//! - **Recent decisions**: a capped stream every replica appends to and
//!   the dashboard reads ([`Shared::push_decision`], [`Shared::recent`]).
//!
//! Every round trip is bounded by `state.redis.timeout`; an error or a
//! timeout is returned (and counted) and the caller decides without Redis,
//! failing closed. Nothing here decides anything: what a value means is
//! the `verify` layer's business. Redis holds only what a replica wrote
//! after a verification, so whoever can write to it can admit images: it
//! is as trusted as the proxy (password, TLS, network policy).
//!
//! May use: `config`. Must never use: anything above it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands as _;
use tokio::sync::mpsc;

use crate::config::RedisConfig;

/// Largest value read back from Redis: a verdict with all its evidence
/// stays far below; anything larger is treated as absent.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Decision records waiting to be appended to the stream, at most; more
/// are dropped (and counted): the stream is a view, the audit trail is the
/// record.
pub const DECISION_QUEUE: usize = 1024;
/// Records appended in one round trip, at most.
const DECISION_BATCH: usize = 128;
/// After a failed connection attempt, requests fail fast for this long
/// instead of each waiting for a connect timeout.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// How often a replica checks on Redis by itself: a restart that lost
/// every key (a new `run_id`), or an outage, is noticed within this even
/// when no request asked Redis anything.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Version of the key layout and value formats; replicas of versions with
/// another layout do not share.
const LAYOUT: &str = "v1";

/// A shared-state round trip that did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FleetError {
    #[error("redis did not answer within {0:?} (state.redis.timeout)")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(String),
    #[error("redis is unreachable (retrying): {0}")]
    Down(String),
}

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// A blob an admitted manifest references (value: that manifest's
    /// digest; `1` from versions before it was recorded).
    Blob,
    /// A child manifest an admitted index lists (value: the index digest).
    Child,
    /// A blob of an image admitted by break-glass (value `1`).
    BreakGlass,
    /// A verdict (value: the decision, JSON).
    Verdict,
}

impl Table {
    fn tag(self) -> &'static str {
        match self {
            Table::Blob => "b",
            Table::Child => "c",
            Table::BreakGlass => "g",
            Table::Verdict => "v",
        }
    }
}

/// Counters the metrics read.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Round trips that failed or timed out.
    pub errors: AtomicU64,
    /// Requests answered without Redis because it failed: a verdict
    /// computed locally, a blob refused as unprovable, a local-only list.
    pub fallbacks: AtomicU64,
    /// Verdicts and admitted content found in Redis (another replica's
    /// work reused).
    pub hits: AtomicU64,
    /// Decision records dropped because the stream's queue was full.
    pub decisions_dropped: AtomicU64,
    /// Times Redis answered again after failing: what it held may be gone
    /// (a restart without persistence), so replicas share again.
    pub recoveries: AtomicU64,
}

#[derive(Debug)]
struct Health {
    /// The last round trip's error, and since when it has been failing.
    failing: Option<(Instant, String)>,
    /// When the last connection attempt failed (for the backoff).
    connect_failed: Option<(Instant, String)>,
}

/// The connection to the fleet's Redis, and what goes through it.
pub struct Shared {
    client: redis::Client,
    manager: tokio::sync::Mutex<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
    allow_ttl: Duration,
    deny_ttl: Duration,
    decisions_cap: u64,
    health: Mutex<Health>,
    queue: mpsc::Sender<String>,
    url: String,
    pub stats: FleetStats,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The TTLs shared entries get: those of the in-process tables.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    pub allow: Duration,
    pub deny: Duration,
}

impl Shared {
    /// A client for `config` (no connection yet: the first use connects,
    /// so a replica starts while Redis is down), and the task appending
    /// decisions to the stream. Must be called within a Tokio runtime.
    pub fn start(config: &RedisConfig, ttls: Ttls) -> Result<Arc<Shared>, String> {
        let client = client(config)?;
        let (queue, receiver) = mpsc::channel(DECISION_QUEUE);
        let shared = Arc::new(Shared {
            client,
            manager: tokio::sync::Mutex::new(None),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            allow_ttl: ttls.allow,
            deny_ttl: ttls.deny,
            decisions_cap: config.decisions,
            health: Mutex::new(Health {
                failing: None,
                connect_failed: None,
            }),
            queue,
            url: config.redacted_url(),
            stats: FleetStats::default(),
        });
        tokio::spawn(append_decisions(Arc::downgrade(&shared), receiver));
        tokio::spawn(heartbeat(Arc::downgrade(&shared)));
        Ok(shared)
    }

    /// The server, as logs may show it (no password).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TTL of a verdict (`allow` or not) and of admitted content.
    pub fn ttl(&self, allow: bool) -> Duration {
        if allow {
            self.allow_ttl
        } else {
            self.deny_ttl
        }
    }

    /// The key of `id` in `table` under `revision`.
    pub fn key(&self, revision: &str, table: Table, id: &[u8; 32]) -> String {
        format!(
            "{}{LAYOUT}:{revision}:{}:{}",
            self.prefix,
            table.tag(),
            hex::encode(id)
        )
    }

    fn reloads_key(&self) -> String {
        format!("{}{LAYOUT}:reloads", self.prefix)
    }

    fn stream_key(&self) -> String {
        format!("{}{LAYOUT}:decisions", self.prefix)
    }

    /// The connection, connecting if there is none (at most one attempt
    /// at a time, and none within [`RECONNECT_BACKOFF`] of a failed one).
    async fn connection(&self) -> Result<ConnectionManager, FleetError> {
        let mut slot = self.manager.lock().await;
        if let Some(manager) = slot.as_ref() {
            return Ok(manager.clone());
        }
        if let Some((at, why)) = &lock(&self.health).connect_failed {
            if at.elapsed() < RECONNECT_BACKOFF {
                return Err(FleetError::Down(why.clone()));
            }
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(RECONNECT_BACKOFF);
        let connecting = self.client.get_connection_manager_with_config(config);
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(manager)) => {
                lock(&self.health).connect_failed = None;
                *slot = Some(manager.clone());
                tracing::info!(redis = %self.url, "connected to the fleet's shared state");
                Ok(manager)
            }
            Ok(Err(e)) => Err(self.connect_failed(e.to_string())),
            Err(_) => Err(self.connect_failed(format!("no connection within {:?}", self.timeout))),
        }
    }

    fn connect_failed(&self, why: String) -> FleetError {
        lock(&self.health).connect_failed = Some((Instant::now(), why.clone()));
        FleetError::Down(why)
    }

    /// Runs one round trip under the timeout, recording its health.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, FleetError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = async {
            let connection = self.connection().await?;
            match tokio::time::timeout(self.timeout, op(connection)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(FleetError::Redis(e.to_string())),
                Err(_) => Err(FleetError::Timeout(self.timeout)),
            }
        };
        // The connection attempt is bounded too: the whole round trip
        // takes at most two timeouts.
        let result = match tokio::time::timeout(self.timeout * 2, result).await {
            Ok(result) => result,
            Err(_) => Err(FleetError::Timeout(self.timeout)),
        };
        let mut health = lock(&self.health);
        match &result {
            Ok(_) => {
                if let Some((since, _)) = health.failing.take() {
                    self.stats.recoveries.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(redis = %self.url, down_for = ?since.elapsed(), "fleet shared state reachable again");
                }
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                if health.failing.is_none() {
                    tracing::warn!(redis = %self.url, "fleet shared state unavailable: {e}; serving only what this replica can prove");
                    health.failing = Some((Instant::now(), e.to_string()));
                } else if let Some((_, why)) = health.failing.as_mut() {
                    *why = e.to_string();
                }
            }
        }
        result
    }

    /// Counts a request answered without Redis.
    pub fn fell_back(&self) {
        self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores `entries` (key, value) for `ttl`, in one round trip.
    pub async fn put(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Duration,
    ) -> Result<(), FleetError> {
        if entries.is_empty() {
            return Ok(());
        }
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(|mut c| async move {
            let mut pipe = redis::pipe();
            for (key, value) in entries {
                pipe.cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(millis)
                    .ignore();
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// The values of `keys` (absent, or larger than [`MAX_VALUE_BYTES`]:
    /// `None`), in one round trip.
    pub async fn get(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, FleetError> {
        let values: Vec<Option<Vec<u8>>> =
            self.run(|mut c| async move { c.mget(keys).await }).await?;
        let values: Vec<Option<Vec<u8>>> = values
            .into_iter()
            .map(|v| v.filter(|v| v.len() <= MAX_VALUE_BYTES))
            .collect();
        if values.iter().any(Option::is_some) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(values)
    }

    /// Tells the other replicas the policy changed here: they re-read their
    /// configuration. Returns the new count, which this replica has seen.
    pub async fn announce_reload(&self) -> Result<u64, FleetError> {
        let key = self.reloads_key();
        self.run(|mut c| async move { c.incr(key, 1u64).await })
            .await
    }

    /// How many reloads the fleet has announced.
    pub async fn reloads(&self) -> Result<u64, FleetError> {
        let key = self.reloads_key();
        let n: Option<u64> = self.run(|mut c| async move { c.get(key).await }).await?;
        Ok(n.unwrap_or(0))
    }

    /// Queues a decision record (JSON) for the fleet's stream; never
    /// waits: when the queue is full the record is dropped and counted.
    pub fn push_decision(&self, record: String) {
        if self.queue.try_send(record).is_err() {
            self.stats.decisions_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The `count` most recent decision records of the fleet, newest
    /// first.
    pub async fn recent(&self, count: usize) -> Result<Vec<String>, FleetError> {
        let key = self.stream_key();
        let reply: redis::streams::StreamRangeReply = self
            .run(|mut c| async move { c.xrevrange_count(key, "+", "-", count).await })
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .filter_map(|entry| entry.get::<String>("r"))
            .filter(|r| r.len() <= MAX_VALUE_BYTES)
            .collect())
    }

    /// A round trip now: whether Redis answers, for `/readyz`.
    pub async fn ping(&self) -> Result<(), FleetError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await
    }

    /// Since when, and why, round trips have been failing (`None`: the
    /// last one worked).
    pub fn failing(&self) -> Option<(Duration, String)> {
        lock(&self.health)
            .failing
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    async fn append(&self, records: Vec<String>) -> Result<(), FleetError> {
        let key = self.stream_key();
        let cap = self.decisions_cap;
        self.run(|mut c| async move {
            let mut pipe = redis::pipe();
            for record in records {
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(cap)
                    .arg("*")
                    .arg("r")
                    .arg(record)
                    .ignore();
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }
}

/// Asks Redis for its `run_id` every [`HEARTBEAT`] until the fleet is
/// dropped: keeps the health `/readyz` reports current, and counts a
/// server that restarted (another `run_id`: its keys may be gone) as a
/// recovery, so replicas share what they admitted again.
async fn heartbeat(shared: std::sync::Weak<Shared>) {
    let mut run_id: Option<String> = None;
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let info: Result<String, FleetError> = shared
            .run(|mut c| async move { redis::cmd("INFO").arg("server").query_async(&mut c).await })
            .await;
        let Ok(info) = info else {
            continue;
        };
        let now = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned());
        if run_id.is_some() && now.is_some() && run_id != now {
            tracing::warn!(redis = %shared.url, "redis restarted (new run_id): sharing admissions again");
            shared.stats.recoveries.fetch_add(1, Ordering::Relaxed);
        }
        if now.is_some() {
            run_id = now;
        }
    }
}

/// Appends queued decision records to the stream, in batches, until the
/// fleet is dropped. A batch that fails is dropped (and counted): the
/// stream is a view, the audit trail keeps every record.
async fn append_decisions(shared: std::sync::Weak<Shared>, mut receiver: mpsc::Receiver<String>) {
    let mut batch = Vec::with_capacity(DECISION_BATCH);
    while receiver.recv_many(&mut batch, DECISION_BATCH).await > 0 {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let records = std::mem::take(&mut batch);
        let n = records.len() as u64;
        if shared.append(records).await.is_err() {
            shared
                .stats
                .decisions_dropped
                .fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The client for `config`: the URL (without a password: validation
/// refuses one), the password file read now, TLS with the extra CA.
fn client(config: &RedisConfig) -> Result<redis::Client, String> {
    let mut url = config.url.clone();
    if config.uses_tls() && url.starts_with("redis://") {
        url = format!("rediss://{}", &url["redis://".len()..]);
    }
    let mut info: redis::ConnectionInfo =
        redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map_err(|e| format!("state.redis.url: {e}"))?;
    let mut settings = info.redis_settings().clone();
    if let Some(path) = &config.password_file {
        let password = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "state.redis.passwordFile: cannot read {}: {e}",
                path.display()
            )
        })?;
        let password = password.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(format!(
                "state.redis.passwordFile: {} is empty",
                path.display()
            ));
        }
        settings = settings.set_password(password);
    }
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    info = info.set_redis_settings(settings);
    match config.ca_file() {
        Some(ca) => {
            let root_cert = std::fs::read(ca).map_err(|e| {
                format!("state.redis.tls.caFile: cannot read {}: {e}", ca.display())
            })?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
            .map_err(|e| format!("state.redis.tls: {e}"))
        }
        None => redis::Client::open(info).map_err(|e| format!("state.redis.url: {e}")),
    }
}
