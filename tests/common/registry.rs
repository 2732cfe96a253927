//! Runs a real CNCF distribution registry (Debian's `docker-registry`,
//! distribution 2.8) on a free loopback port with filesystem storage in a
//! temp dir. Killed and reaped on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

pub struct Registry {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Registry {
    /// Starts an anonymous registry with deletes enabled.
    pub fn start() -> Registry {
        Self::start_with_extra("")
    }

    /// Starts a registry whose config gets `extra_yaml` appended at top level
    /// (e.g. an `auth:` section). `{dir}` in it is replaced by the registry's
    /// temp dir.
    pub fn start_with_extra(extra_yaml: &str) -> Registry {
        Self::start_inner(extra_yaml, false)
    }

    /// Starts a registry that writes an access log line (Apache combined
    /// format) per request to [`Registry::logs`], to count what it was asked.
    pub fn start_with_access_log() -> Registry {
        Self::start_inner("", true)
    }

    fn start_inner(extra_yaml: &str, access_log: bool) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install it with `apt-get install -y docker-registry` \
             (these integration tests need a real CNCF distribution registry)"
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = tempfile::tempdir().expect("tempdir");
            let port = super::free_port();
            let storage = dir.path().join("storage");
            std::fs::create_dir_all(&storage).expect("mkdir storage");
            let extra = extra_yaml.replace("{dir}", &dir.path().display().to_string());
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: {}\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: portcullis-test-secret\n\
                 {extra}\n",
                !access_log,
                storage.display()
            );
            let cfg = dir.path().join("config.yml");
            std::fs::write(&cfg, &config).expect("write registry config");
            let log = dir.path().join("registry.log");
            let out = File::create(&log).expect("create registry log");
            let child = spawn_serve(&cfg, out);
            let mut reg = Registry {
                port,
                child,
                dir,
                log,
            };
            match reg.wait_up() {
                Up::Yes => return reg,
                Up::Exited(status) => {
                    let logs = reg.logs();
                    if logs.contains("address already in use") && attempt < 4 {
                        continue; // retry with another port
                    }
                    panic!("docker-registry exited ({status}) during startup\n--- config ---\n{config}\n--- log ---\n{logs}");
                }
                Up::TimedOut(last) => panic!(
                    "docker-registry did not answer GET /v2/ within 20 s (last: {last})\n\
                     --- log ---\n{}",
                    reg.logs()
                ),
            }
        }
    }

    /// Waits (20 s at most) until `GET /v2/` answers.
    fn wait_up(&mut self) -> Up {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last: String;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Up::Exited(status.to_string());
            }
            match super::http::get(&format!("{}/v2/", self.url())) {
                // 401 is a valid "up" answer for a token-protected registry.
                Ok(r) if r.status == 200 || r.status == 401 => return Up::Yes,
                Ok(r) => last = format!("HTTP {}", r.status),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Up::TimedOut(last);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the registry with SIGKILL: connections drop mid-transfer; its
    /// storage and port are kept for [`Registry::restart`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the registry again on the same port, configuration and
    /// storage (after [`Registry::stop`]), its output appended to the same
    /// log; panics unless it answers `GET /v2/` within 20 s.
    pub fn restart(&mut self) {
        self.stop();
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("open registry log");
        self.child = spawn_serve(&self.dir.path().join("config.yml"), out);
        match self.wait_up() {
            Up::Yes => {}
            Up::Exited(status) => panic!(
                "docker-registry exited ({status}) on restart\n--- log ---\n{}",
                self.logs()
            ),
            Up::TimedOut(last) => panic!(
                "restarted docker-registry did not answer GET /v2/ within 20 s (last: {last})\n\
                 --- log ---\n{}",
                self.logs()
            ),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The registry's temp dir (config, storage, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn logs(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

enum Up {
    Yes,
    Exited(String),
    TimedOut(String),
}

/// `docker-registry serve CFG`, stdout and stderr to `log`.
fn spawn_serve(cfg: &Path, log: File) -> Child {
    let err = log.try_clone().expect("clone fd");
    Command::new(REGISTRY_BIN)
        .arg("serve")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        // Debian's package reads this when no config argument is given;
        // unset so the argument is the only source.
        .env_remove("REGISTRY_CONFIGURATION_PATH")
        .spawn()
        .expect("spawn docker-registry")
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- docker-registry log ({}) ---\n{}",
                self.host(),
                self.logs()
            );
        }
    }
}
