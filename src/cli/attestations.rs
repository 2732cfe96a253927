//! `portcullis attestations import|list`: putting evidence into the local
//! attestation store, and showing every piece of evidence found for an
//! image.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{CliError, Exit, Outcome};
use crate::app::Prepared;
use crate::config::Config;
use crate::oci::Digest;
use crate::policy::{Check, Evidence, Policy, SignedIdentity};
use crate::verify::formats::binauthz::{self, Occurrence};
use crate::verify::formats::simple_signing::{self, Subject};

/// Runs `portcullis attestations import`: all or nothing; exit 1 when an
/// occurrence is invalid, 2 when the store, the configuration or the file
/// cannot be used.
pub fn run_import(file: &Path, config: Option<&Path>, store: Option<&Path>) -> Outcome {
    let prepared = super::configuration(config)?;
    let dir = store_dir(Some(&prepared.config), store).map_err(CliError::error)?;
    let policy = prepared.policy;
    let input = std::fs::read(file)
        .map_err(|e| CliError::error(format!("cannot read {}: {e}", file.display())))?;
    let done = import(&policy, &input, &dir)?;
    println!(
        "imported {} occurrence(s) into {} for {}",
        done.files.len(),
        dir.display(),
        done.digests.join(", ")
    );
    Ok(Exit::Ok)
}

/// Runs `portcullis attestations list`: the listing as text, or as JSON
/// with `json`.
pub fn run_list(reference: &str, config: Option<&Path>, json: bool) -> Outcome {
    let prepared = super::configuration(config)?;
    let (image, listed) = super::block_on(list(prepared, reference))?;
    if json {
        let doc = serde_json::json!({"image": image, "evidence": listed});
        println!("{doc:#}");
    } else {
        print!("{}", render(&image, &listed));
    }
    Ok(Exit::Ok)
}

/// The store directory: `--store`, else the config's `attestationStore`.
pub fn store_dir(config: Option<&Config>, store: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(dir) = store {
        return Ok(dir.to_owned());
    }
    config
        .and_then(|c| c.attestation_store.as_ref())
        .map(|s| s.path.clone())
        .ok_or_else(|| {
            "no attestation store: set attestationStore.path in the config or pass --store".into()
        })
}

/// What an import wrote.
#[derive(Debug)]
pub struct Imported {
    /// Files written (or already present with the same content).
    pub files: Vec<PathBuf>,
    /// The digests the occurrences attest, each once.
    pub digests: Vec<String>,
}

/// Validates every BinAuthz occurrence in `input` (JSON as `gcloud
/// container binauthz attestations list --format=json` prints it, or the
/// YAML of its default format) and copies them into `dir`, one file per
/// occurrence. All or nothing: one invalid occurrence and nothing is
/// written.
///
/// Valid means: it parses, its payload names a digest, its `resourceUri`
/// agrees with the payload, and its signature verifies with the key of an
/// attestor in `policy` whose key id is the occurrence's `publicKeyId`.
///
/// An input that is not occurrences, or holds an invalid one, is
/// [`CliError::invalid`]; failing to write the store is [`CliError::error`].
pub fn import(policy: &Policy, input: &[u8], dir: &Path) -> Result<Imported, CliError> {
    let values = split_occurrences(input).map_err(CliError::invalid)?;
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let label = match value.get("name").and_then(|n| n.as_str()) {
            Some(name) => format!("occurrence {} ({name})", i + 1),
            None => format!("occurrence {}", i + 1),
        };
        match validate(policy, value) {
            Ok(digest) => checked.push((digest, value)),
            Err(reason) => problems.push(format!("{label}: {reason}")),
        }
    }
    if !problems.is_empty() {
        return Err(CliError::invalid(format!(
            "nothing imported; {} of {} occurrences are invalid:\n  {}",
            problems.len(),
            values.len(),
            problems.join("\n  ")
        )));
    }
    let target = dir.join("binauthz");
    std::fs::create_dir_all(&target)
        .map_err(|e| CliError::error(format!("{}: {e}", target.display())))?;
    let mut files = Vec::new();
    let mut digests: Vec<String> = Vec::new();
    for (digest, value) in checked {
        let mut text =
            serde_json::to_vec_pretty(value).map_err(|e| CliError::error(e.to_string()))?;
        text.push(b'\n');
        // Named by content: importing the same occurrence twice writes one
        // file.
        let id = Digest::sha256_of(&text);
        let name = format!(
            "{}-{}.json",
            &digest.hex()[..12.min(digest.hex().len())],
            &id.hex()[..16]
        );
        let path = target.join(&name);
        write_atomically(&path, &text).map_err(CliError::error)?;
        files.push(path);
        if !digests.contains(&digest.to_string()) {
            digests.push(digest.to_string());
        }
    }
    Ok(Imported { files, digests })
}

/// The occurrences in an import file, each as its own JSON value.
fn split_occurrences(input: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    let value: serde_json::Value = match serde_json::from_slice(input) {
        Ok(v) => v,
        Err(json) => {
            let text = std::str::from_utf8(input).map_err(|_| "not UTF-8 text".to_owned())?;
            serde_yaml_ng::from_str(text)
                .map_err(|yaml| format!("neither JSON ({json}) nor YAML ({yaml})"))?
        }
    };
    let values = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut o) => match o.remove("occurrences") {
            Some(serde_json::Value::Array(items)) => items,
            Some(_) => return Err("\"occurrences\" is not a list".into()),
            None => vec![serde_json::Value::Object(o)],
        },
        _ => return Err("expected a list of occurrences".into()),
    };
    if values.is_empty() {
        return Err("no occurrences to import".into());
    }
    Ok(values)
}

/// Checks one occurrence; returns the digest it attests.
fn validate(policy: &Policy, value: &serde_json::Value) -> Result<Digest, String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let mut occurrences = binauthz::parse_occurrences(&bytes)?;
    let occurrence: Occurrence = match (occurrences.pop(), occurrences.is_empty()) {
        (Some(o), true) => o,
        _ => return Err("expected exactly one occurrence".into()),
    };
    let digest: Digest = occurrence
        .claimed_digest()
        .ok_or("the payload names no critical.image.docker-manifest-digest")?
        .parse()
        .map_err(|_| "the payload's docker-manifest-digest is not a digest".to_owned())?;
    let uri = occurrence.resource_uri.trim_start_matches("https://");
    let repository = simple_signing::normalize_repository(uri);
    let digest_text = digest.to_string();
    let subject = Subject {
        name: &repository,
        digest: &digest_text,
    };
    let mut attestors: Vec<_> = policy.attestors.values().collect();
    attestors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut seen = Vec::new();
    for attestor in attestors {
        match occurrence.check(attestor, &subject, &SignedIdentity::MatchRepository) {
            Check::Valid { .. } => return Ok(digest),
            Check::UnknownKey => {}
            other => seen.push(format!("attestor {}: {}", attestor.name, other.describe())),
        }
    }
    if seen.is_empty() {
        Err(format!(
            "its signature verifies with no configured attestor key (publicKeyId {}); \
             add the attestor and its key, with that id, to the policy first",
            occurrence
                .signatures()
                .iter()
                .map(|s| s.public_key_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else {
        Err(seen.join("; "))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// One piece of evidence and what it showed for each attestor.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub kind: String,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub attestors: Vec<ListedCheck>,
}

#[derive(Debug, Serialize)]
pub struct ListedCheck {
    pub attestor: String,
    pub verified: bool,
    pub result: String,
}

/// Groups per-attestor evidence by piece of evidence, in the order found.
pub fn group(per_attestor: &[(String, Vec<Evidence>)]) -> Vec<Listed> {
    let mut listed: Vec<Listed> = Vec::new();
    for (attestor, evidence) in per_attestor {
        for e in evidence {
            let check = ListedCheck {
                attestor: attestor.clone(),
                verified: matches!(e.check, Check::Valid { .. }),
                result: e.check.describe(),
            };
            let kind = e.kind.as_str();
            match listed
                .iter_mut()
                .find(|l| l.kind == kind && l.source == e.source)
            {
                Some(l) => {
                    if l.predicate_type.is_none() {
                        l.predicate_type.clone_from(&e.predicate_type);
                    }
                    l.attestors.push(check);
                }
                None => listed.push(Listed {
                    kind: kind.to_owned(),
                    source: e.source.clone(),
                    predicate_type: e.predicate_type.clone(),
                    note: e.note.clone(),
                    attestors: vec![check],
                }),
            }
        }
    }
    listed
}

/// The listing in words.
pub fn render(image: &str, listed: &[Listed]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "evidence for {image}:");
    if listed.is_empty() {
        let _ = writeln!(
            out,
            "  none found (looked in the sha256-<hex>.sig and .att tags, the referrers \
             (API or sha256-<hex> tag) and the attestation store)"
        );
    }
    for l in listed {
        let _ = write!(out, "- [{}] {}", l.kind, l.source);
        if let Some(p) = &l.predicate_type {
            let _ = write!(out, " (predicate {p})");
        }
        out.push('\n');
        if let Some(note) = &l.note {
            let _ = writeln!(out, "    {note}");
        }
        for c in &l.attestors {
            let _ = writeln!(
                out,
                "    {} {}: {}",
                if c.verified { "✓" } else { "✗" },
                c.attestor,
                c.result
            );
        }
    }
    out
}

/// `portcullis attestations list <ref>`: every piece of evidence found for
/// the image, checked for every attestor of the policy. Returns the image
/// (`<registry>/<repository>@<digest>`) and the listing.
pub async fn list(prepared: Prepared, reference: &str) -> Result<(String, Vec<Listed>), String> {
    let resolved = super::image::resolve_upstream(prepared, reference).await?;
    let per_attestor = resolved
        .app
        .verifier
        .all_evidence(&resolved.route, &resolved.manifest)
        .await
        .map_err(|e| format!("cannot look up evidence for {reference}: {e}"))?;
    Ok((resolved.name(), group(&per_attestor)))
}
