//! Live replay: each recorded manifest fetched by digest from the
//! candidate's upstream for its registry and evaluated afresh, a few at a
//! time. Upstream failures are errors, never verdicts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue};

use super::audit::Image;
use super::{admitted_index, through_index, Evaluated};
use crate::cli::image::ACCEPT_ALL;
use crate::config::Config;
use crate::oci::{Digest, Reference};
use crate::policy::Decision;
use crate::routing::{Endpoint, Route};
use crate::serve::{manifest, App};

/// Live lookups in flight at once.
const LIVE_CONCURRENCY: usize = 8;

/// Fetches and evaluates every image against the live upstreams, a few
/// at a time. `None` for images that could not be evaluated (the reason
/// is pushed to `errors`).
pub(super) async fn live_decisions(
    app: &Arc<App>,
    config: &Config,
    images: &[Image],
    errors: &mut Vec<String>,
) -> Vec<Option<Evaluated>> {
    let policy = app.verifier.policy();
    // Every (reference, digest) to evaluate: the images, and the indexes
    // of children whose index was not recorded itself.
    let mut wanted: Vec<(String, String)> = images
        .iter()
        .map(|i| (i.record.reference.clone(), i.record.digest.clone()))
        .collect();
    let known: HashSet<(String, String)> = wanted.iter().cloned().collect();
    for image in images {
        if let Some(index) = admitted_index(&image.record) {
            let key = (image.record.reference.clone(), index.to_owned());
            if !known.contains(&key) && !wanted.contains(&key) {
                wanted.push(key);
            }
        }
    }
    let results = evaluate_live(app, config, &wanted).await;
    let mut decided: HashMap<(String, String), Decision> = HashMap::new();
    let mut failed: HashMap<(String, String), String> = HashMap::new();
    for (key, result) in wanted.into_iter().zip(results) {
        match result {
            Ok(d) => {
                decided.insert(key, d);
            }
            Err(e) => {
                failed.insert(key, e);
            }
        }
    }
    let mut out = Vec::with_capacity(images.len());
    for image in images {
        let key = (image.record.reference.clone(), image.record.digest.clone());
        let Some(own) = decided.get(&key).cloned() else {
            let why = failed
                .get(&key)
                .cloned()
                .unwrap_or_else(|| "not evaluated".to_owned());
            errors.push(format!("{}: {why}", image.name()));
            out.push(None);
            continue;
        };
        let own = Evaluated::plain(own);
        let evaluated = match admitted_index(&image.record) {
            Some(index) => {
                let index_key = (image.record.reference.clone(), index.to_owned());
                if let Some(e) = failed.get(&index_key) {
                    errors.push(format!(
                        "{}: its index {index}: {e} (judged on its own)",
                        image.name()
                    ));
                }
                let rule = policy.rule_for(&image.record.reference);
                through_index(&rule, index, decided.get(&index_key), own, false)
            }
            None => own,
        };
        out.push(Some(evaluated));
    }
    out
}

/// Runs [`live_one`] for each of `wanted`, at most [`LIVE_CONCURRENCY`] at
/// once; results in the order of `wanted`.
async fn evaluate_live(
    app: &Arc<App>,
    config: &Config,
    wanted: &[(String, String)],
) -> Vec<Result<Decision, String>> {
    let registries: Arc<Vec<String>> = Arc::new(
        config
            .upstreams
            .iter()
            .map(|u| u.registry.clone())
            .collect(),
    );
    let mut results: Vec<Result<Decision, String>> = (0..wanted.len())
        .map(|_| Err("not evaluated".to_owned()))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0;
    loop {
        while tasks.len() < LIVE_CONCURRENCY && next < wanted.len() {
            let (reference, digest) = wanted[next].clone();
            let app = Arc::clone(app);
            let registries = Arc::clone(&registries);
            let i = next;
            tasks.spawn(async move { (i, live_one(&app, &registries, &reference, &digest).await) });
            next += 1;
        }
        match tasks.join_next().await {
            Some(Ok((i, result))) => {
                if let Some(slot) = results.get_mut(i) {
                    *slot = result;
                }
            }
            Some(Err(e)) => {
                // A panicked lookup: its slot keeps "not evaluated".
                tracing::warn!("replay lookup failed: {e}");
            }
            None => break,
        }
    }
    results
}

/// Fetches `reference@digest` from its upstream and evaluates it.
async fn live_one(
    app: &App,
    registries: &[String],
    reference: &str,
    digest: &str,
) -> Result<Decision, String> {
    let (registry, repository) = reference
        .split_once('/')
        .ok_or_else(|| format!("{reference:?} is not <registry>/<repository>"))?;
    let upstream = registries
        .iter()
        .position(|r| r == registry)
        .ok_or_else(|| format!("no upstream is configured for registry {registry}"))?;
    let parsed: Digest = digest
        .parse()
        .map_err(|e| format!("recorded digest {digest:?}: {e}"))?;
    let wanted = Reference::Digest(parsed);
    let route = Route {
        endpoint: Endpoint::Manifest(wanted.clone()),
        upstream,
        registry: registry.to_owned(),
        repository: repository.to_owned(),
        client_name: repository.to_owned(),
        ns: None,
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(ACCEPT_ALL));
    let up = app
        .upstreams()
        .get(upstream)
        .ok_or_else(|| format!("no upstream is configured for registry {registry}"))?;
    let fetched = manifest::fetch(up, &route, &wanted, &headers)
        .await
        .map_err(|e| format!("cannot fetch the manifest: {e}"))?;
    if fetched.digest().to_string() != digest {
        return Err(format!(
            "the upstream answered a manifest with digest {} instead",
            fetched.digest()
        ));
    }
    app.verifier
        .explain(&route, &fetched)
        .await
        .map_err(|e| format!("cannot verify: {e}"))
}
