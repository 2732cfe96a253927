//! Runs a real `redis-server` (Debian's Redis 7) on a free loopback port,
//! without persistence, in a temp dir. It can be stopped and started again
//! on the same port (a Redis outage, then recovery). Killed and reaped on
//! drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REDIS_BIN: &str = "/usr/bin/redis-server";
pub const REDIS_CLI: &str = "/usr/bin/redis-cli";

pub struct Redis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    password: Option<String>,
}

impl Redis {
    /// An open server (no password).
    pub fn start() -> Redis {
        Self::start_inner(None)
    }

    /// A server requiring `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> Redis {
        Self::start_inner(Some(password.to_owned()))
    }

    fn start_inner(password: Option<String>) -> Redis {
        super::clients::require_tool(REDIS_BIN, "redis-server");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut redis = Redis {
                port: super::free_port(),
                child: None,
                dir: tempfile::tempdir().expect("tempdir"),
                password: password.clone(),
            };
            if redis.spawn() || attempt >= 4 {
                assert!(
                    redis.child.is_some(),
                    "redis-server did not start:\n{}",
                    redis.logs()
                );
                return redis;
            }
        }
    }

    /// Starts the server (again) on its port; whether it answers PING.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(REDIS_BIN);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--daemonize")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path());
        if let Some(p) = &self.password {
            cmd.arg("--requirepass").arg(p);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if self.command(&["PING"]).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops the server (SIGKILL): every connection drops, nothing is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server did not restart:\n{}",
            self.logs()
        );
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs one command with `redis-cli` and returns its output.
    pub fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut cmd = Command::new(REDIS_CLI);
        cmd.arg("-p").arg(self.port.to_string());
        if let Some(p) = &self.password {
            cmd.arg("-a").arg(p).arg("--no-auth-warning");
        }
        let out = cmd.args(args).stdin(Stdio::null()).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.starts_with("Could not connect") || text.is_empty() {
            return Err(std::io::Error::other(format!(
                "redis-cli {args:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(text)
    }

    /// Keys matching `pattern` (`KEYS`, fine for a test's few keys).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let reply = self.command(&["KEYS", pattern]).expect("KEYS");
        reply
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- redis log ---\n{}", self.logs());
        }
    }
}
