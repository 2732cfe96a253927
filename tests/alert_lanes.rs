//! Alerts under a flood of denials, through a real `portcullis serve` and
//! a webhook receiver in the test process: repeated denials are coalesced
//! into one alert with a count; break-glass uses and failed reloads go on
//! a lane that denials never fill or hold up; dropped alerts are counted
//! on `/metrics`, logged and noticed to the webhook (security review,
//! issue 19 item 3).

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::fake::{proxy_yaml, Fake, FakeImage, Upstream};
use common::trust::MANIFEST_ACCEPT;
use common::webhook::Webhook;
use common::{free_port, Proxy};

/// Long enough for any condition below on a loaded CI machine.
const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "glass-5e0c2a9d7b1f4c36";

struct Setup {
    fake: Fake,
    proxy: Proxy,
    admin: String,
    _dir: tempfile::TempDir,
}

/// A fake upstream and a proxy that denies everything (ALWAYS_DENY), with
/// break-glass, an admin listener and `alerts` (YAML, appended as is).
fn setup(alerts: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("oncall.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let fake = Fake::start();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url()).with_default()],
        None,
    ) + "policy:\n  defaultAdmissionRule: {evaluationMode: ALWAYS_DENY}\n"
        + &format!("admin: {{listen: {admin}}}\n")
        + &format!(
            "breakGlass:\n  enabled: true\n  credentials:\n    - name: oncall\n      \
             tokenFile: {}\n",
            token.display()
        )
        + alerts;
    let proxy = Proxy::start_with_health(&config, &format!("http://{admin}/healthz"));
    Setup {
        fake,
        proxy,
        admin: format!("http://{admin}"),
        _dir: dir,
    }
}

impl Setup {
    /// GET `image` by digest through the proxy, with a break-glass header
    /// if given; returns the status.
    fn pull(&self, image: &FakeImage, break_glass: Option<&str>) -> u16 {
        let mut headers = vec![("Accept", MANIFEST_ACCEPT)];
        if let Some(h) = break_glass {
            headers.push(("X-Portcullis-Break-Glass", h));
        }
        common::http::request(
            "GET",
            &format!(
                "{}/v2/{}/manifests/{}",
                self.proxy.url(),
                image.repo,
                image.manifest_digest
            ),
            &headers,
            &[],
        )
        .unwrap()
        .status
    }

    fn break_glass(&self, image: &FakeImage) {
        let status = self.pull(image, Some(&format!("{TOKEN} INC-77 rollback")));
        assert_eq!(status, 200, "the break-glass pull must be served");
    }

    fn metric(&self, series: &str) -> f64 {
        let text = common::http::get(&format!("{}/metrics", self.admin))
            .unwrap()
            .text();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
    }
}

fn event(v: &Value) -> &str {
    v["event"].as_str().unwrap_or("")
}

fn of(seen: &[Value], name: &str) -> Vec<Value> {
    seen.iter().filter(|v| event(v) == name).cloned().collect()
}

/// What the review found: 1,500 cheap denials (verdict-cache repeats)
/// filled the webhook's one queue and the break-glass use that followed
/// was dropped. The webhook here holds its answers to denial alerts, so
/// nothing on the denial side ever drains.
#[test]
fn a_break_glass_use_after_a_flood_of_cached_denials_is_delivered() {
    let webhook = Webhook::holding(|v| v["event"] == "deny");
    let s = setup(&format!(
        "alerts:\n  webhooks:\n    - {{url: \"{}\", on: [deny, breakglass]}}\n",
        webhook.url()
    ));
    let image = s.fake.put_image("demo/app", Some("v1"), 7, 64);
    let flood = 1_600;
    let started = Instant::now();
    for _ in 0..flood {
        assert_eq!(s.pull(&image, None), 403);
    }
    eprintln!("{flood} denials in {:?}", started.elapsed());
    assert!(
        s.metric("portcullis_verdict_cache_hits_total") >= (flood - 1) as f64,
        "the flood must be verdict-cache repeats"
    );

    s.break_glass(&image);
    // Delivered while every denial alert is still unanswered.
    let seen = webhook.wait_for(WAIT, "the break-glass alert", |seen| {
        !of(seen, "breakglass").is_empty()
    });
    let glass = &of(&seen, "breakglass")[0];
    assert_eq!(glass["record"]["identity"], "oncall");
    assert_eq!(
        glass["record"]["break_glass_justification"],
        "INC-77 rollback"
    );
    // The flood was one alert so far (the rest folded in, counted), and
    // nothing was dropped.
    assert_eq!(of(&seen, "deny").len(), 1, "{seen:#?}");
    assert_eq!(s.metric("portcullis_alerts_dropped_total"), 0.0);
    assert!(s.metric("portcullis_alerts_coalesced_total") >= (flood - 1) as f64);
    webhook.release();
}

/// Repeated denials of one image by one rule: the first is alerted at
/// once, the repeats within the window arrive as one alert with their
/// count; another image is alerted on its own.
#[test]
fn repeated_denials_of_one_image_arrive_as_one_alert_with_a_count() {
    let webhook = Webhook::start();
    let s = setup(&format!(
        "alerts:\n  coalesce: 5s\n  webhooks:\n    - {{url: \"{}\"}}\n",
        webhook.url()
    ));
    let image = s.fake.put_image("demo/app", Some("v1"), 7, 64);
    let other = s.fake.put_image("demo/other", Some("v1"), 8, 64);
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(s.pull(&image, None), 403);
    }
    assert_eq!(s.pull(&other, None), 403);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the denials must fall within one window"
    );
    let seen = webhook.wait_for(WAIT, "the coalesced alert", |seen| {
        seen.iter().any(|v| v.get("count").is_some())
    });
    let reference = |v: &Value| v["record"]["reference"].as_str().unwrap().to_owned();
    let of_image: Vec<&Value> = seen
        .iter()
        .filter(|v| reference(v).ends_with("/demo/app"))
        .collect();
    assert_eq!(of_image.len(), 2, "{seen:#?}");
    // The first, at once, as before: no count.
    assert!(of_image[0].get("count").is_none(), "{:#?}", of_image[0]);
    assert_eq!(of_image[0]["record"]["cache_hit"], false);
    // The 49 repeats, as one alert: the last repeat's record, the count and
    // when the first repeat happened.
    let coalesced = of_image[1];
    assert_eq!(coalesced["event"], "deny");
    assert_eq!(coalesced["count"], 49);
    assert!(coalesced["first_time"].as_str().unwrap().ends_with('Z'));
    assert!(coalesced["first_time"].as_str() <= coalesced["record"]["time"].as_str());
    assert_eq!(coalesced["record"]["cache_hit"], true);
    assert_eq!(
        coalesced["record"]["digest"],
        image.manifest_digest.as_str()
    );
    // The other image: its own alert.
    assert_eq!(
        seen.iter()
            .filter(|v| reference(v).ends_with("/demo/other"))
            .count(),
        1
    );
    // Nothing more arrives for the quiet image.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(webhook.seen().len(), 3, "{:#?}", webhook.seen());
    assert_eq!(s.metric("portcullis_alerts_coalesced_total"), 49.0);
    assert_eq!(s.metric("portcullis_alerts_sent_total"), 3.0);
}

/// Denials of many images overflow a small queue: the overflow is dropped,
/// counted on `/metrics`, logged, and noticed to the webhook, and the
/// break-glass use still gets through.
#[test]
fn dropped_alerts_are_counted_logged_and_noticed_and_never_break_glass() {
    let webhook = Webhook::holding(|v| v["event"] == "deny");
    let s = setup(&format!(
        "alerts:\n  queueSize: 2\n  webhooks:\n    - {{url: \"{}\", on: [deny, breakglass]}}\n",
        webhook.url()
    ));
    let images: Vec<FakeImage> = (0..10)
        .map(|i| {
            s.fake
                .put_image(&format!("team/app{i}"), Some("v1"), 100 + i, 64)
        })
        .collect();
    // The first denial's alert is taken and held by the webhook; two more
    // fill the queue; the other seven are dropped.
    assert_eq!(s.pull(&images[0], None), 403);
    webhook.wait_for(WAIT, "the first denial", |seen| {
        !of(seen, "deny").is_empty()
    });
    for image in &images[1..] {
        assert_eq!(s.pull(image, None), 403);
    }
    s.break_glass(&images[3]);
    let seen = webhook.wait_for(WAIT, "the break-glass alert and a drop notice", |seen| {
        !of(seen, "breakglass").is_empty() && !of(seen, "dropped").is_empty()
    });
    let notices = of(&seen, "dropped");
    let noticed: u64 = notices.iter().map(|n| n["count"].as_u64().unwrap()).sum();
    assert!((1..=7).contains(&noticed), "{notices:#?}");
    assert_eq!(s.metric("portcullis_alerts_dropped_total"), 7.0);
    assert!(
        s.proxy.logs().contains("alert dropped: webhook queue full"),
        "no log line for the drops:\n{}",
        s.proxy.logs()
    );
    // Once the webhook answers, the queued denials are delivered; the drop
    // notices add up to every drop.
    webhook.release();
    let seen = webhook.wait_for(WAIT, "the queued denials", |seen| {
        of(seen, "deny").len() == 3
            && of(seen, "dropped")
                .iter()
                .map(|n| n["count"].as_u64().unwrap())
                .sum::<u64>()
                == 7
    });
    assert_eq!(of(&seen, "breakglass").len(), 1);
}

/// A policy reload that fails (here: a rule requiring an attestor that
/// is not defined) is alerted on the urgent lane, with the revision that
/// stays in force.
#[test]
fn a_failed_reload_is_alerted() {
    let webhook = Webhook::start();
    let s = setup(&format!(
        "alerts:\n  webhooks:\n    - {{url: \"{}\", on: [reload]}}\n",
        webhook.url()
    ));
    let config_path: PathBuf = s.proxy.config_path();
    let config = std::fs::read_to_string(&config_path).unwrap();
    let broken = config.replace(
        "policy:\n  defaultAdmissionRule: {evaluationMode: ALWAYS_DENY}\n",
        "policy:\n  defaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}\n  \
         repositoryAdmissionRules:\n    \"docker.io/library/nginx\": \
         {evaluationMode: REQUIRE_ATTESTATION, requireAttestationsBy: [nobody]}\n",
    );
    assert_ne!(broken, config);
    write_later(&config_path, &broken);
    let seen = webhook.wait_for(WAIT, "the reload alert", |seen| {
        !of(seen, "reload").is_empty()
    });
    let alert = &of(&seen, "reload")[0];
    let error = alert["error"].as_str().unwrap();
    assert!(
        error.contains("requireAttestationsBy") && error.contains("nobody"),
        "{alert:#?}"
    );
    assert_eq!(alert["trigger"], "file change");
    assert!(!alert["kept_revision"].as_str().unwrap().is_empty());
    // The previous policy is in force: still denying.
    let image = s.fake.put_image("demo/app", Some("v1"), 7, 64);
    assert_eq!(s.pull(&image, None), 403);
}

/// Rewrites `path` so that its modification time surely changes.
fn write_later(path: &Path, text: &str) {
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(path, text).unwrap();
}
