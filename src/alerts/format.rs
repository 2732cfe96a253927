//! What a webhook receives: the JSON and Slack bodies of decision alerts
//! (coalesced or not), failed-reload alerts and drop notices. Pure: no
//! I/O, no state.
//!
//! May use: serde, `crate::audit::record` (the record an alert carries),
//! `crate::config::alerts` (events and formats). Must never use: the
//! layers above alerts (serve, admin, server, app, cli).

use serde::Serialize;

use crate::audit::record::DecisionRecord;
use crate::config::alerts::{AlertEvent, AlertFormat};

/// Longest reason / justification put in a Slack message (Slack caps a
/// section's text at 3000 characters).
const MAX_SLACK_FIELD: usize = 1500;

/// What a coalesced alert stands for: `count` decisions like its record,
/// the first of them at `first_time` (the record is the last one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coalesced {
    pub count: u64,
    pub first_time: String,
}

#[derive(Serialize)]
struct JsonAlert<'a> {
    event: AlertEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_time: Option<&'a str>,
    record: &'a DecisionRecord,
}

/// The body for `format: json`: `{"event": "deny", "record": {...}}`.
pub fn json_body(event: AlertEvent, record: &DecisionRecord) -> serde_json::Result<Vec<u8>> {
    json_body_coalesced(event, record, None)
}

/// [`json_body`], with `count` and `first_time` for a coalesced alert:
/// `{"event": "deny", "count": 1499, "first_time": "...", "record": {...}}`.
pub fn json_body_coalesced(
    event: AlertEvent,
    record: &DecisionRecord,
    coalesced: Option<&Coalesced>,
) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&JsonAlert {
        event,
        count: coalesced.map(|c| c.count),
        first_time: coalesced.map(|c| c.first_time.as_str()),
        record,
    })
}

/// The body for `format: slack`: a one-line `text` (used by notifications
/// and clients without blocks) and `blocks`: a section with the reason and
/// a context line with rule, client and time.
pub fn slack_body(event: AlertEvent, record: &DecisionRecord) -> serde_json::Value {
    slack_body_coalesced(event, record, None)
}

/// [`slack_body`], saying how often the decision repeated for a coalesced
/// alert.
pub fn slack_body_coalesced(
    event: AlertEvent,
    record: &DecisionRecord,
    coalesced: Option<&Coalesced>,
) -> serde_json::Value {
    let image = slack_escape(&image_name(record));
    let repeated = coalesced
        .map(|c| format!(" ({} times since {})", c.count, slack_escape(&c.first_time)))
        .unwrap_or_default();
    let reason = slack_escape(&truncate(short_reason(record), MAX_SLACK_FIELD));
    let (emoji, headline) = match event {
        AlertEvent::Deny => (":no_entry:", "Portcullis denied"),
        AlertEvent::Dryrun => (":warning:", "Portcullis would deny (dry run, served)"),
        AlertEvent::Breakglass => (
            ":rotating_light:",
            "Portcullis break-glass: served despite denial",
        ),
        AlertEvent::Reload => (":x:", "Portcullis policy reload failed"),
    };
    let justification = record
        .break_glass_justification
        .as_deref()
        .map(|j| slack_escape(&truncate(j, MAX_SLACK_FIELD)));
    let mut text = format!("{emoji} {headline} {image}{repeated} — {reason}");
    let mut section = format!("{emoji} *{headline}* `{image}`{repeated}\n{reason}");
    if let Some(j) = &justification {
        text.push_str(&format!(" — justification: {j}"));
        section.push_str(&format!("\n*Justification:* {j}"));
    }
    let client = slack_escape(&client_name(record));
    let rule = slack_escape(&record.rule);
    let time = slack_escape(&record.time);
    serde_json::json!({
        "text": text,
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": section},
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": format!("*Rule:* {rule}")},
                    {"type": "mrkdwn", "text": format!("*Client:* {client}")},
                    {"type": "mrkdwn", "text": format!("*Time:* {time}")},
                ],
            },
        ],
    })
}

/// A policy reload that failed: the previous policy stays in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadFailure {
    /// When (RFC 3339).
    pub time: String,
    /// What triggered the reload (`SIGHUP`, `file change`).
    pub trigger: String,
    /// The revision that stays in force.
    pub kept_revision: String,
    /// Why the new configuration did not load.
    pub error: String,
}

/// The body of a failed-reload alert: `{"event": "reload", "time", "trigger",
/// "kept_revision", "error"}`, or a Slack message.
pub fn reload_body(format: AlertFormat, failure: &ReloadFailure) -> serde_json::Result<Vec<u8>> {
    match format {
        AlertFormat::Json => {
            let mut value = serde_json::to_value(failure)?;
            if let Some(map) = value.as_object_mut() {
                map.insert("event".into(), serde_json::Value::from("reload"));
            }
            serde_json::to_vec(&value)
        }
        AlertFormat::Slack => {
            let error = slack_escape(&truncate(&failure.error, MAX_SLACK_FIELD));
            let kept = slack_escape(&failure.kept_revision);
            serde_json::to_vec(&serde_json::json!({
                "text": format!(
                    ":x: Portcullis policy reload failed; revision {kept} stays in force — {error}"
                ),
            }))
        }
    }
}

/// The body of a drop notice: `{"event": "dropped", "time", "count"}`, or a
/// Slack message. `count` alerts for this webhook were dropped since the
/// previous notice.
pub fn dropped_body(format: AlertFormat, count: u64, time: &str) -> serde_json::Result<Vec<u8>> {
    match format {
        AlertFormat::Json => serde_json::to_vec(&serde_json::json!({
            "event": "dropped",
            "time": time,
            "count": count,
        })),
        AlertFormat::Slack => serde_json::to_vec(&serde_json::json!({
            "text": format!(
                ":warning: Portcullis dropped {count} alert(s) for this webhook: its queue \
                 was full (portcullis_alerts_dropped_total counts every drop)"
            ),
        })),
    }
}

/// `<reference>[:<tag>]@<digest>`.
fn image_name(record: &DecisionRecord) -> String {
    match &record.tag {
        Some(tag) => format!("{}:{}@{}", record.reference, tag, record.digest),
        None => format!("{}@{}", record.reference, record.digest),
    }
}

/// The reason from the rule on (`default admission rule: attestor …`):
/// the recorded message names the image first, which the alert already
/// shows. Falls back to the whole message.
fn short_reason(record: &DecisionRecord) -> &str {
    if !record.rule.is_empty() {
        let needle = format!("by {}", record.rule);
        if let Some(at) = record.reason.find(&needle) {
            return &record.reason[at + 3..];
        }
    }
    &record.reason
}

/// `identity (addr)`, `addr`, `identity` or `unknown`; a break-glass
/// identity other than the authenticated client's is followed by
/// `, client <name>`.
fn client_name(record: &DecisionRecord) -> String {
    let identity = match (&record.identity, &record.client_identity) {
        (Some(who), Some(client)) if who != client => Some(format!("{who}, client {client}")),
        (Some(who), _) => Some(who.clone()),
        (None, client) => client.clone(),
    };
    match (&identity, &record.client_addr) {
        (Some(id), Some(addr)) => format!("{id} ({addr})"),
        (Some(id), None) => id.clone(),
        (None, Some(addr)) => addr.clone(),
        (None, None) => "unknown".into(),
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped; unescaped, a client's
/// text (a break-glass justification) could inject `<!channel>` or links.
fn slack_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::tests::record;
    use crate::audit::record::RecordedVerdict;

    #[test]
    fn json_body_shape() {
        let r = record(RecordedVerdict::Deny);
        let body: serde_json::Value =
            serde_json::from_slice(&json_body(AlertEvent::Deny, &r).unwrap()).unwrap();
        assert_eq!(body["event"], "deny");
        assert_eq!(body["record"], serde_json::to_value(&r).unwrap());
        assert_eq!(body["record"]["verdict"], "deny");
        let body: serde_json::Value = serde_json::from_slice(
            &json_body(AlertEvent::Dryrun, &record(RecordedVerdict::DryrunDeny)).unwrap(),
        )
        .unwrap();
        assert_eq!(body["event"], "dryrun");
        assert_eq!(body["record"]["verdict"], "dryrun-deny");
    }

    #[test]
    fn slack_body_shape() {
        let r = record(RecordedVerdict::Deny);
        let body = slack_body(AlertEvent::Deny, &r);
        assert_eq!(
            body["text"],
            ":no_entry: Portcullis denied 127.0.0.1:5001/demo/app@sha256:abc — default \
             admission rule: attestor built-by-ci: no valid signature (no signatures found)"
        );
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0]["type"], "section");
        assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
        let section = blocks[0]["text"]["text"].as_str().unwrap();
        assert!(section.contains("`127.0.0.1:5001/demo/app@sha256:abc`"));
        assert!(section.contains("attestor built-by-ci: no valid signature"));
        assert_eq!(blocks[1]["type"], "context");
        let context: Vec<&str> = blocks[1]["elements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            context,
            [
                "*Rule:* default admission rule",
                "*Client:* 10.0.0.9:41234",
                "*Time:* 2026-05-09T07:30:00.000Z"
            ]
        );
    }

    #[test]
    fn slack_body_dryrun_and_breakglass() {
        let mut r = record(RecordedVerdict::DryrunDeny);
        r.tag = Some("v1".into());
        r.reason = "image x would be denied by default admission rule (dry run, served): \
                    attestor a: no valid signature"
            .into();
        let body = slack_body(AlertEvent::Dryrun, &r);
        let text = body["text"].as_str().unwrap();
        assert!(text.starts_with(":warning: Portcullis would deny (dry run, served) "));
        assert!(text.contains("127.0.0.1:5001/demo/app:v1@sha256:abc"));
        assert!(text.ends_with(
            "— default admission rule (dry run, served): attestor a: no valid signature"
        ));

        let mut r = record(RecordedVerdict::Breakglass);
        r.identity = Some("alice".into());
        r.break_glass_justification = Some("INC-42 <!channel> & fix".into());
        let body = slack_body(AlertEvent::Breakglass, &r);
        let text = body["text"].as_str().unwrap();
        assert!(text.starts_with(":rotating_light: Portcullis break-glass"));
        // Client text is escaped: no mention injection.
        assert!(text.ends_with("justification: INC-42 &lt;!channel&gt; &amp; fix"));
        assert!(!body.to_string().contains("<!channel>"));
        assert_eq!(
            body["blocks"][1]["elements"][1]["text"],
            "*Client:* alice (10.0.0.9:41234)"
        );
    }

    #[test]
    fn reason_falls_back_and_truncates() {
        let mut r = record(RecordedVerdict::Deny);
        r.reason = "blob not admitted".into();
        assert_eq!(short_reason(&r), "blob not admitted");
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("ab", 3), "ab");
        assert_eq!(truncate("ééé", 2), "éé…");
    }

    #[test]
    fn coalesced_bodies_carry_the_count() {
        let r = record(RecordedVerdict::Deny);
        let c = Coalesced {
            count: 41,
            first_time: "2026-05-09T07:29:00.000Z".into(),
        };
        let body: serde_json::Value =
            serde_json::from_slice(&json_body_coalesced(AlertEvent::Deny, &r, Some(&c)).unwrap())
                .unwrap();
        assert_eq!(body["event"], "deny");
        assert_eq!(body["count"], 41);
        assert_eq!(body["first_time"], "2026-05-09T07:29:00.000Z");
        assert_eq!(body["record"], serde_json::to_value(&r).unwrap());
        let slack = slack_body_coalesced(AlertEvent::Deny, &r, Some(&c));
        assert!(slack["text"]
            .as_str()
            .unwrap()
            .contains("@sha256:abc (41 times since 2026-05-09T07:29:00.000Z) — "));

        let failure = ReloadFailure {
            time: "t".into(),
            trigger: "SIGHUP".into(),
            kept_revision: "abc123".into(),
            error: "policy.repositoryAdmissionRules[\"x:v1\"]: <bad>".into(),
        };
        let body: serde_json::Value =
            serde_json::from_slice(&reload_body(AlertFormat::Json, &failure).unwrap()).unwrap();
        assert_eq!(body["event"], "reload");
        assert_eq!(body["kept_revision"], "abc123");
        assert_eq!(body["trigger"], "SIGHUP");
        let slack: serde_json::Value =
            serde_json::from_slice(&reload_body(AlertFormat::Slack, &failure).unwrap()).unwrap();
        let text = slack["text"].as_str().unwrap();
        assert!(text.contains("revision abc123 stays in force") && text.contains("&lt;bad&gt;"));

        let body: serde_json::Value =
            serde_json::from_slice(&dropped_body(AlertFormat::Json, 7, "t").unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"event": "dropped", "time": "t", "count": 7})
        );
    }
}
