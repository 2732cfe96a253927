//! `/readyz`: whether this replica should be sent pulls, and why.
//!
//! The rule: the configuration is loaded (there is an [`super::App`]) and
//! at least one upstream is reachable; or, when any upstream is marked
//! `required: true`, every required upstream is reachable. An upstream is
//! reachable when it answered within a window or answers a probe now
//! ([`crate::upstream::Upstream::reachability`]).
//!
//! The answer is a JSON object whose keys are fixed, so that more checks
//! can join as siblings of `upstreams` (shared state will add `state`):
//!
//! - `ready`: the verdict; the HTTP status says the same (200 or 503);
//! - `reason`: only when not ready, one line saying why;
//! - `upstreams`: by registry, `"reachable"` or `"unreachable"`; with
//!   `?verbose`, an object instead: `status` (the same word), `required`
//!   and, when unreachable, `error`;
//! - `state`: in a fleet, `{"redis": "reachable"}` or `{"redis":
//!   "degraded: <why>"}`. A degraded shared state leaves the replica
//!   ready: it fails closed on what only Redis could prove, and serves the
//!   rest (a Redis outage must not empty the Service).
//!
//! May use: what [`crate::serve`] may (this module builds no clients: it
//! is handed each upstream's state).

use serde_json::{json, Map, Value};

/// One upstream as `/readyz` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamState {
    /// The canonical registry host, as configured.
    pub registry: String,
    /// `upstreams[].required`.
    pub required: bool,
    /// `None` when reachable; otherwise why not.
    pub error: Option<String>,
}

impl UpstreamState {
    pub fn reachable(&self) -> bool {
        self.error.is_none()
    }

    fn status(&self) -> &'static str {
        if self.reachable() {
            "reachable"
        } else {
            "unreachable"
        }
    }
}

/// The outcome of one readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// In configuration order.
    pub upstreams: Vec<UpstreamState>,
    /// The fleet's shared state: `None` without one; otherwise `Ok`, or
    /// why it is degraded.
    pub shared: Option<Result<(), String>>,
}

impl Readiness {
    /// Why the replica is not ready; `None` when it is.
    pub fn unready_reason(&self) -> Option<String> {
        let required: Vec<&UpstreamState> = self.upstreams.iter().filter(|u| u.required).collect();
        if required.is_empty() {
            if self.upstreams.iter().any(UpstreamState::reachable) {
                return None;
            }
            return Some("no upstream is reachable".to_owned());
        }
        let down: Vec<&str> = required
            .iter()
            .filter(|u| !u.reachable())
            .map(|u| u.registry.as_str())
            .collect();
        match down.as_slice() {
            [] => None,
            [one] => Some(format!("required upstream {one} is unreachable")),
            many => Some(format!(
                "required upstreams {} are unreachable",
                many.join(", ")
            )),
        }
    }

    pub fn ready(&self) -> bool {
        self.unready_reason().is_none()
    }

    /// The `/readyz` body: compact, or with each upstream's detail
    /// (`verbose`).
    pub fn to_json(&self, verbose: bool) -> Value {
        let reason = self.unready_reason();
        let mut upstreams = Map::new();
        for u in &self.upstreams {
            let value = if verbose {
                let mut detail = json!({"status": u.status(), "required": u.required});
                if let (Some(error), Some(detail)) = (&u.error, detail.as_object_mut()) {
                    detail.insert("error".to_owned(), Value::String(error.clone()));
                }
                detail
            } else {
                Value::String(u.status().to_owned())
            };
            upstreams.insert(u.registry.clone(), value);
        }
        let mut body = Map::new();
        body.insert("ready".to_owned(), Value::Bool(reason.is_none()));
        if let Some(reason) = reason {
            body.insert("reason".to_owned(), Value::String(reason));
        }
        body.insert("upstreams".to_owned(), Value::Object(upstreams));
        if let Some(shared) = &self.shared {
            let redis = match shared {
                Ok(()) => "reachable".to_owned(),
                Err(why) => format!("degraded: {why}"),
            };
            body.insert("state".to_owned(), json!({ "redis": redis }));
        }
        Value::Object(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(registry: &str, required: bool, up: bool) -> UpstreamState {
        UpstreamState {
            registry: registry.to_owned(),
            required,
            error: (!up).then(|| format!("cannot reach upstream {registry}: refused")),
        }
    }

    fn readiness(states: &[(&str, bool, bool)]) -> Readiness {
        Readiness {
            upstreams: states
                .iter()
                .map(|&(r, required, up)| state(r, required, up))
                .collect(),
            shared: None,
        }
    }

    #[test]
    fn without_required_upstreams_one_reachable_is_enough() {
        assert!(readiness(&[("a.io", false, true), ("b.io", false, false)]).ready());
        assert!(readiness(&[("a.io", false, false), ("b.io", false, true)]).ready());
        let none = readiness(&[("a.io", false, false), ("b.io", false, false)]);
        assert_eq!(
            none.unready_reason().as_deref(),
            Some("no upstream is reachable")
        );
    }

    #[test]
    fn with_required_upstreams_every_required_one_must_be_reachable() {
        // An optional upstream's state no longer matters...
        assert!(readiness(&[("a.io", true, true), ("b.io", false, false)]).ready());
        // ...nor does an optional one being up make up for a required one.
        let down = readiness(&[("a.io", false, true), ("b.io", true, false)]);
        assert_eq!(
            down.unready_reason().as_deref(),
            Some("required upstream b.io is unreachable")
        );
        let both = readiness(&[("a.io", true, false), ("b.io", true, false)]);
        assert_eq!(
            both.unready_reason().as_deref(),
            Some("required upstreams a.io, b.io are unreachable")
        );
        assert!(readiness(&[("a.io", true, true), ("b.io", true, true)]).ready());
    }

    #[test]
    fn compact_and_verbose_bodies() {
        let r = readiness(&[("a.io", false, true), ("b.io", true, false)]);
        assert_eq!(
            r.to_json(false),
            json!({
                "ready": false,
                "reason": "required upstream b.io is unreachable",
                "upstreams": {"a.io": "reachable", "b.io": "unreachable"},
            })
        );
        assert_eq!(
            r.to_json(true),
            json!({
                "ready": false,
                "reason": "required upstream b.io is unreachable",
                "upstreams": {
                    "a.io": {"status": "reachable", "required": false},
                    "b.io": {
                        "status": "unreachable",
                        "required": true,
                        "error": "cannot reach upstream b.io: refused",
                    },
                },
            })
        );
        let ready = readiness(&[("a.io", false, true)]);
        assert_eq!(
            ready.to_json(false),
            json!({"ready": true, "upstreams": {"a.io": "reachable"}})
        );
    }

    #[test]
    fn degraded_shared_state_is_reported_and_leaves_the_replica_ready() {
        let mut r = readiness(&[("a.io", false, true)]);
        r.shared = Some(Err("redis is unreachable (retrying): refused".to_owned()));
        assert!(r.ready(), "a Redis outage must not make a replica unready");
        assert_eq!(
            r.to_json(false)["state"],
            json!({"redis": "degraded: redis is unreachable (retrying): refused"})
        );
        r.shared = Some(Ok(()));
        assert_eq!(r.to_json(true)["state"], json!({"redis": "reachable"}));
        r.shared = None;
        assert!(
            r.to_json(false).get("state").is_none(),
            "no state key without a fleet"
        );
    }
}
