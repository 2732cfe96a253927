//! What one client connection may hold, and for how long: the per-client
//! connection cap, the handshake and idle deadlines of a connection, and
//! the progress deadline of every response stream.
//!
//! A connection is closed when no request has been in flight on it for
//! `timeouts.idle`, or before its first request once `timeouts.handshake`
//! has passed since it was accepted (this covers the TLS handshake, HTTP
//! version detection, the HTTP/2 preface and the first request's headers,
//! none of which hyper bounds by itself). A response stream whose client
//! accepts no bytes for `timeouts.clientStall` is dropped: over HTTP/2 the
//! stream is reset (`RST_STREAM`), over HTTP/1.1 the connection is closed.
//! Either way the response body, and with it the upstream fetch and its
//! connection, is released at once.
//!
//! The progress deadline has to run outside the response body: hyper only
//! polls a body when the client has room for more, so a body that checked
//! a timer when polled would never see a client that stopped reading.
//! Each HTTP/2 stream runs as its own task, spawned through
//! [`StreamExecutor`], which races the stream against its [`Progress`];
//! an HTTP/1.1 connection serves one response at a time, and its own task
//! watches that response's [`Progress`] (see [`Connection::expired`]).
//! The response body reports to the [`Progress`] of the task it is polled
//! in ([`current_progress`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    /// The progress of the response being served by the current task.
    static PROGRESS: Arc<Progress>;
}

/// The [`Progress`] the response bodies of the current task report to:
/// the HTTP/2 stream's, or the HTTP/1.1 connection's. `None` outside a
/// served connection.
pub fn current_progress() -> Option<Arc<Progress>> {
    PROGRESS.try_with(Arc::clone).ok()
}

/// The clock of the deadlines here: milliseconds since the first use.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn instant_at(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms)
}

/// No response body being sent.
const IDLE: u8 = 0;
/// A response body is being sent: its last bytes went out at `last`, and
/// the next ones wait for the client.
const SENDING: u8 = 1;
/// The response body is waiting for the upstream (whose silence
/// `timeouts.read` bounds), not for the client.
const UPSTREAM: u8 = 2;

/// How far one response stream has got.
#[derive(Debug, Default)]
pub struct Progress {
    state: AtomicU8,
    /// When (milliseconds on [`epoch`]) the stream last moved.
    last: AtomicU64,
}

impl Progress {
    /// The response head is ready and its body is about to be sent.
    pub fn started(&self) {
        self.last.store(now_ms(), Ordering::SeqCst);
        self.state.store(SENDING, Ordering::SeqCst);
    }

    /// The body handed over a frame: the client had room for it.
    pub fn sent(&self) {
        self.last.store(now_ms(), Ordering::SeqCst);
        self.state.store(SENDING, Ordering::SeqCst);
    }

    /// The body is waiting for its upstream.
    pub fn waiting_for_upstream(&self) {
        self.state.store(UPSTREAM, Ordering::SeqCst);
    }

    /// The body ended (or was dropped).
    pub fn finished(&self) {
        self.state.store(IDLE, Ordering::SeqCst);
    }

    /// When the stream counts as stalled if nothing moves before: `None`
    /// unless it is waiting for the client.
    fn stalls_at(&self, limit: Duration) -> Option<Instant> {
        if self.state.load(Ordering::SeqCst) != SENDING {
            return None;
        }
        Some(instant_at(self.last.load(Ordering::SeqCst)) + limit)
    }

    /// Completes once the client has accepted nothing for `limit` while
    /// the stream was waiting for it.
    pub async fn stalled(&self, limit: Duration) {
        loop {
            match self.stalls_at(limit) {
                Some(at) if Instant::now() >= at => return,
                Some(at) => tokio::time::sleep_until(at).await,
                None => tokio::time::sleep(limit).await,
            }
        }
    }
}

/// Spawns hyper's HTTP/2 stream tasks, each raced against the progress
/// deadline of its response: a stream whose client accepts no bytes for
/// `stall` is dropped, which resets it (`RST_STREAM`) and releases its
/// response body and upstream fetch. (hyper's HTTP/2 server spawns
/// nothing else through its executor but upgrades, which Portcullis does
/// not accept.)
#[derive(Debug, Clone, Copy)]
pub struct StreamExecutor {
    pub stall: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, stream: F) {
        let stall = self.stall;
        tokio::spawn(async move {
            let progress = Arc::new(Progress::default());
            let stream = PROGRESS.scope(Arc::clone(&progress), stream);
            tokio::select! {
                _ = stream => {}
                () = progress.stalled(stall) => {
                    tracing::info!(
                        stall = ?stall,
                        "client accepted no bytes of a response for timeouts.clientStall; stream reset"
                    );
                }
            }
        });
    }
}

/// Runs `connection` (an HTTP/1.1 connection's task) with its responses
/// reporting to `progress`.
pub fn with_progress<F: Future>(
    progress: Arc<Progress>,
    connection: F,
) -> impl Future<Output = F::Output> {
    PROGRESS.scope(progress, connection)
}

/// The deadlines of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Accept to first request.
    pub handshake: Duration,
    /// No request in flight.
    pub idle: Duration,
    /// An HTTP/1.1 response whose client accepts nothing.
    pub stall: Duration,
}

/// After a connection was asked to close gracefully (idle), how long it
/// may take (flushing a `GOAWAY`, a request that raced the close) before
/// it is dropped, provided nothing is in flight.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why a connection's watchdog fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No first request within `timeouts.handshake`: close.
    Handshake,
    /// No request in flight for `timeouts.idle`: close gracefully.
    Idle,
    /// The HTTP/1.1 response's client accepted nothing for
    /// `timeouts.clientStall`: drop the connection.
    Stall,
    /// Asked to close [`CLOSE_GRACE`] ago and still open with nothing in
    /// flight: drop it.
    Closed,
}

/// One client connection's requests in flight and the progress of its
/// HTTP/1.1 response.
#[derive(Debug)]
pub struct Connection {
    active: AtomicUsize,
    served: AtomicBool,
    /// When (milliseconds on [`epoch`]) the connection last had no request
    /// in flight (its accept time, before the first request).
    idle_since: AtomicU64,
    /// The response being sent, for an HTTP/1.1 connection.
    pub progress: Arc<Progress>,
}

impl Connection {
    /// A connection accepted now.
    pub fn new() -> Arc<Connection> {
        Arc::new(Connection {
            active: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(now_ms()),
            progress: Arc::new(Progress::default()),
        })
    }

    /// A request arrived: the connection is not idle until the returned
    /// guard (kept by the response body) is dropped.
    pub fn request(self: &Arc<Self>) -> ActiveRequest {
        self.served.store(true, Ordering::SeqCst);
        self.active.fetch_add(1, Ordering::SeqCst);
        ActiveRequest {
            connection: Arc::clone(self),
        }
    }

    /// Completes when the connection should be closed, and says why.
    /// `closing`: when the connection was asked to close gracefully, if it
    /// was.
    pub async fn expired(&self, deadlines: &Deadlines, closing: Option<Instant>) -> Expiry {
        // Transitions (a request starting or ending, a response starting)
        // do not wake this; it looks again at least this often.
        let recheck = deadlines.idle.min(deadlines.stall).min(deadlines.handshake);
        loop {
            let now = Instant::now();
            let mut next = now + recheck;
            if let Some(at) = self.progress.stalls_at(deadlines.stall) {
                if now >= at {
                    return Expiry::Stall;
                }
                next = next.min(at);
            }
            if self.active.load(Ordering::SeqCst) == 0 {
                let since = instant_at(self.idle_since.load(Ordering::SeqCst));
                let (at, expiry) = match closing {
                    Some(asked) => (asked + CLOSE_GRACE, Expiry::Closed),
                    None if self.served.load(Ordering::SeqCst) => {
                        (since + deadlines.idle, Expiry::Idle)
                    }
                    None => (since + deadlines.handshake, Expiry::Handshake),
                };
                if now >= at {
                    return expiry;
                }
                next = next.min(at);
            }
            tokio::time::sleep_until(next).await;
        }
    }
}

/// A request in flight on a [`Connection`].
#[derive(Debug)]
pub struct ActiveRequest {
    connection: Arc<Connection>,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        // The time first: whoever sees no request in flight sees when
        // that began.
        self.connection.idle_since.store(now_ms(), Ordering::SeqCst);
        self.connection.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Connections per client IP address (`limits.connectionsPerClient`). An
/// entry lives as long as a connection from its address, so the table is
/// bounded by `limits.connections`.
#[derive(Debug)]
pub struct PerClient {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    pub fn new(limit: usize) -> Arc<PerClient> {
        Arc::new(PerClient {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `ip`, or `None` when it has
    /// `limit` open already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        // An IPv4 client reaching an IPv6 listener is still that client.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            table: Arc::clone(self),
            ip,
        })
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

/// One open connection of a client; released on drop.
#[derive(Debug)]
pub struct ClientSlot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Counts refused connections and says which ones to log: the first, then
/// every 1000th, so a flood does not flood the log too.
#[derive(Debug, Default)]
pub struct Refusals(AtomicU64);

impl Refusals {
    /// Counts one; `Some(total)` when this one should be logged.
    pub fn count(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        (n == 1 || n.is_multiple_of(1000)).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_slots_are_capped_and_released() {
        let table = PerClient::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = table.admit(a).expect("first");
        let second = table.admit(mapped).expect("second, same client");
        assert!(table.admit(a).is_none(), "third from one client");
        let other = table.admit(b).expect("another client");
        drop(first);
        assert_eq!(table.open(a), 1);
        let again = table.admit(a).expect("a slot was released");
        drop((second, again, other));
        assert_eq!(table.open(a), 0);
        assert!(table.open.lock().unwrap().is_empty(), "no entry left");
    }

    #[test]
    fn refusals_log_the_first_and_every_thousandth() {
        let r = Refusals::default();
        let logged: Vec<u64> = (0..2500).filter_map(|_| r.count()).collect();
        assert_eq!(logged, vec![1, 1000, 2000]);
    }

    /// `elapsed` is `want`, give or take the scheduling of a busy machine.
    /// `elapsed` is `want`, give or take: the deadlines count whole
    /// milliseconds (a moment recorded at 12.9 ms counts as 12 ms), so an
    /// expiry may come up to 1 ms before `want` measured from an `Instant`
    /// taken after the moment; and up to 150 ms late on a busy machine.
    fn about(elapsed: Duration, want: Duration) -> bool {
        elapsed + Duration::from_millis(1) >= want && elapsed < want + Duration::from_millis(150)
    }

    const DEADLINES: Deadlines = Deadlines {
        handshake: Duration::from_millis(200),
        idle: Duration::from_millis(500),
        stall: Duration::from_millis(300),
    };

    #[tokio::test]
    async fn a_connection_expires_before_its_first_request_then_when_idle() {
        let conn = Connection::new();
        let started = Instant::now();
        assert_eq!(conn.expired(&DEADLINES, None).await, Expiry::Handshake);
        assert!(
            about(started.elapsed(), DEADLINES.handshake),
            "{:?}",
            started.elapsed()
        );

        let conn = Connection::new();
        let request = conn.request();
        let busy = tokio::time::timeout(Duration::from_secs(1), conn.expired(&DEADLINES, None));
        assert!(busy.await.is_err(), "expired with a request in flight");
        let ended = Instant::now();
        drop(request);
        assert_eq!(conn.expired(&DEADLINES, None).await, Expiry::Idle);
        assert!(
            about(ended.elapsed(), DEADLINES.idle),
            "{:?}",
            ended.elapsed()
        );

        let asked = Instant::now();
        assert_eq!(conn.expired(&DEADLINES, Some(asked)).await, Expiry::Closed);
        assert!(about(asked.elapsed(), CLOSE_GRACE), "{:?}", asked.elapsed());
    }

    #[tokio::test]
    async fn a_response_stalls_only_while_it_waits_for_the_client() {
        let conn = Connection::new();
        let _request = conn.request();
        conn.progress.started();
        // Waiting for the upstream is not a client stall.
        conn.progress.waiting_for_upstream();
        let waited = tokio::time::timeout(Duration::from_secs(1), conn.expired(&DEADLINES, None));
        assert!(waited.await.is_err(), "expired while the upstream was slow");
        conn.progress.sent();
        let sent = Instant::now();
        assert_eq!(conn.expired(&DEADLINES, None).await, Expiry::Stall);
        assert!(
            about(sent.elapsed(), DEADLINES.stall),
            "{:?}",
            sent.elapsed()
        );

        let stream = Progress::default();
        let idle = tokio::time::timeout(Duration::from_secs(1), stream.stalled(DEADLINES.stall));
        assert!(idle.await.is_err(), "a stream not yet sending stalled");
        stream.started();
        let t = Instant::now();
        stream.stalled(DEADLINES.stall).await;
        assert!(about(t.elapsed(), DEADLINES.stall), "{:?}", t.elapsed());
    }
}
