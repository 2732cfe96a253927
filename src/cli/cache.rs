//! `portcullis cache …`: the content store (`cache.content`) seen and
//! tended from the command line.
//!
//! `ls`, `du`, `gc` and `purge` work on the store's directory, also while
//! a Portcullis process serves from it (see [`crate::store::inventory`]);
//! `gc` evicts to `maxSize` and empties `tmp/` only when no process holds
//! the store. `warm` pulls images through a running Portcullis, so its
//! store (and its verdicts) are filled by the same checks a runtime's pull
//! goes through.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;

use super::image::{ImageRef, ACCEPT_ALL};
use super::registry::{registry_client, RegistryOptions};
use super::{CliError, Exit, Outcome};
use crate::config::cache::ContentConfig;
use crate::oci::manifest::{read as read_manifest, MAX_MANIFEST_BYTES};
use crate::oci::Digest;
use crate::store::inventory::{self, Inventory};
use crate::store::small::Answer;
use crate::store::ContentStore;
use crate::upstream::Upstream;

/// Where the store is: `--store`, or the configuration's `cache.content`.
pub struct StoreLocation {
    pub config: Option<PathBuf>,
    pub store: Option<PathBuf>,
}

impl StoreLocation {
    fn resolve(&self) -> Result<ContentConfig, CliError> {
        let configured = match (&self.config, &self.store) {
            (_, Some(_)) => None,
            (config, None) => super::configuration(config.as_deref())?
                .config
                .cache
                .content
                .clone(),
        };
        match (&self.store, configured) {
            (Some(path), _) => Ok(ContentConfig {
                path: path.clone(),
                max_size: u64::MAX,
                verify_on_read: false,
            }),
            (None, Some(content)) => Ok(content),
            (None, None) => Err(CliError::error(
                "the configuration has no content store (cache.content); give --config or --store",
            )),
        }
    }
}

fn inventory(root: &Path) -> Result<Inventory, CliError> {
    Inventory::read(root)
        .map_err(|e| CliError::error(format!("cannot read the store at {}: {e}", root.display())))
}

/// `cache ls`: the images (tags) the store answers for, and with `blobs`
/// every blob.
pub fn run_ls(location: &StoreLocation, blobs: bool) -> Outcome {
    let content = location.resolve()?;
    let inventory = inventory(&content.path)?;
    let mut out = String::new();
    for r in inventory.refs.iter().filter(|r| r.kind == "manifests") {
        let Some(Answer::Found { digest, .. }) = &r.answer else {
            continue;
        };
        if r.name.contains(':') {
            continue; // the same manifest known by its digest
        }
        let state = if inventory.holds(digest) {
            "stored"
        } else {
            "gone (evicted)"
        };
        out.push_str(&format!(
            "{}/{}:{}\t{digest}\t{state}\n",
            r.registry, r.repository, r.name
        ));
    }
    if blobs {
        for b in &inventory.blobs {
            out.push_str(&format!(
                "{}\t{}\tlast used {}\n",
                b.digest,
                human(b.size),
                ago(b.used)
            ));
        }
    }
    out.push_str(&format!(
        "{} blobs, {} in {}\n",
        inventory.blobs.len(),
        human(inventory.stored_bytes()),
        content.path.display()
    ));
    print!("{out}");
    Ok(Exit::Ok)
}

/// `cache du`: what the store takes, against `maxSize`.
pub fn run_du(location: &StoreLocation) -> Outcome {
    let content = location.resolve()?;
    let inventory = inventory(&content.path)?;
    let stored = inventory.stored_bytes();
    let limit = if content.max_size == u64::MAX {
        String::new()
    } else {
        format!(
            " of maxSize {} ({:.1}%)",
            human(content.max_size),
            stored as f64 * 100.0 / content.max_size as f64
        )
    };
    println!(
        "{}\t{} blobs{limit}\n{}\tdownloads in progress (tmp/)\n{} tags and digests answered",
        human(stored),
        inventory.blobs.len(),
        human(inventory.tmp_bytes),
        inventory
            .refs
            .iter()
            .filter(|r| r.kind == "manifests")
            .count()
    );
    Ok(Exit::Ok)
}

/// `cache gc`: evicts to `maxSize` and empties `tmp/` (when no process
/// holds the store), removes kept answers whose manifest is gone, and with
/// `verify` hashes every blob again, removing those that no longer match
/// (exit 1 if there were any).
pub fn run_gc(location: &StoreLocation, verify: bool) -> Outcome {
    let content = location.resolve()?;
    let root = content.path.clone();
    if content.max_size != u64::MAX {
        match ContentStore::open(&content) {
            Ok(store) => {
                let evicted = store
                    .stats
                    .evictions
                    .load(std::sync::atomic::Ordering::Relaxed);
                println!("evicted {evicted} blobs to stay under maxSize; tmp/ emptied");
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                println!("a running Portcullis holds the store: it evicts and empties tmp/ itself")
            }
            Err(e) => {
                return Err(CliError::error(format!(
                    "cannot open the store at {}: {e}",
                    root.display()
                )))
            }
        }
    }
    let inventory = inventory(&root)?;
    let mut dangling = 0;
    for r in &inventory.refs {
        if let Some(Answer::Found { digest, .. }) = &r.answer {
            if !inventory.holds(digest) && std::fs::remove_file(&r.path).is_ok() {
                dangling += 1;
            }
        }
    }
    println!("removed {dangling} kept answers whose content is gone");
    if !verify {
        return Ok(Exit::Ok);
    }
    let mut corrupt = 0;
    let mut checked = 0u64;
    for blob in &inventory.blobs {
        match inventory::blob_matches(&root, &blob.digest) {
            Ok(true) => checked += blob.size,
            Ok(false) => {
                corrupt += 1;
                let _ = inventory::remove_blob(&root, &blob.digest);
                eprintln!(
                    "corrupt: {} no longer matches its digest: removed",
                    blob.digest
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // evicted meanwhile
            Err(e) => return Err(CliError::error(format!("cannot read {}: {e}", blob.digest))),
        }
    }
    println!(
        "verified {} blobs ({}): {corrupt} corrupt",
        inventory.blobs.len(),
        human(checked)
    );
    Ok(if corrupt == 0 { Exit::Ok } else { Exit::Denied })
}

/// `cache purge <ref>...`: removes each image (fully qualified at its
/// upstream, as `verify` takes it) and what it references.
pub fn run_purge(location: &StoreLocation, references: &[String]) -> Outcome {
    let content = location.resolve()?;
    for reference in references {
        let image = ImageRef::parse(reference).map_err(CliError::error)?;
        let purged = inventory::purge(
            &content.path,
            &image.registry,
            &image.repository,
            &image.reference,
        )
        .map_err(|e| CliError::error(format!("purging {reference}: {e}")))?;
        if purged.blobs == 0 && purged.answers == 0 {
            println!("{reference}: not in the store");
        } else {
            println!(
                "{reference}: removed {} blobs ({}) and {} kept answers",
                purged.blobs,
                human(purged.bytes),
                purged.answers
            );
        }
    }
    Ok(Exit::Ok)
}

/// `cache warm <ref>...`: pulls each image (`proxy-host[:port]/name[:tag|@digest]`,
/// as a runtime names it through Portcullis) — its manifests and every
/// blob, for the `platforms` given (all without) — reading and dropping
/// the bytes, so the proxy verifies it and stores it. Exit 1 if the proxy
/// refused one (its policy denies it), 2 if one could not be pulled.
pub fn run_warm(references: &[String], platforms: &[String], options: &RegistryOptions) -> Outcome {
    let mut worst = Exit::Ok;
    super::runtime()?.block_on(async {
        for reference in references {
            let progress = Progress::new(reference);
            match warm(reference, platforms, options, &progress).await {
                Ok(pulled) => progress.done(&pulled),
                Err(Warm::Refused(message)) => {
                    progress.clear();
                    eprintln!("{reference}: refused: {message}");
                    if worst == Exit::Ok {
                        worst = Exit::Denied;
                    }
                }
                Err(Warm::Failed(message)) => {
                    progress.clear();
                    eprintln!("{reference}: {message}");
                    worst = Exit::Error;
                }
            }
        }
    });
    match worst {
        Exit::Ok => Ok(Exit::Ok),
        Exit::Denied => Err(CliError::invalid("the proxy refused some images")),
        Exit::Error => Err(CliError::error("some images could not be pulled")),
    }
}

/// Why an image could not be warmed.
enum Warm {
    /// The proxy answered `403` (its policy denies) with this message.
    Refused(String),
    Failed(String),
}

/// What warming an image pulled.
#[derive(Default)]
struct Pulled {
    manifests: u64,
    blobs: u64,
    bytes: u64,
}

async fn warm(
    reference: &str,
    platforms: &[String],
    options: &RegistryOptions,
    progress: &Progress,
) -> Result<Pulled, Warm> {
    let image = ImageRef::parse(reference).map_err(Warm::Failed)?;
    let proxy = registry_client(&image.registry, options).map_err(Warm::Failed)?;
    let repo = image.repository.as_str();
    let mut pulled = Pulled::default();
    let mut manifests = vec![image.reference.to_string()];
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    while let Some(name) = manifests.pop() {
        let (bytes, content_type) = get(&proxy, repo, "manifests", &name).await?;
        pulled.manifests += 1;
        let reading = read_manifest(&bytes, &content_type)
            .map_err(|e| Warm::Failed(format!("{repo}@{name}: {e}")))?;
        let wanted = platform_children(&bytes, platforms);
        for child in reading.children {
            if wanted.as_ref().is_none_or(|w| w.contains(&child.digest)) {
                manifests.push(child.digest.to_string());
            }
        }
        for d in reading.config.into_iter().chain(reading.layers) {
            if !blobs.iter().any(|(b, _)| *b == d.digest) {
                blobs.push((d.digest, d.size));
            }
        }
    }
    progress.total(blobs.iter().map(|(_, size)| size).sum());
    for (digest, size) in blobs {
        let read = pull_blob(&proxy, repo, &digest, progress).await?;
        if read != size {
            return Err(Warm::Failed(format!(
                "{digest}: {read} bytes, the manifest says {size}"
            )));
        }
        pulled.blobs += 1;
        pulled.bytes += read;
        progress.blob_done(&digest, read);
    }
    Ok(pulled)
}

/// The children of an index for `platforms` (`os/arch[/variant]`), or
/// `None` for all.
fn platform_children(bytes: &[u8], platforms: &[String]) -> Option<Vec<Digest>> {
    if platforms.is_empty() {
        return None;
    }
    let index: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let children = index.get("manifests")?.as_array()?;
    Some(
        children
            .iter()
            .filter(|m| {
                let p = &m["platform"];
                let name = [&p["os"], &p["architecture"], &p["variant"]]
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join("/");
                platforms
                    .iter()
                    .any(|want| name == *want || name.starts_with(&format!("{want}/")))
            })
            .filter_map(|m| m["digest"].as_str()?.parse().ok())
            .collect(),
    )
}

/// GETs a manifest through the proxy: its bytes and content type.
async fn get(
    proxy: &Upstream,
    repo: &str,
    kind: &str,
    name: &str,
) -> Result<(bytes::Bytes, String), Warm> {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(ACCEPT_ALL));
    let what = format!("{repo}/{kind}/{name}");
    let response = proxy
        .fetch(Method::GET, &format!("/v2/{what}"), repo, &headers)
        .await
        .map_err(|e| Warm::Failed(format!("{what}: {e}")))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = crate::upstream::read_bounded(response.into_body(), MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| Warm::Failed(format!("{what}: {e}")))?;
    refused(status, &bytes, &what)?;
    Ok((bytes, content_type))
}

/// A refusal (`403`: the policy denies) or failure in a proxy's answer,
/// with its OCI message.
fn refused(status: StatusCode, body: &[u8], what: &str) -> Result<(), Warm> {
    if status == StatusCode::OK {
        return Ok(());
    }
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let text = format!("{what}: {status}: {message}");
    Err(if status == StatusCode::FORBIDDEN {
        Warm::Refused(text)
    } else {
        Warm::Failed(text)
    })
}

/// GETs a blob through the proxy and drops its bytes; how many there were.
async fn pull_blob(
    proxy: &Upstream,
    repo: &str,
    digest: &Digest,
    progress: &Progress,
) -> Result<u64, Warm> {
    let what = format!("{repo}/blobs/{digest}");
    let response = proxy
        .fetch(Method::GET, &format!("/v2/{what}"), repo, &HeaderMap::new())
        .await
        .map_err(|e| Warm::Failed(format!("{what}: {e}")))?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = crate::upstream::read_bounded(response.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        refused(status, &body, &what)?;
        return Err(Warm::Failed(format!("{what}: {status}")));
    }
    let mut body = response.into_body();
    let mut read = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Warm::Failed(format!("{what}: cut off: {e}")))?;
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
            progress.advance(data.len() as u64);
        }
    }
    Ok(read)
}

/// Progress of one image: a bar redrawn in place on a terminal, a line per
/// blob otherwise.
struct Progress {
    reference: String,
    terminal: bool,
    state: std::sync::Mutex<(u64, u64, Instant)>,
}

impl Progress {
    fn new(reference: &str) -> Progress {
        Progress {
            reference: reference.to_owned(),
            terminal: std::io::stderr().is_terminal(),
            state: std::sync::Mutex::new((0, 0, Instant::now())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, u64, Instant)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn total(&self, total: u64) {
        self.lock().1 = total;
        self.draw(true);
    }

    fn advance(&self, n: u64) {
        self.lock().0 += n;
        self.draw(false);
    }

    fn draw(&self, force: bool) {
        if !self.terminal {
            return;
        }
        let mut state = self.lock();
        if !force && state.2.elapsed() < Duration::from_millis(100) {
            return;
        }
        state.2 = Instant::now();
        let (done, total) = (state.0, state.1.max(1));
        let width = 30;
        let filled = ((done.min(total) * width) / total) as usize;
        eprint!(
            "\r{} [{}{}] {}/{}\x1b[K",
            self.reference,
            "#".repeat(filled),
            ".".repeat(width as usize - filled),
            human(done),
            human(state.1)
        );
        let _ = std::io::stderr().flush();
    }

    fn blob_done(&self, digest: &Digest, size: u64) {
        if !self.terminal {
            eprintln!("{}: {digest} {}", self.reference, human(size));
        }
    }

    fn clear(&self) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
    }

    fn done(&self, pulled: &Pulled) {
        self.clear();
        println!(
            "{}: warmed {} manifests, {} blobs, {}",
            self.reference,
            pulled.manifests,
            pulled.blobs,
            human(pulled.bytes)
        );
    }
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `3m ago`, for a file's time.
fn ago(time: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(time)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(256 << 20), "256.0 MiB");
    }

    #[test]
    fn platforms_pick_index_children() {
        let index = br#"{"manifests":[
            {"digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","platform":{"os":"linux","architecture":"amd64"}},
            {"digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","platform":{"os":"linux","architecture":"arm","variant":"v7"}}]}"#;
        assert_eq!(platform_children(index, &[]), None);
        let arm = platform_children(index, &["linux/arm".into()]).unwrap();
        assert_eq!(arm.len(), 1);
        assert!(arm[0].hex().starts_with('b'));
        let amd = platform_children(index, &["linux/amd64".into()]).unwrap();
        assert!(amd[0].hex().starts_with('a'));
    }
}
