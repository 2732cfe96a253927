//! A webhook receiver in the test process, for alerts sent by a real
//! `portcullis serve`: records every JSON body it is POSTed (and the
//! request as it arrived: headers and exact bytes), answers 200,
//! and can hold the answers to some alerts (a webhook stalled on them)
//! until released. One thread per connection, so a held answer never
//! keeps another request waiting.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Which alerts' answers are held until [`Webhook::release`].
pub type Hold = fn(&Value) -> bool;

/// One request as it arrived: its headers (names lowercased) and the exact
/// body bytes.
#[derive(Debug, Clone)]
pub struct Raw {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    seen: Mutex<Vec<Value>>,
    raw: Mutex<Vec<Raw>>,
    arrived: Condvar,
    open: Mutex<bool>,
    opened: Condvar,
    hold: Hold,
    stop: AtomicBool,
}

/// A running receiver; stopped (and everything held released) on drop.
pub struct Webhook {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Webhook {
    /// Answers every alert at once.
    pub fn start() -> Webhook {
        Self::holding(|_| false)
    }

    /// Holds the answer to every alert for which `hold` is true.
    pub fn holding(hold: Hold) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook receiver");
        let addr = listener.local_addr().expect("webhook receiver address");
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            raw: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            open: Mutex::new(false),
            opened: Condvar::new(),
            hold,
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let state = Arc::clone(&accepting);
                std::thread::spawn(move || serve(&state, stream));
            }
        });
        Webhook { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every body received so far, in order of arrival.
    pub fn seen(&self) -> Vec<Value> {
        lock(&self.state.seen).clone()
    }

    /// Every request received so far, as it arrived, in the order of
    /// [`Webhook::seen`].
    pub fn raw(&self) -> Vec<Raw> {
        lock(&self.state.raw).clone()
    }

    /// Waits until the bodies received satisfy `ready`; returns them, or
    /// panics with them after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        ready: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut seen = lock(&self.state.seen);
        loop {
            if ready(&seen) {
                return seen.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("webhook: {what} not seen within {timeout:?}; received:\n{seen:#?}");
            }
            seen = self
                .state
                .arrived
                .wait_timeout(seen, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Answers everything held, and everything from now on.
    pub fn release(&self) {
        *lock(&self.state.open) = true;
        self.state.opened.notify_all();
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        self.release();
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One request per connection: read it, record it, answer (maybe later).
fn serve(state: &State, stream: TcpStream) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut len = 0;
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let hold = (state.hold)(&value);
    {
        // Both under the `seen` lock, so `raw` is never behind `seen`.
        let mut seen = lock(&state.seen);
        lock(&state.raw).push(Raw { headers, body });
        seen.push(value);
    }
    state.arrived.notify_all();
    if hold {
        let mut open = lock(&state.open);
        while !*open {
            open = state.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
    let mut stream = stream;
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// Checks `raw`'s signature with Python's `hmac` module: exit 0 when it
/// matches the secret in `secret_file`.
pub fn python_verifies(secret_file: &Path, raw: &Raw) -> bool {
    let body = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(body.path(), &raw.body).expect("write the body");
    let script = r#"
import hashlib, hmac, sys, time
secret = open(sys.argv[1], "rb").read().rstrip(b"\n")
body = open(sys.argv[2], "rb").read()
ts, got = sys.argv[3], sys.argv[4]
want = "sha256=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
fresh = abs(time.time() - int(ts)) <= 300
sys.exit(0 if hmac.compare_digest(want, got) and fresh else 1)
"#;
    std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(secret_file)
        .arg(body.path())
        .arg(raw.header("x-portcullis-timestamp").unwrap_or("0"))
        .arg(raw.header("x-portcullis-signature").unwrap_or(""))
        .status()
        .expect("run python3")
        .success()
}
