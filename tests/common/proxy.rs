//! Runs the real `portcullis` binary as a child process for a test.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `portcullis serve` process. Killed (SIGKILL) and reaped on drop,
/// including when the test panics.
pub struct Proxy {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
    /// What [`Proxy::restart`] starts again with.
    health_url: Option<String>,
    env: Vec<(String, String)>,
}

/// Picks a free loopback TCP port (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

impl Proxy {
    /// Writes `config_yaml` (with every `{listen}` replaced by a free
    /// 127.0.0.1 address) to a temp file, spawns
    /// `portcullis serve --config FILE --log-format json` with stdout and
    /// stderr going to a log file in the temp dir, and waits until
    /// `GET /healthz` answers 200 (20 s timeout; panics with the log).
    pub fn start(config_yaml: &str) -> Proxy {
        Self::start_checking(config_yaml, None)
    }

    /// Like [`Proxy::start`], but waits for `health_url` (e.g. the admin
    /// listener's `/healthz`, when the registry port serves only `/v2/`).
    pub fn start_with_health(config_yaml: &str, health_url: &str) -> Proxy {
        Self::start_checking(config_yaml, Some(health_url))
    }

    /// Like [`Proxy::start_with_health`], with `env` added to the
    /// process's environment (e.g. `RUST_LOG=debug`).
    pub fn start_with_env(config_yaml: &str, health_url: &str, env: &[(&str, &str)]) -> Proxy {
        Self::start_checking_env(config_yaml, Some(health_url), env)
    }

    /// Like [`Proxy::start`], with `env` added to the process's
    /// environment (e.g. a `PATH` holding a credential helper).
    pub fn start_with_env_vars(config_yaml: &str, env: &[(&str, &str)]) -> Proxy {
        Self::start_checking_env(config_yaml, None, env)
    }

    fn start_checking(config_yaml: &str, health_url: Option<&str>) -> Proxy {
        Self::start_checking_env(config_yaml, health_url, &[])
    }

    fn start_checking_env(
        config_yaml: &str,
        health_url: Option<&str>,
        env: &[(&str, &str)],
    ) -> Proxy {
        // The port can be taken by someone else between free_port() and the
        // proxy's bind; if the process exits complaining about the address,
        // retry with a fresh port.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = tempfile::tempdir().expect("tempdir");
            let log = dir.path().join("portcullis.log");
            let cfg = dir.path().join("portcullis.yaml");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
                .parse()
                .expect("socket address");
            let text = config_yaml.replace("{listen}", &addr.to_string());
            std::fs::write(&cfg, &text).expect("write proxy config");
            let out = File::create(&log).expect("create proxy log");
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let child = spawn_serve(&cfg, out, &env);
            let mut proxy = Proxy {
                addr,
                child,
                _dir: dir,
                log,
                health_url: health_url.map(str::to_owned),
                env,
            };
            let outcome = proxy.wait_healthy(Duration::from_secs(20), health_url);
            match outcome {
                Health::Up => return proxy,
                Health::Exited(status) => {
                    let logs = proxy.logs();
                    let lower = logs.to_lowercase();
                    let addr_in_use = lower.contains("in use") || lower.contains("addrinuse");
                    if addr_in_use && attempt < 4 {
                        continue; // drop kills/reaps and removes the temp dir
                    }
                    panic!(
                        "portcullis exited ({status}) before becoming healthy on {addr}\n\
                         --- config ---\n{text}\n--- log ---\n{logs}"
                    );
                }
                Health::TimedOut(last) => panic!(
                    "portcullis did not answer GET /healthz with 200 on {addr} within 20 s \
                     (last attempt: {last})\n--- config ---\n{text}\n--- log ---\n{}",
                    proxy.logs()
                ),
            }
        }
    }

    /// Kills the process with SIGKILL, as a crash would (no graceful
    /// shutdown, nothing flushed), and reaps it: its ports are free again.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }

    /// Starts `portcullis serve` again with the same config file (same
    /// ports, audit file, content store), its output appended to the same
    /// log, and waits until it is healthy (20 s; panics with the log).
    /// The previous process must be gone ([`Proxy::kill_9`]).
    pub fn restart(&mut self) {
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("open proxy log");
        self.child = spawn_serve(&self.config_path(), out, &self.env);
        let health_url = self.health_url.clone();
        match self.wait_healthy(Duration::from_secs(20), health_url.as_deref()) {
            Health::Up => {}
            Health::Exited(status) => panic!(
                "restarted portcullis exited ({status}) before becoming healthy on {}\n--- log ---\n{}",
                self.addr,
                self.logs()
            ),
            Health::TimedOut(last) => panic!(
                "restarted portcullis did not answer GET /healthz with 200 on {} within 20 s \
                 (last attempt: {last})\n--- log ---\n{}",
                self.addr,
                self.logs()
            ),
        }
    }

    fn wait_healthy(&mut self, timeout: Duration, health_url: Option<&str>) -> Health {
        let url = health_url
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}/healthz", self.url()));
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Health::Exited(status.to_string());
            }
            match super::http::get(&url) {
                Ok(r) if r.status == 200 => return Health::Up,
                Ok(r) => last = format!("HTTP {}", r.status),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Health::TimedOut(last);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file the proxy was started with (tests may rewrite it to
    /// exercise reloads).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("portcullis.yaml")
    }

    /// Everything the proxy has written to stdout/stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// `portcullis serve --config CFG --log-format json`, stdout and stderr to
/// `log`.
fn spawn_serve(cfg: &std::path::Path, log: File, env: &[(String, String)]) -> Child {
    let err = log.try_clone().expect("clone log fd");
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("serve")
        .arg("--config")
        .arg(cfg)
        .arg("--log-format")
        .arg("json")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn portcullis")
}

enum Health {
    Up,
    Exited(String),
    TimedOut(String),
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- portcullis log ({}) ---\n{}", self.addr, self.logs());
        }
    }
}

/// A proxy config with one plain-HTTP upstream, `registry_host`
/// (`127.0.0.1:PORT`), as the default; `{listen}` is left for
/// [`Proxy::start`] to fill in.
pub fn single_upstream_config(registry_host: &str) -> String {
    format!(
        "listen: {{listen}}\n\
         upstreams:\n  \
           - registry: {registry_host}\n    \
             url: http://{registry_host}\n    \
             default: true\n"
    )
}
