//! Real-client helpers: skopeo, podman and containerd (`ctr`).
//!
//! Every helper isolates its client in temp dirs (storage, state, sockets,
//! registries.conf) so tests can run in parallel, and fails loudly when the
//! tool is not installed: these tests are never skipped silently.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any single client command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Panics with an install hint unless `bin` exists.
pub fn require_tool(bin: &str, package: &str) {
    assert!(
        Path::new(bin).exists(),
        "{bin} is not installed: run `apt-get install -y {package}` \
         (this test needs the real client and is never skipped)"
    );
}

/// Runs `cmd` to completion with a timeout, capturing stdout and stderr.
/// Panics (with both streams) on timeout or a non-zero exit status.
pub fn run(cmd: &mut Command, what: &str) -> Output {
    let out = run_unchecked(cmd, what);
    assert!(
        out.status.success(),
        "{what} failed ({})\ncommand: {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Like [`run`] but returns the output whatever the exit status.
pub fn run_unchecked(cmd: &mut Command, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot spawn {cmd:?}: {e}"));
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = t_err.join().unwrap_or_default();
            panic!(
                "{what}: timed out after {COMMAND_TIMEOUT:?}\ncommand: {cmd:?}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// An empty registries.conf (no mirrors, no search registries) so the host's
/// /etc/containers/registries.conf cannot redirect test pulls.
fn write_empty_registries_conf(dir: &Path) -> PathBuf {
    let p = dir.join("registries.conf");
    std::fs::write(&p, "unqualified-search-registries = []\n").expect("write registries.conf");
    p
}

// ---------------------------------------------------------------- skopeo

pub const SKOPEO: &str = "/usr/bin/skopeo";

/// `skopeo copy docker://<reference> dir:<dest>` over plain HTTP (the
/// `--src-tls-verify=false` fallback). With `all`, copies every instance of
/// an index (`--all`), otherwise only the host platform.
pub fn skopeo_copy_to_dir(reference: &str, dest: &Path, all: bool) {
    require_tool(SKOPEO, "skopeo");
    let conf_dir = tempfile::tempdir().expect("tempdir");
    let conf = write_empty_registries_conf(conf_dir.path());
    let mut cmd = Command::new(SKOPEO);
    cmd.env("CONTAINERS_REGISTRIES_CONF", &conf)
        .arg("--insecure-policy")
        .arg("copy")
        .arg("--src-tls-verify=false")
        .arg("--retry-times=0");
    if all {
        cmd.arg("--all");
    }
    cmd.arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dest.display()));
    run(&mut cmd, &format!("skopeo copy {reference}"));
}

/// Asserts two directory trees hold exactly the same file names with
/// byte-identical contents. Returns the number of files compared.
pub fn assert_dirs_identical(a: &Path, b: &Path) -> usize {
    let la = list_files(a);
    let lb = list_files(b);
    assert_eq!(
        la,
        lb,
        "file lists differ between {} and {}",
        a.display(),
        b.display()
    );
    for rel in &la {
        assert_files_identical(&a.join(rel), &b.join(rel));
    }
    la.len()
}

fn list_files(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        {
            let e = e.expect("dir entry");
            let p = e.path();
            if e.file_type().expect("file type").is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).expect("prefix").to_path_buf());
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

/// Streams both files and asserts they are byte-for-byte equal.
pub fn assert_files_identical(a: &Path, b: &Path) {
    let mut fa = File::open(a).unwrap_or_else(|e| panic!("open {}: {e}", a.display()));
    let mut fb = File::open(b).unwrap_or_else(|e| panic!("open {}: {e}", b.display()));
    let (la, lb) = (
        fa.metadata().expect("meta").len(),
        fb.metadata().expect("meta").len(),
    );
    assert_eq!(la, lb, "sizes differ: {} vs {}", a.display(), b.display());
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = fa.read(&mut ba).expect("read");
        if n == 0 {
            break;
        }
        fb.read_exact(&mut bb[..n]).expect("read");
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            panic!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                off + i as u64
            );
        }
        off += n as u64;
    }
}

// ---------------------------------------------------------------- podman

pub const PODMAN: &str = "/usr/bin/podman";

/// A podman with its own storage (vfs driver), run root, tmp dir and
/// registries.conf, usable as root in a container without systemd.
pub struct Podman {
    dir: tempfile::TempDir,
}

/// What `podman image inspect` says about a pulled image.
#[derive(Debug, Clone)]
pub struct PodmanImage {
    /// Image ID: the config digest's hex.
    pub id: String,
    /// The digest of the manifest (or index) the image was pulled by.
    pub digest: String,
    pub repo_digests: Vec<String>,
    pub architecture: String,
}

impl Podman {
    pub fn new() -> Podman {
        require_tool(PODMAN, "podman");
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["root", "runroot", "tmp"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        write_empty_registries_conf(dir.path());
        Podman { dir }
    }

    /// `podman` with the isolating global flags.
    pub fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(PODMAN);
        c.env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--storage-driver")
            .arg("vfs")
            .arg("--cgroup-manager=cgroupfs")
            .arg("--events-backend=file");
        c
    }

    /// `podman pull --tls-verify=false <reference>`; returns the image ID
    /// podman prints.
    pub fn pull(&self, reference: &str) -> String {
        let out = run(
            self.cmd()
                .arg("pull")
                .arg("--quiet")
                .arg("--tls-verify=false")
                .arg(reference),
            &format!("podman pull {reference}"),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn inspect(&self, reference: &str) -> PodmanImage {
        let out = run(
            self.cmd()
                .arg("image")
                .arg("inspect")
                .arg("--format")
                .arg("json")
                .arg(reference),
            &format!("podman image inspect {reference}"),
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("podman inspect json");
        let img = &v[0];
        PodmanImage {
            id: img["Id"].as_str().expect("Id").to_string(),
            digest: img["Digest"].as_str().expect("Digest").to_string(),
            repo_digests: img["RepoDigests"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            architecture: img["Architecture"].as_str().unwrap_or_default().to_string(),
        }
    }
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------- containerd

pub const CONTAINERD: &str = "/usr/bin/containerd";
pub const CTR: &str = "/usr/bin/ctr";

/// A private containerd (own root, state, gRPC socket; CRI disabled) for one
/// test. Killed and reaped on drop. Pulls unpack into the `native`
/// snapshotter, which needs no mounts.
pub struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    sock: PathBuf,
    log: PathBuf,
}

impl Containerd {
    pub fn start() -> Containerd {
        require_tool(CONTAINERD, "containerd");
        require_tool(CTR, "containerd");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let sock = d.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
oom_score = 0
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = sock.display(),
            opt = d.join("opt").display(),
        );
        let cfg = d.join("config.toml");
        std::fs::write(&cfg, &config).expect("write containerd config");
        let log = d.join("containerd.log");
        let out = File::create(&log).expect("log");
        let err = out.try_clone().expect("clone fd");
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd {
            child,
            dir,
            sock,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!(
                    "containerd exited ({status}) during startup\n--- log ---\n{}",
                    c.logs()
                );
            }
            if c.sock.exists() {
                let out = run_unchecked(c.ctr().arg("version"), "ctr version");
                if out.status.success() {
                    return c;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "containerd did not answer on {} within 20 s\n--- log ---\n{}",
                    c.sock.display(),
                    c.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gRPC socket path.
    pub fn address(&self) -> &Path {
        &self.sock
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ctr --address SOCK` (namespace `default`).
    pub fn ctr(&self) -> Command {
        let mut c = Command::new(CTR);
        c.arg("--address").arg(&self.sock);
        c
    }

    /// `ctr images pull --plain-http --snapshotter native [--all-platforms] REF`.
    pub fn pull_plain_http(&self, reference: &str, all_platforms: bool) {
        let mut cmd = self.ctr();
        cmd.args(["images", "pull", "--plain-http", "--snapshotter", "native"]);
        if all_platforms {
            cmd.arg("--all-platforms");
        }
        cmd.arg(reference);
        run(&mut cmd, &format!("ctr images pull {reference}"));
    }

    /// `ctr images pull --hosts-dir DIR --snapshotter native REF`: registry
    /// hosts (mirrors) come from `DIR/<host>/hosts.toml`.
    pub fn pull_with_hosts_dir(&self, reference: &str, hosts_dir: &Path, all_platforms: bool) {
        let mut cmd = self.ctr();
        cmd.args(["images", "pull", "--snapshotter", "native", "--hosts-dir"])
            .arg(hosts_dir);
        if all_platforms {
            cmd.arg("--all-platforms");
        }
        cmd.arg(reference);
        run(
            &mut cmd,
            &format!("ctr images pull (hosts-dir) {reference}"),
        );
    }

    /// The target descriptor digest of a stored image (`ctr images ls`).
    pub fn image_target(&self, reference: &str) -> String {
        let out = run(self.ctr().args(["images", "ls"]), "ctr images ls");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.first() == Some(&reference) {
                return cols.get(2).expect("digest column").to_string();
            }
        }
        panic!("image {reference} not in `ctr images ls`:\n{text}");
    }

    /// Digests of every blob in the content store (`ctr content ls -q`).
    pub fn content_digests(&self) -> Vec<String> {
        let out = run(self.ctr().args(["content", "ls", "-q"]), "ctr content ls");
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        v.sort();
        v
    }

    /// The bytes of one content blob (`ctr content get DIGEST`).
    pub fn content_get(&self, digest: &str) -> Vec<u8> {
        run(
            self.ctr().args(["content", "get", digest]),
            &format!("ctr content get {digest}"),
        )
        .stdout
    }

    pub fn logs(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            eprintln!(
                "--- containerd log (last 40 lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// Writes `<hosts_dir>/<registry_host>/hosts.toml` declaring `mirror_url`
/// (e.g. `http://127.0.0.1:PORT`) as a pull/resolve mirror of
/// `registry_host`, with `server` as the registry's own endpoint. containerd
/// then sends `?ns=<registry_host>` with every request to the mirror.
pub fn write_mirror_hosts_toml(
    hosts_dir: &Path,
    registry_host: &str,
    server: &str,
    mirror_url: &str,
) {
    let d = hosts_dir.join(registry_host);
    std::fs::create_dir_all(&d).expect("mkdir hosts dir");
    std::fs::write(
        d.join("hosts.toml"),
        format!(
            "server = \"{server}\"\n\n[host.\"{mirror_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .expect("write hosts.toml");
}

/// `htpasswd -Bbn user password`: an htpasswd line (bcrypt) written by
/// Apache's own tool, with its newline.
pub fn htpasswd_entry(user: &str, password: &str) -> String {
    require_tool("/usr/bin/htpasswd", "apache2-utils");
    let out = run(
        Command::new("/usr/bin/htpasswd").args(["-Bbn", user, password]),
        "htpasswd -B",
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
        + "\n"
}
