//! The deployment files in `docker/`, checked without a container engine or
//! a cluster (neither runs here):
//!
//! - `docker/compose.yaml` and every `docker/k8s/*.yaml` parse with a real
//!   YAML parser (multi-document files included);
//! - every file they reference exists (build context, Dockerfile, bind
//!   mounts, kustomize resources);
//! - ports agree: container ports, published ports, probes and Services
//!   match `listen` / `admin.listen` of the Portcullis config they run;
//! - every embedded Portcullis config (`docker/portcullis.yaml` with the
//!   files mounted next to it, the ConfigMap's data) passes
//!   `portcullis check --config`, laid out in a temp dir exactly as the
//!   container sees it;
//! - the fleets: wherever more than one replica runs (the compose replicas,
//!   the Deployment), their config sets `state.redis`, and the Redis it
//!   names is there (service, port, password Secret, network policy), with
//!   no persistence; replicas have distinct names and audit files; the
//!   disruption budget selects the Portcullis pods;
//! - the runtime configs in `docker/runtimes/` (tested with the real
//!   runtimes in tests/runtime_mirrors.rs) are the ones README.md shows.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;

const PORTCULLIS: &str = env!("CARGO_BIN_EXE_portcullis");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docker_dir() -> PathBuf {
    root().join("docker")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every YAML document in `path` (empty documents skipped).
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let v = Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{} document {i}: {e}", path.display()));
        if !v.is_null() {
            docs.push(v);
        }
    }
    assert!(
        !docs.is_empty(),
        "{} holds no YAML document",
        path.display()
    );
    docs
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for key in path {
        cur = cur
            .get(*key)
            .unwrap_or_else(|| panic!("missing {} in {v:?}", path.join(".")));
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{} is not a string: {cur:?}", path.join(".")))
}

fn seq<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{key} is not a list in {v:?}"))
}

fn as_str(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn as_u64(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v:?}"))
}

/// The text after `flag` in an argument list.
fn arg_after<'a>(args: &'a [Value], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a.as_str() == Some(flag))
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    as_str(&args[i + 1])
}

// ------------------------------------------------------ portcullis configs

/// What the deployment files must agree with in a Portcullis config.
#[derive(Debug)]
struct PortcullisConfig {
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    /// Relative file paths it names (resolved against its directory).
    relative_files: Vec<String>,
    /// Absolute file paths it names.
    absolute_files: Vec<String>,
    /// `audit.path`, when audit goes to a file.
    audit_path: Option<String>,
    upstream_urls: Vec<String>,
    shutdown_secs: u64,
    /// `state.replica`.
    replica: Option<String>,
    /// `state.redis`.
    redis: Option<RedisState>,
    /// `attestationStore.path`.
    attestation_store: Option<String>,
    /// `cache.content.path`.
    content_store: Option<String>,
}

/// `state.redis` of a Portcullis config.
#[derive(Debug)]
struct RedisState {
    url: String,
    /// The URL's host and port (6379 when it names none).
    host: String,
    port: u16,
    key_prefix: Option<String>,
    password_file: Option<String>,
}

/// `redis://[user@]host[:port][/db]` (or `rediss://`) → `(host, port)`.
fn redis_host_port(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .unwrap_or_else(|| panic!("state.redis.url {url:?}: not redis:// or rediss://"));
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    match host_port.rsplit_once(':') {
        Some((host, port)) => (
            host.to_owned(),
            port.parse()
                .unwrap_or_else(|e| panic!("state.redis.url {url:?}: port: {e}")),
        ),
        None => (host_port.to_owned(), 6379),
    }
}

fn parse_config(text: &str) -> PortcullisConfig {
    let v: Value = serde_yaml_ng::from_str(text).unwrap();
    let addr = |s: &str| -> SocketAddr { s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}")) };
    let mut files = Vec::new();
    let mut push = |f: Option<&Value>| {
        if let Some(s) = f.and_then(Value::as_str) {
            files.push(s.to_owned());
        }
    };
    push(v.get("policyFile"));
    if let Some(tls) = v.get("tls") {
        push(tls.get("cert"));
        push(tls.get("key"));
    }
    let state = v.get("state");
    let replica = state
        .and_then(|s| s.get("replica"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let redis = state.and_then(|s| s.get("redis")).map(|r| {
        push(r.get("passwordFile"));
        push(r.get("tls").and_then(|t| t.get("caFile")));
        let url = str_at(r, &["url"]).to_owned();
        let (host, port) = redis_host_port(&url);
        RedisState {
            url,
            host,
            port,
            key_prefix: r
                .get("keyPrefix")
                .and_then(Value::as_str)
                .map(str::to_owned),
            password_file: r
                .get("passwordFile")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    });
    let attestation_store = v
        .get("attestationStore")
        .and_then(|a| a.get("path"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut upstream_urls = Vec::new();
    for u in seq(&v, "upstreams") {
        push(u.get("auth").and_then(|a| a.get("passwordFile")));
        push(u.get("caFile"));
        if let Some(url) = u.get("url").and_then(Value::as_str) {
            upstream_urls.push(url.to_owned());
        }
    }
    let audit_path = v
        .get("audit")
        .and_then(|a| a.get("path"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let shutdown_secs = v
        .get("timeouts")
        .and_then(|t| t.get("shutdown"))
        .and_then(Value::as_str)
        .map(|s| {
            s.strip_suffix('s')
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("timeouts.shutdown {s:?}: expected whole seconds"))
        })
        .unwrap_or(30);
    let (relative_files, absolute_files) = files.into_iter().partition(|f| !f.starts_with('/'));
    PortcullisConfig {
        listen: addr(str_at(&v, &["listen"])),
        admin: v.get("admin").map(|a| addr(str_at(a, &["listen"]))),
        relative_files,
        absolute_files,
        audit_path,
        upstream_urls,
        shutdown_secs,
        replica,
        redis,
        attestation_store,
        content_store: v
            .get("cache")
            .and_then(|c| c.get("content"))
            .and_then(|c| c.get("path"))
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

/// Writes `files` (`relative path → contents`) into a temp dir and runs
/// `portcullis check --config <dir>/<config>`; panics unless it exits 0.
/// Returns its summary.
fn portcullis_check(files: &BTreeMap<String, String>, config: &str, what: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    let out = Command::new(PORTCULLIS)
        .arg("check")
        .arg("--config")
        .arg(dir.path().join(config))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "portcullis check rejects {what}:\n{text}"
    );
    assert!(text.contains("configuration is valid"), "{what}: {text}");
    text
}

/// The listeners of a container's config must be reachable from outside
/// the container.
fn assert_listens_on_all_interfaces(c: &PortcullisConfig, what: &str) {
    assert!(
        c.listen.ip().is_unspecified(),
        "{what}: listen {} is not reachable from outside the container",
        c.listen
    );
    let admin = c
        .admin
        .unwrap_or_else(|| panic!("{what}: no admin listener for /metrics and the probes"));
    assert!(admin.ip().is_unspecified(), "{what}: admin.listen {admin}");
    assert_ne!(admin.port(), c.listen.port(), "{what}: one port for both");
}

// ----------------------------------------------------------- Dockerfile

struct Dockerfile {
    uid: u64,
    exposed: BTreeSet<u16>,
    text: String,
}

fn dockerfile() -> Dockerfile {
    let text = read(&docker_dir().join("Dockerfile"));
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("Dockerfile sets USER");
    let uid = user.split(':').next().unwrap().trim().parse().unwrap();
    let exposed = text
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    Dockerfile { uid, exposed, text }
}

#[test]
fn dockerfile_runs_as_non_root_and_exposes_the_deployed_ports() {
    let d = dockerfile();
    assert_ne!(d.uid, 0, "the image must not run as root");
    let compose = parse_config(&read(&docker_dir().join("portcullis.yaml")));
    for port in [compose.listen.port(), compose.admin.unwrap().port()] {
        assert!(
            d.exposed.contains(&port),
            "Dockerfile EXPOSE {:?} lacks {port}",
            d.exposed
        );
    }
    // The image's own default config is checked at build time.
    assert!(d.text.contains("portcullis check --config"));
    assert!(root().join("docker/Dockerfile.dockerignore").is_file());
}

// -------------------------------------------------------------- compose

/// A compose volume entry: `source:target[:mode]`.
struct Mount {
    source: String,
    target: String,
    read_only: bool,
}

fn mounts(service: &Value) -> Vec<Mount> {
    seq(service, "volumes")
        .iter()
        .map(|v| {
            let parts: Vec<&str> = as_str(v).split(':').collect();
            assert!(
                (2..=3).contains(&parts.len()),
                "volume {v:?}: expected source:target[:mode]"
            );
            Mount {
                source: parts[0].to_owned(),
                target: parts[1].to_owned(),
                read_only: parts
                    .get(2)
                    .is_some_and(|m| m.split(',').any(|o| o == "ro")),
            }
        })
        .collect()
}

fn is_bind(source: &str) -> bool {
    source.starts_with("./") || source.starts_with("../") || source.starts_with('/')
}

/// `[ip:]host:container[/proto]` → `(ip, host port, container port)`.
fn published(spec: &str) -> (Option<String>, u16, u16) {
    let spec = spec.split('/').next().unwrap();
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let container = parts[0].parse().unwrap();
    let host = parts
        .get(1)
        .unwrap_or_else(|| panic!("port {spec:?} is not published on the host"))
        .parse()
        .unwrap();
    (parts.get(2).map(|s| s.to_string()), host, container)
}

/// `docker/compose.yaml`, with its `<<: *anchor` merge keys applied as
/// compose applies them.
fn compose() -> Value {
    let mut docs = documents(&docker_dir().join("compose.yaml"));
    assert_eq!(docs.len(), 1, "compose.yaml is one document");
    let mut compose = docs.remove(0);
    compose.apply_merge().unwrap();
    compose
}

/// The services a service depends on (`depends_on`, short or long form).
fn depends_on(service: &Value) -> BTreeSet<String> {
    match service.get("depends_on") {
        None => BTreeSet::new(),
        Some(Value::Sequence(names)) => names.iter().map(|n| as_str(n).to_owned()).collect(),
        Some(Value::Mapping(m)) => m.keys().map(|k| as_str(k).to_owned()).collect(),
        Some(other) => panic!("depends_on: {other:?}"),
    }
}

/// The networks a service is on (`default` when it names none).
fn networks(service: &Value) -> BTreeSet<String> {
    match service.get("networks") {
        None => BTreeSet::from(["default".to_owned()]),
        Some(Value::Sequence(names)) => names.iter().map(|n| as_str(n).to_owned()).collect(),
        Some(Value::Mapping(m)) => m.keys().map(|k| as_str(k).to_owned()).collect(),
        Some(other) => panic!("networks: {other:?}"),
    }
}

/// One Portcullis service of the compose file, checked on its own.
struct ComposeReplica {
    service: String,
    hostname: Option<String>,
    config: PortcullisConfig,
    /// `(ip, host port, container port)`.
    ports: Vec<(Option<String>, u16, u16)>,
    /// The named volume the audit file is on.
    audit_volume: String,
    /// The named volume the content store is on.
    content_volume: String,
    networks: BTreeSet<String>,
    depends_on: BTreeSet<String>,
}

/// Checks one Portcullis service: its build, its mounts, the config it runs
/// (`portcullis check`, laid out as the container sees it), its audit
/// volume, its published ports.
fn compose_replica(
    dir: &Path,
    name: &str,
    p: &Value,
    declared_volumes: &BTreeSet<String>,
) -> ComposeReplica {
    // Build context and Dockerfile, relative to docker/.
    let context = dir.join(str_at(p, &["build", "context"]));
    assert!(
        context.join("Cargo.toml").is_file(),
        "{name}: build context {context:?} is not the crate"
    );
    let dockerfile = context.join(str_at(p, &["build", "dockerfile"]));
    assert!(dockerfile.is_file(), "{dockerfile:?} missing");
    assert_eq!(
        dockerfile.canonicalize().unwrap(),
        dir.join("Dockerfile").canonicalize().unwrap()
    );

    // Every mount: bind sources exist, named volumes are declared.
    let mounts = mounts(p);
    for m in &mounts {
        if is_bind(&m.source) {
            assert!(
                dir.join(&m.source).exists(),
                "{name}: bind mount source {} missing",
                m.source
            );
            assert!(
                m.read_only,
                "{name}: bind mount {} should be read-only",
                m.source
            );
        } else {
            assert!(
                declared_volumes.contains(&m.source),
                "{name}: volume {} not declared",
                m.source
            );
        }
    }
    let mount_at = |target: &str| mounts.iter().find(|m| m.target == target);

    // The config the command names is the mounted docker/portcullis.yaml.
    let command = seq(p, "command");
    assert_eq!(as_str(&command[0]), "serve");
    let config_target = arg_after(command, "--config");
    let config_mount = mount_at(config_target)
        .unwrap_or_else(|| panic!("{name}: --config {config_target} is not a mounted file"));
    let config_source = dir.join(&config_mount.source);
    assert_eq!(
        config_source.canonicalize().unwrap(),
        dir.join("portcullis.yaml").canonicalize().unwrap()
    );
    let text = read(&config_source);
    let config = parse_config(&text);
    assert_listens_on_all_interfaces(&config, "docker/portcullis.yaml");

    // Files it names relative to itself are mounted next to it; lay them
    // out the same way for `portcullis check`.
    let config_dir = Path::new(config_target).parent().unwrap();
    let mut files = BTreeMap::new();
    files.insert("portcullis.yaml".to_owned(), text.clone());
    for rel in &config.relative_files {
        let target = config_dir.join(rel);
        let m = mount_at(target.to_str().unwrap())
            .unwrap_or_else(|| panic!("{name}: {rel} (at {target:?}) is not mounted"));
        files.insert(rel.clone(), read(&dir.join(&m.source)));
    }
    assert!(
        config.absolute_files.is_empty(),
        "{:?}",
        config.absolute_files
    );
    let summary = portcullis_check(&files, "portcullis.yaml", "docker/portcullis.yaml");
    assert!(summary.contains("REQUIRE_ATTESTATION"), "{summary}");
    assert!(summary.contains("attestor built-by-ci"), "{summary}");

    // The audit trail goes to a writable named volume (the root fs is
    // read-only) that the image creates for its user.
    let audit = config.audit_path.as_deref().expect("audit.path");
    let audit_dir = Path::new(audit).parent().unwrap().to_str().unwrap();
    let m = mount_at(audit_dir).unwrap_or_else(|| panic!("{name}: {audit_dir} is not a volume"));
    assert!(!is_bind(&m.source) && !m.read_only);
    assert!(
        dockerfile_text_creates(audit_dir),
        "the Dockerfile does not create {audit_dir} for its user"
    );
    let audit_volume = m.source.clone();

    // So is the content store, on a volume of its own.
    let content = config.content_store.as_deref().expect("cache.content.path");
    let m = mount_at(content).unwrap_or_else(|| panic!("{name}: {content} is not a volume"));
    assert!(!is_bind(&m.source) && !m.read_only);
    assert!(
        dockerfile_text_creates(content),
        "the Dockerfile does not create {content} for its user"
    );
    let content_volume = m.source.clone();
    assert_eq!(
        p.get("read_only").and_then(Value::as_bool),
        Some(true),
        "{name}"
    );

    // Published ports: the registry port, and the admin port on loopback.
    let ports: Vec<_> = seq(p, "ports")
        .iter()
        .map(|s| published(as_str(s)))
        .collect();
    let by_container = |port: u16| {
        ports
            .iter()
            .find(|(_, _, c)| *c == port)
            .unwrap_or_else(|| panic!("{name}: container port {port} is not published: {ports:?}"))
    };
    by_container(config.listen.port());
    let (ip, _, _) = by_container(config.admin.unwrap().port());
    assert_eq!(
        ip.as_deref(),
        Some("127.0.0.1"),
        "{name}: admin port published beyond loopback"
    );
    let container_ports: BTreeSet<u16> = ports.iter().map(|(_, _, c)| *c).collect();
    assert_eq!(
        container_ports,
        BTreeSet::from([config.listen.port(), config.admin.unwrap().port()]),
        "{name}: published ports that nothing listens on"
    );

    // The upstream URL names the registry service on its port.
    assert_eq!(
        config.upstream_urls,
        vec!["http://registry:5000".to_owned()]
    );
    let depends_on = depends_on(p);
    assert!(depends_on.contains("registry"), "{name}: {depends_on:?}");
    assert!(text.contains("registry: localhost:5001"));

    ComposeReplica {
        service: name.to_owned(),
        hostname: p.get("hostname").and_then(Value::as_str).map(str::to_owned),
        config,
        ports,
        audit_volume,
        content_volume,
        networks: networks(p),
        depends_on,
    }
}

/// Every Portcullis service of the compose file: the services running the
/// image that `portcullis` runs. Every service that builds an image is one.
fn compose_replicas(compose: &Value) -> Vec<ComposeReplica> {
    let dir = docker_dir();
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("services");
    let declared_volumes: BTreeSet<String> = compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().map(|k| as_str(k).to_owned()).collect())
        .unwrap_or_default();
    let image = str_at(
        compose
            .get("services")
            .and_then(|s| s.get("portcullis"))
            .expect("portcullis service"),
        &["image"],
    );
    let mut replicas = Vec::new();
    for (name, service) in services {
        let name = as_str(name);
        if service.get("image").and_then(Value::as_str) == Some(image) {
            replicas.push(compose_replica(&dir, name, service, &declared_volumes));
        } else {
            assert!(
                service.get("build").is_none(),
                "{name} builds an image but does not run {image}"
            );
        }
    }
    replicas
}

#[test]
fn compose_file_references_existing_files_and_consistent_ports() {
    let compose = compose();
    let services = compose.get("services").expect("services");

    // The upstream: a CNCF distribution registry (listens on 5000 by default).
    let registry = services.get("registry").expect("registry service");
    assert!(str_at(registry, &["image"]).starts_with("registry:2"));

    // Every Portcullis service passes the checks of compose_replica.
    let replicas = compose_replicas(&compose);
    assert!(
        !replicas.is_empty() && replicas.iter().any(|r| r.service == "portcullis"),
        "no portcullis service"
    );

    // The single entry point: `portcullis` on localhost:5000, its admin
    // listener on 127.0.0.1:9090, whatever other replicas run.
    let entry = replicas.iter().find(|r| r.service == "portcullis").unwrap();
    for port in [
        entry.config.listen.port(),
        entry.config.admin.unwrap().port(),
    ] {
        assert!(
            entry.ports.iter().any(|(_, h, c)| *h == port && *c == port),
            "portcullis does not publish {port} on {port}: {:?}",
            entry.ports
        );
    }
    // No two services publish one host port.
    let mut host_ports = BTreeSet::new();
    for r in &replicas {
        for (_, h, _) in &r.ports {
            assert!(host_ports.insert(*h), "host port {h} published twice");
        }
    }

    // The registry is published for pushing on the port the config's
    // canonical name uses (`localhost:5001`).
    let reg_ports: Vec<_> = seq(registry, "ports")
        .iter()
        .map(|s| published(as_str(s)))
        .collect();
    assert!(
        reg_ports.iter().any(|(_, h, c)| *h == 5001 && *c == 5000),
        "{reg_ports:?}"
    );
    for (_, h, _) in &reg_ports {
        assert!(host_ports.insert(*h), "host port {h} published twice");
    }
    // Each replica reaches the registry.
    for r in &replicas {
        assert!(
            !r.networks.is_disjoint(&networks(registry)),
            "{} shares no network with the registry",
            r.service
        );
    }
}

fn dockerfile_text_creates(dir: &str) -> bool {
    dockerfile()
        .text
        .lines()
        .any(|l| l.contains("install -d") && l.contains("65532") && l.contains(dir))
}

// ---------------------------------------------------------------- redis

/// The arguments `redis-server` runs with: the command itself
/// (`[redis-server, --save, "", …]`) or the `redis-server` line of an
/// `sh -c` script, with its quotes removed (`--save ""` → `--save`, ``).
fn redis_server_args(command: &[String]) -> Vec<String> {
    let line: Vec<String> = match command.first().map(String::as_str) {
        Some("redis-server" | "valkey-server") => command.to_vec(),
        Some("sh") => {
            assert_eq!(
                command.get(1).map(String::as_str),
                Some("-c"),
                "{command:?}"
            );
            let script = command.get(2).expect("sh -c SCRIPT");
            let line = script
                .lines()
                .find(|l| l.contains("redis-server") || l.contains("valkey-server"))
                .unwrap_or_else(|| panic!("no redis-server in {script:?}"));
            line.split_whitespace()
                .map(|w| w.trim_matches('"').trim_matches('\'').to_owned())
                .collect()
        }
        _ => panic!("not redis-server: {command:?}"),
    };
    let start = line
        .iter()
        .position(|w| w == "redis-server" || w == "valkey-server")
        .unwrap();
    line[start + 1..].to_vec()
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).map(String::as_str)
}

/// `256mb`, `1gb` (Redis) or `512Mi`, `1Gi` (Kubernetes) → bytes.
fn bytes(size: &str) -> u64 {
    let split = size
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(size.len());
    let (n, unit) = size.split_at(split);
    let n: u64 = n.parse().unwrap_or_else(|e| panic!("{size:?}: {e}"));
    n * match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "ki" => 1 << 10,
        "mb" | "mi" => 1 << 20,
        "gb" | "gi" => 1 << 30,
        other => panic!("{size:?}: unit {other:?}"),
    }
}

/// What every Redis of the deployment files must be: a pinned official
/// image, no persistence, a memory cap. Returns its port and `maxmemory`.
fn assert_redis_server(image: &str, command: &[String], what: &str) -> (u16, u64) {
    let (repo, tag) = image
        .split('@')
        .next()
        .unwrap()
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{what}: image {image} has no tag"));
    assert!(
        repo == "redis" || repo == "valkey/valkey",
        "{what}: image {image}: expected the official redis or valkey/valkey"
    );
    assert!(
        tag.starts_with(|c: char| c.is_ascii_digit()) && tag.split('.').count() >= 3,
        "{what}: image {image} is not pinned to a release (x.y.z)"
    );
    let args = redis_server_args(command);
    assert_eq!(flag(&args, "--save"), Some(""), "{what}: {args:?}");
    assert_eq!(flag(&args, "--appendonly"), Some("no"), "{what}: {args:?}");
    let maxmemory =
        bytes(flag(&args, "--maxmemory").unwrap_or_else(|| panic!("{what}: no --maxmemory")));
    assert!(
        flag(&args, "--maxmemory-policy").is_some_and(|p| p.starts_with("volatile-")),
        "{what}: evict only entries with a TTL, never the policy revision: {args:?}"
    );
    let port = flag(&args, "--port").map_or(6379, |p| p.parse().unwrap());
    (port, maxmemory)
}

#[test]
fn compose_fleet_shares_state_through_redis() {
    let compose = compose();
    let services = compose.get("services").expect("services");
    let replicas = compose_replicas(&compose);
    assert!(replicas.len() >= 2, "compose.yaml runs one replica");

    // More than one replica: each has state.redis, the same server and key
    // prefix (one fleet), and its own name and audit file.
    let redis: Vec<&RedisState> = replicas
        .iter()
        .map(|r| {
            r.config
                .redis
                .as_ref()
                .unwrap_or_else(|| panic!("{} runs in a fleet without state.redis", r.service))
        })
        .collect();
    for r in &redis[1..] {
        assert_eq!(
            (&r.url, &r.key_prefix),
            (&redis[0].url, &redis[0].key_prefix)
        );
    }
    let names: BTreeSet<String> = replicas
        .iter()
        .map(|r| {
            r.config
                .replica
                .clone()
                .or_else(|| r.hostname.clone())
                .unwrap_or_else(|| panic!("{}: no state.replica and no hostname", r.service))
        })
        .collect();
    assert_eq!(names.len(), replicas.len(), "replica names {names:?}");
    let audit: BTreeSet<&str> = replicas.iter().map(|r| r.audit_volume.as_str()).collect();
    assert_eq!(
        audit.len(),
        replicas.len(),
        "replicas share an audit volume"
    );
    let content: BTreeSet<&str> = replicas.iter().map(|r| r.content_volume.as_str()).collect();
    assert_eq!(
        content.len(),
        replicas.len(),
        "replicas share a content store volume (each needs its own)"
    );

    // The Redis service the URL names.
    let url = &redis[0];
    let service = services
        .get(url.host.as_str())
        .unwrap_or_else(|| panic!("state.redis.url {}: no such service", url.url));
    let command: Vec<String> = seq(service, "command")
        .iter()
        .map(|a| as_str(a).to_owned())
        .collect();
    let (port, _) = assert_redis_server(str_at(service, &["image"]), &command, "compose redis");
    assert_eq!(port, url.port, "state.redis.url {} vs its port", url.url);
    let health = seq(
        service.get("healthcheck").expect("redis healthcheck"),
        "test",
    );
    let health: Vec<&str> = health.iter().map(as_str).collect();
    assert!(
        health.contains(&"redis-cli") && health.contains(&"ping"),
        "{health:?}"
    );
    assert!(
        service.get("ports").is_none(),
        "Redis is published: whoever writes to it can admit images"
    );
    assert_eq!(
        service.get("read_only").and_then(Value::as_bool),
        Some(true)
    );
    for r in &replicas {
        assert!(
            r.depends_on.contains(&url.host),
            "{} does not depend on {}",
            r.service,
            url.host
        );
        assert!(
            !r.networks.is_disjoint(&networks(service)),
            "{} shares no network with {}",
            r.service,
            url.host
        );
    }
    // Only the replicas reach it: its networks are theirs alone.
    for (name, other) in services.as_mapping().unwrap() {
        let name = as_str(name);
        if name == url.host || replicas.iter().any(|r| r.service == name) {
            continue;
        }
        assert!(
            networks(other).is_disjoint(&networks(service)),
            "{name} reaches {}",
            url.host
        );
    }
}

// ---------------------------------------------------------- kubernetes

struct K8s {
    /// `(file name, document)` for every manifest.
    docs: Vec<(String, Value)>,
}

impl K8s {
    fn load() -> K8s {
        let dir = docker_dir().join("k8s");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .collect();
        names.sort();
        assert!(!names.is_empty());
        let mut docs = Vec::new();
        for n in names {
            for d in documents(&dir.join(&n)) {
                assert!(
                    d.get("apiVersion").and_then(Value::as_str).is_some(),
                    "{n}: apiVersion"
                );
                assert!(d.get("kind").and_then(Value::as_str).is_some(), "{n}: kind");
                docs.push((n.clone(), d));
            }
        }
        K8s { docs }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|(_, d)| str_at(d, &["kind"]) == kind)
            .map(|(_, d)| d)
            .collect()
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        let v: Vec<_> = self
            .of_kind(kind)
            .into_iter()
            .filter(|d| str_at(d, &["metadata", "name"]) == name)
            .collect();
        assert_eq!(v.len(), 1, "{kind}/{name}");
        v[0]
    }
}

/// Whether every `selector` label is on the pod.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_mapping().expect("selector map");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(as_str(k)) == Some(v))
}

/// A probe's or Service's port (name or number) → container port.
fn resolve_port(port: &Value, named: &BTreeMap<String, u16>) -> u16 {
    match port.as_str() {
        Some(name) => *named
            .get(name)
            .unwrap_or_else(|| panic!("no container port named {name}: {named:?}")),
        None => u16::try_from(as_u64(port)).unwrap(),
    }
}

/// A container's ports: name → number.
fn named_ports(container: &Value) -> BTreeMap<String, u16> {
    seq(container, "ports")
        .iter()
        .map(|p| {
            (
                str_at(p, &["name"]).to_owned(),
                u16::try_from(as_u64(p.get("containerPort").unwrap())).unwrap(),
            )
        })
        .collect()
}

/// A container's command and args, as one list.
fn command_line(container: &Value) -> Vec<String> {
    ["command", "args"]
        .iter()
        .filter_map(|k| container.get(*k).and_then(Value::as_sequence))
        .flatten()
        .map(|a| as_str(a).to_owned())
        .collect()
}

/// The pod of a Deployment: `(its labels, its spec)`, checking that the
/// Deployment's selector selects it.
fn pod_of(deploy: &Value) -> (&Value, &Value) {
    let spec = deploy.get("spec").unwrap();
    let pod = spec.get("template").unwrap();
    let labels = pod.get("metadata").unwrap().get("labels").unwrap();
    assert!(selects(
        spec.get("selector").unwrap().get("matchLabels").unwrap(),
        labels
    ));
    (labels, pod.get("spec").unwrap())
}

/// Checks the hardening every pod here has: non-root, a seccomp profile, a
/// read-only root filesystem, no privilege escalation, no capabilities,
/// memory requests and limits. Returns the container's memory limit.
fn assert_hardened(pod_spec: &Value, container: &Value, what: &str) -> u64 {
    let psc = pod_spec
        .get("securityContext")
        .unwrap_or_else(|| panic!("{what}: pod securityContext"));
    assert_eq!(
        psc.get("runAsNonRoot").and_then(Value::as_bool),
        Some(true),
        "{what}"
    );
    assert_ne!(as_u64(psc.get("runAsUser").unwrap()), 0, "{what}");
    assert_eq!(
        pod_spec
            .get("automountServiceAccountToken")
            .and_then(Value::as_bool),
        Some(false),
        "{what}"
    );
    let csc = container
        .get("securityContext")
        .unwrap_or_else(|| panic!("{what}: container securityContext"));
    assert_eq!(
        csc.get("readOnlyRootFilesystem").and_then(Value::as_bool),
        Some(true),
        "{what}"
    );
    assert_eq!(
        csc.get("allowPrivilegeEscalation").and_then(Value::as_bool),
        Some(false),
        "{what}"
    );
    let dropped = csc
        .get("capabilities")
        .and_then(|c| c.get("drop"))
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("{what}: capabilities.drop"));
    assert!(dropped.iter().any(|c| c.as_str() == Some("ALL")), "{what}");
    for kind in ["requests", "limits"] {
        let r = container.get("resources").and_then(|r| r.get(kind));
        assert!(
            r.is_some_and(|r| r.get("memory").is_some()),
            "{what}: resources.{kind}.memory"
        );
    }
    bytes(str_at(container, &["resources", "limits", "memory"]))
}

/// The volume mount of `container` that `path` is on (the longest mount
/// path it is under), and the pod volume it mounts.
fn mount_of<'a>(pod_spec: &'a Value, container: &'a Value, path: &str) -> (&'a Value, &'a Value) {
    let mount = seq(container, "volumeMounts")
        .iter()
        .filter(|m| Path::new(path).starts_with(str_at(m, &["mountPath"])))
        .max_by_key(|m| str_at(m, &["mountPath"]).len())
        .unwrap_or_else(|| panic!("{path} is on no volume"));
    let name = str_at(mount, &["name"]);
    let volume = seq(pod_spec, "volumes")
        .iter()
        .find(|v| str_at(v, &["name"]) == name)
        .unwrap_or_else(|| panic!("no volume {name}"));
    (mount, volume)
}

/// The Portcullis Deployment and the configuration it runs.
struct Portcullis<'a> {
    replicas: u64,
    labels: &'a Value,
    pod_spec: &'a Value,
    container: &'a Value,
    /// Container port name → number.
    named: BTreeMap<String, u16>,
    /// The ConfigMap's data and the key `--config` names in it.
    data: BTreeMap<String, String>,
    key: String,
    config: PortcullisConfig,
}

impl K8s {
    /// The Deployment `portcullis`, its one container, and the config its
    /// `--config` names: a key of the ConfigMap mounted there, read-only.
    fn portcullis(&self) -> Portcullis<'_> {
        let deploy = self.one("Deployment", "portcullis");
        let replicas = as_u64(deploy.get("spec").unwrap().get("replicas").unwrap());
        let (labels, pod_spec) = pod_of(deploy);
        let containers = seq(pod_spec, "containers");
        assert_eq!(containers.len(), 1);
        let container = &containers[0];
        let args = seq(container, "args");
        assert_eq!(as_str(&args[0]), "serve");
        let config_path = Path::new(arg_after(args, "--config"));
        let config_mount = seq(container, "volumeMounts")
            .iter()
            .find(|m| Path::new(str_at(m, &["mountPath"])) == config_path.parent().unwrap())
            .expect("a volume mounted where --config points");
        assert_eq!(
            config_mount.get("readOnly").and_then(Value::as_bool),
            Some(true)
        );
        let (_, volume) = mount_of(pod_spec, container, config_path.to_str().unwrap());
        let cm_name = str_at(volume, &["configMap", "name"]);
        let cm = self.one("ConfigMap", cm_name);
        let data: BTreeMap<String, String> = cm
            .get("data")
            .and_then(Value::as_mapping)
            .unwrap()
            .iter()
            .map(|(k, v)| (as_str(k).to_owned(), as_str(v).to_owned()))
            .collect();
        let key = config_path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let text = data
            .get(&key)
            .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no {key}"));
        let config = parse_config(text);
        Portcullis {
            replicas,
            labels,
            pod_spec,
            container,
            named: named_ports(container),
            data,
            key,
            config,
        }
    }
}

#[test]
fn k8s_manifests_parse_and_agree_with_the_configmap() {
    let k = K8s::load();
    let dir = docker_dir().join("k8s");

    // kustomization.yaml lists exactly the other manifests.
    let kustomization = k.of_kind("Kustomization");
    assert_eq!(kustomization.len(), 1);
    let listed: BTreeSet<String> = seq(kustomization[0], "resources")
        .iter()
        .map(|r| as_str(r).to_owned())
        .collect();
    let files: BTreeSet<String> = k
        .docs
        .iter()
        .filter(|(_, d)| str_at(d, &["kind"]) != "Kustomization")
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(
        listed, files,
        "kustomization resources vs files in docker/k8s"
    );
    for f in &listed {
        assert!(dir.join(f).is_file());
    }

    // One namespace, defined here.
    let ns = str_at(k.one("Namespace", "portcullis"), &["metadata", "name"]);
    for (n, d) in &k.docs {
        let kind = str_at(d, &["kind"]);
        if kind != "Namespace" && kind != "Kustomization" {
            assert_eq!(str_at(d, &["metadata", "namespace"]), ns, "{n}: {kind}");
        }
    }

    // The Deployment.
    let p = k.portcullis();
    let replicas = p.replicas;
    assert!(replicas >= 3, "replicas {replicas}");
    let (labels, pod_spec, c) = (p.labels, p.pod_spec, p.container);
    assert_hardened(pod_spec, c, "deployment/portcullis");
    let psc = pod_spec.get("securityContext").unwrap();
    assert_eq!(as_u64(psc.get("runAsUser").unwrap()), dockerfile().uid);

    // The config the ConfigMap holds.
    let mounts = seq(c, "volumeMounts");
    let config = &p.config;
    assert_listens_on_all_interfaces(config, "the ConfigMap's portcullis.yaml");
    for rel in &config.relative_files {
        assert!(p.data.contains_key(rel), "{rel} is not in the ConfigMap");
    }
    // Absolute paths are secrets, on read-only Secret volumes (the
    // ConfigMap volume cannot hold them); lay them out beside the config
    // for `portcullis check`.
    let mut files = p.data.clone();
    let mut text = files[&p.key].clone();
    for abs in &config.absolute_files {
        let (mount, volume) = mount_of(pod_spec, c, abs);
        assert!(
            volume.get("secret").is_some(),
            "{abs} is not on a Secret volume"
        );
        assert_eq!(
            mount.get("readOnly").and_then(Value::as_bool),
            Some(true),
            "{abs}"
        );
        let rel = format!("secrets{abs}");
        text = text.replace(abs.as_str(), &rel);
        files.insert(rel, "not-the-real-secret\n".to_owned());
    }
    if let Some(audit) = &config.audit_path {
        // The root filesystem is read-only: the audit file needs a volume.
        assert!(
            mounts
                .iter()
                .any(|m| audit.starts_with(str_at(m, &["mountPath"]))
                    && m.get("readOnly").and_then(Value::as_bool) != Some(true)),
            "audit.path {audit} is not on a writable volume"
        );
    }
    // The attestation store is the `attestation-store` volume: optional,
    // read-only, the same content in every replica.
    let store_mount = mounts
        .iter()
        .find(|m| str_at(m, &["name"]) == "attestation-store")
        .expect("attestation-store mount");
    assert_eq!(
        store_mount.get("readOnly").and_then(Value::as_bool),
        Some(true)
    );
    let (_, store_volume) = mount_of(pod_spec, c, str_at(store_mount, &["mountPath"]));
    let optional = store_volume
        .get("configMap")
        .and_then(|c| c.get("optional"))
        .and_then(Value::as_bool);
    assert_eq!(
        optional,
        Some(true),
        "the attestation store must be optional"
    );
    if let Some(store) = &config.attestation_store {
        assert_eq!(
            store.as_str(),
            str_at(store_mount, &["mountPath"]),
            "attestationStore.path is not the attestation-store volume"
        );
        // `check` does not open it, but a temp dir is where it belongs.
        text = text.replace(store.as_str(), "attestations");
    }
    if let Some(content) = &config.content_store {
        // The content store: writable, and a volume each pod has to itself
        // (an emptyDir; a shared claim would put two replicas on one store).
        let (mount, volume) = mount_of(pod_spec, c, content);
        assert_ne!(
            mount.get("readOnly").and_then(Value::as_bool),
            Some(true),
            "cache.content.path {content} is read-only"
        );
        assert!(
            volume.get("emptyDir").is_some(),
            "cache.content.path {content} is not on a per-pod emptyDir: {volume:?}"
        );
    }
    files.insert(p.key.clone(), text);
    let summary = portcullis_check(&files, &p.key, "the ConfigMap's portcullis.yaml");
    assert!(summary.contains("attestor built-by-ci"), "{summary}");
    let grace = as_u64(pod_spec.get("terminationGracePeriodSeconds").unwrap());
    assert!(
        grace > config.shutdown_secs,
        "grace {grace}s <= timeouts.shutdown"
    );

    // Container ports = the config's listeners.
    let named = &p.named;
    let listen = config.listen.port();
    let admin = config.admin.unwrap().port();
    assert_eq!(
        named,
        &BTreeMap::from([("admin".to_owned(), admin), ("registry".to_owned(), listen)])
    );

    // Probes on the admin port.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = c.get(probe).and_then(|p| p.get("httpGet")).expect(probe);
        assert_eq!(str_at(get, &["path"]), path, "{probe}");
        assert_eq!(
            resolve_port(get.get("port").unwrap(), named),
            admin,
            "{probe} port"
        );
    }

    // Services: the registry port and the admin port, separately.
    let svc_port = |name: &str| {
        let svc = k.one("Service", name);
        assert!(
            selects(svc.get("spec").unwrap().get("selector").unwrap(), labels),
            "{name}"
        );
        let ports = seq(svc.get("spec").unwrap(), "ports");
        assert_eq!(ports.len(), 1, "Service {name} exposes one port");
        resolve_port(ports[0].get("targetPort").unwrap(), named)
    };
    assert_eq!(svc_port("portcullis"), listen);
    assert_eq!(svc_port("portcullis-admin"), admin);

    // The disruption budget keeps replicas serving: it selects the
    // Portcullis pods and lets at least one go, never all.
    let pdb = k.one("PodDisruptionBudget", "portcullis");
    let pdb_spec = pdb.get("spec").unwrap();
    assert!(selects(
        pdb_spec
            .get("selector")
            .unwrap()
            .get("matchLabels")
            .unwrap(),
        labels
    ));
    match (pdb_spec.get("minAvailable"), pdb_spec.get("maxUnavailable")) {
        (Some(min), None) => assert!(as_u64(min) < replicas),
        (None, Some(max)) => assert!((1..replicas).contains(&as_u64(max))),
        other => panic!("PodDisruptionBudget: one of minAvailable, maxUnavailable: {other:?}"),
    }

    // The scaling note.
    let note = read(&dir.join("README.md"));
    for words in ["horizontally", "per replica", "read-only"] {
        assert!(note.contains(words), "docker/k8s/README.md lacks {words:?}");
    }
}

#[test]
fn k8s_fleet_shares_state_through_redis() {
    let k = K8s::load();
    let p = k.portcullis();
    let ns = str_at(k.one("Namespace", "portcullis"), &["metadata", "name"]);

    // More than one replica: the config shares state through Redis.
    if p.replicas < 2 {
        return;
    }
    let redis = p
        .config
        .redis
        .as_ref()
        .expect("the Deployment runs more than one replica without state.redis");

    // The URL names a Service of this namespace, on its port.
    let mut host = redis.host.split('.');
    let svc_name = host.next().unwrap();
    if let Some(svc_ns) = host.next() {
        assert_eq!(svc_ns, ns, "state.redis.url {}: namespace", redis.url);
    }
    let svc = k.one("Service", svc_name);
    let svc_spec = svc.get("spec").unwrap();
    let selector = svc_spec.get("selector").unwrap();
    assert!(
        !selects(selector, p.labels),
        "Service {svc_name} selects the Portcullis pods"
    );
    let ports = seq(svc_spec, "ports");
    let svc_port = ports
        .iter()
        .find(|sp| as_u64(sp.get("port").unwrap()) == u64::from(redis.port))
        .unwrap_or_else(|| {
            panic!(
                "state.redis.url {}: Service {svc_name} has no port {}",
                redis.url, redis.port
            )
        });

    // The Deployment behind it: one Redis, replaced (never two at once).
    let deploys: Vec<&Value> = k
        .of_kind("Deployment")
        .into_iter()
        .chain(k.of_kind("StatefulSet"))
        .filter(|d| selects(selector, pod_of(d).0))
        .collect();
    assert_eq!(deploys.len(), 1, "Service {svc_name} selects one workload");
    let deploy = deploys[0];
    let spec = deploy.get("spec").unwrap();
    assert_eq!(as_u64(spec.get("replicas").unwrap()), 1, "one Redis");
    if str_at(deploy, &["kind"]) == "Deployment" {
        assert_eq!(str_at(spec, &["strategy", "type"]), "Recreate");
    }
    let (redis_labels, pod_spec) = pod_of(deploy);
    for name in ["portcullis", "portcullis-admin"] {
        let s = k.one("Service", name);
        assert!(
            !selects(
                s.get("spec").unwrap().get("selector").unwrap(),
                redis_labels
            ),
            "Service {name} selects the Redis pods"
        );
    }
    let containers = seq(pod_spec, "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let limit = assert_hardened(pod_spec, c, "redis");
    let command = command_line(c);
    let (port, maxmemory) = assert_redis_server(str_at(c, &["image"]), &command, "redis");
    assert!(
        maxmemory < limit,
        "redis --maxmemory {maxmemory} is not under its memory limit {limit}"
    );
    let named = named_ports(c);
    assert_eq!(
        resolve_port(svc_port.get("targetPort").unwrap(), &named),
        port,
        "Service {svc_name} targets another port than redis-server's"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert!(c.get(probe).is_some(), "redis {probe}");
    }

    // The password: a Secret both sides mount, which Redis requires.
    if let Some(file) = &redis.password_file {
        let (_, volume) = mount_of(p.pod_spec, p.container, file);
        let secret = str_at(volume, &["secret", "secretName"]);
        let redis_mount = seq(c, "volumeMounts")
            .iter()
            .find(|m| {
                let (_, v) = mount_of(pod_spec, c, str_at(m, &["mountPath"]));
                v.get("secret")
                    .and_then(|s| s.get("secretName"))
                    .and_then(Value::as_str)
                    == Some(secret)
            })
            .unwrap_or_else(|| panic!("Redis does not mount the Secret {secret}"));
        // `requirepass $(cat FILE)` on redis-server's standard input, or
        // `--requirepass` on its command line.
        let dir = str_at(redis_mount, &["mountPath"]);
        let script = command.join("\n");
        assert!(
            script.lines().any(|l| {
                let l = l.trim_start();
                (l.starts_with("requirepass ") || l.starts_with("--requirepass "))
                    && l.contains(dir)
            }),
            "Redis does not require the password of Secret {secret} (mounted at {dir}): {script}"
        );
    }

    // Only the Portcullis pods reach it, on its port.
    let policies: Vec<&Value> = k
        .of_kind("NetworkPolicy")
        .into_iter()
        .filter(|np| {
            selects(
                np.get("spec")
                    .unwrap()
                    .get("podSelector")
                    .unwrap()
                    .get("matchLabels")
                    .unwrap(),
                redis_labels,
            )
        })
        .collect();
    assert_eq!(policies.len(), 1, "one NetworkPolicy for Redis");
    let np = policies[0].get("spec").unwrap();
    assert!(seq(np, "policyTypes")
        .iter()
        .any(|t| t.as_str() == Some("Ingress")));
    for rule in seq(np, "ingress") {
        for from in seq(rule, "from") {
            let keys: Vec<&str> = from.as_mapping().unwrap().keys().map(as_str).collect();
            assert_eq!(
                keys,
                ["podSelector"],
                "a peer other than pods of this namespace"
            );
            assert!(selects(
                from.get("podSelector").unwrap().get("matchLabels").unwrap(),
                p.labels
            ));
            assert!(!selects(
                from.get("podSelector").unwrap().get("matchLabels").unwrap(),
                redis_labels
            ));
        }
        for np_port in seq(rule, "ports") {
            assert_eq!(resolve_port(np_port.get("port").unwrap(), &named), port);
        }
    }

    // The budget is about the Portcullis pods, not Redis.
    let pdb = k.one("PodDisruptionBudget", "portcullis");
    let pdb_selector = pdb
        .get("spec")
        .unwrap()
        .get("selector")
        .unwrap()
        .get("matchLabels")
        .unwrap();
    assert!(selects(pdb_selector, p.labels));
    assert!(!selects(pdb_selector, redis_labels));

    // The README describes the fleet as it is.
    let note = read(&docker_dir().join("k8s/README.md"));
    let start = note.find("## Scale-out").expect("a \"Scale-out\" section");
    let section = &note[start..];
    for words in [
        "state.redis",
        "not share",
        "fails closed",
        "/readyz",
        "portcullis_redis_errors_total",
        "portcullis_redis_fallbacks_total",
        "audit",
        "/metrics",
        "attestation store",
        "pdb.yaml",
        "networkpolicy.yaml",
        "passwordFile",
    ] {
        assert!(section.contains(words), "\"Scale-out\" lacks {words:?}");
    }
    for stale in ["roadmap", "Nothing has to be shared"] {
        assert!(
            !note.contains(stale),
            "docker/k8s/README.md still says {stale:?}"
        );
    }
}

// ----------------------------------------------------- runtime configs

/// Config lines (no comments, no blank lines) of a documented runtime file.
fn config_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect()
}

#[test]
fn readme_shows_the_tested_runtime_configs() {
    let readme = read(&root().join("README.md"));
    let start = readme
        .find("## Pointing runtimes at Portcullis")
        .expect("README section \"Pointing runtimes at Portcullis\"");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let runtimes = docker_dir().join("runtimes");
    for rel in [
        "containers/registries.conf.d/portcullis.conf",
        "containerd/certs.d/registry.example.com/hosts.toml",
        "containerd/certs.d/docker.io/hosts.toml",
        "docker/daemon.json",
    ] {
        let text = read(&runtimes.join(rel));
        let lines = config_lines(&text);
        assert!(!lines.is_empty(), "{rel}");
        // The file's config lines appear in the section, in order.
        let block = lines.join("\n");
        let section_lines = config_lines(section).join("\n");
        assert!(
            section_lines.contains(&block),
            "README \"Pointing runtimes at Portcullis\" does not show docker/runtimes/{rel}:\n{block}"
        );
    }
    // docker's daemon.json is valid JSON naming the proxy as a mirror and
    // as an insecure (plain HTTP) registry.
    let daemon: serde_json::Value =
        serde_json::from_str(&read(&runtimes.join("docker/daemon.json"))).unwrap();
    assert_eq!(
        daemon["registry-mirrors"][0],
        "http://portcullis.example.com:5000"
    );
    assert_eq!(
        daemon["insecure-registries"][0],
        "portcullis.example.com:5000"
    );
}
