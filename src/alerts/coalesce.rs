//! Coalescing: repeats of one denial (event, image, rule) within a
//! window are folded into one alert that carries their count and the time
//! of the first. Pure bookkeeping: the caller supplies the clock.
//!
//! May use: `crate::audit::record`, `crate::config::alerts`, and the
//! alert vocabulary of its siblings. Must never use: the layers above
//! alerts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::format::Coalesced;
use super::webhook::Alert;
use crate::audit::record::DecisionRecord;
use crate::config::alerts::AlertEvent;

/// Most coalescing windows open at once per webhook; past it, a denial of
/// an image without a window is alerted on its own.
pub const MAX_COALESCE_WINDOWS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct WindowKey {
    event: AlertEvent,
    reference: String,
    digest: String,
    rule: String,
}

/// One open coalescing window.
pub(super) struct Window {
    opened_ms: u64,
    /// Decisions folded in since the window opened.
    repeats: u64,
    first_time: String,
    last: Option<Arc<DecisionRecord>>,
}

impl Window {
    fn new(opened_ms: u64) -> Window {
        Window {
            opened_ms,
            repeats: 0,
            first_time: String::new(),
            last: None,
        }
    }

    fn fold(&mut self, record: &Arc<DecisionRecord>) {
        if self.repeats == 0 {
            self.first_time = record.time.clone();
        }
        self.repeats += 1;
        self.last = Some(Arc::clone(record));
    }

    /// The alert for the repeats folded in so far, if any; the window is
    /// then empty.
    fn take_summary(&mut self, event: AlertEvent) -> Option<Alert> {
        let repeats = std::mem::take(&mut self.repeats);
        let record = self.last.take()?;
        (repeats > 0).then(|| Alert::Decision {
            event,
            record,
            coalesced: Some(Coalesced {
                count: repeats,
                first_time: std::mem::take(&mut self.first_time),
            }),
        })
    }
}

/// What [`Coalescer::offer`] decided.
pub(super) struct Offer {
    /// An earlier window's repeats, to send first.
    pub(super) summary: Option<Alert>,
    /// Send this decision now (`false`: it was folded into a window).
    pub(super) send: bool,
}

/// One webhook's coalescing windows.
pub(super) struct Coalescer {
    window_ms: u64,
    windows: Mutex<HashMap<WindowKey, Window>>,
}

impl Coalescer {
    pub(super) fn new(window: Duration) -> Coalescer {
        Coalescer {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<WindowKey, Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first decision of a key opens a window and is sent at once;
    /// the ones after it within the window are folded in. A window whose
    /// time is up with repeats in it is summarised and opens again.
    pub(super) fn offer(
        &self,
        event: AlertEvent,
        record: &Arc<DecisionRecord>,
        now_ms: u64,
    ) -> Offer {
        let key = WindowKey {
            event,
            reference: record.reference.clone(),
            digest: record.digest.clone(),
            rule: record.rule.clone(),
        };
        let mut windows = self.windows();
        if let Some(w) = windows.get_mut(&key) {
            if now_ms < w.opened_ms.saturating_add(self.window_ms) {
                w.fold(record);
                return Offer {
                    summary: None,
                    send: false,
                };
            }
            // Time is up and the ticker has not been by yet.
            let summary = w.take_summary(event);
            *w = Window::new(now_ms);
            let send = summary.is_none();
            if !send {
                w.fold(record);
            }
            return Offer { summary, send };
        }
        if windows.len() < MAX_COALESCE_WINDOWS {
            windows.insert(key, Window::new(now_ms));
        }
        Offer {
            summary: None,
            send: true,
        }
    }

    /// Summaries of the windows whose time is up; those with repeats open
    /// again (a steady stream of one denial is one alert per window), the
    /// others close.
    pub(super) fn sweep(&self, now_ms: u64) -> Vec<Alert> {
        let mut out = Vec::new();
        self.windows().retain(|key, w| {
            if now_ms < w.opened_ms.saturating_add(self.window_ms) {
                return true;
            }
            match w.take_summary(key.event) {
                Some(summary) => {
                    out.push(summary);
                    *w = Window::new(now_ms);
                    true
                }
                None => false,
            }
        });
        out
    }

    /// Closes every window now, with the summaries of those with repeats.
    pub(super) fn close_all(&self) -> Vec<Alert> {
        self.windows()
            .drain()
            .filter_map(|(key, mut w)| w.take_summary(key.event))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::tests::record;
    use crate::audit::record::RecordedVerdict;

    fn arc(verdict: RecordedVerdict, time: &str, request_id: u64) -> Arc<DecisionRecord> {
        let mut r = record(verdict);
        r.time = time.into();
        r.request_id = request_id;
        Arc::new(r)
    }

    /// Only what a summary says: (event, count, first time, last request).
    fn summary(alert: &Alert) -> (AlertEvent, u64, String, u64) {
        match alert {
            Alert::Decision {
                event,
                record,
                coalesced: Some(c),
            } => (*event, c.count, c.first_time.clone(), record.request_id),
            _ => panic!("not a coalesced decision"),
        }
    }

    #[test]
    fn repeats_within_a_window_are_folded_and_summarised() {
        let c = Coalescer::new(Duration::from_millis(100));
        let deny = AlertEvent::Deny;
        // The first is sent, the repeats within the window are not.
        let first = c.offer(deny, &arc(RecordedVerdict::Deny, "t0", 0), 0);
        assert!(first.send && first.summary.is_none());
        for i in 1..=5 {
            let o = c.offer(
                deny,
                &arc(RecordedVerdict::Deny, &format!("t{i}"), i),
                10 * i,
            );
            assert!(!o.send && o.summary.is_none(), "repeat {i}");
        }
        // Another image, rule or event is another window.
        let mut other = record(RecordedVerdict::Deny);
        other.digest = "sha256:other".into();
        assert!(c.offer(deny, &Arc::new(other), 20).send);
        let mut other = record(RecordedVerdict::Deny);
        other.rule = "repository admission rule r/**".into();
        assert!(c.offer(deny, &Arc::new(other), 20).send);
        assert!(
            c.offer(
                AlertEvent::Dryrun,
                &arc(RecordedVerdict::DryrunDeny, "d", 9),
                20
            )
            .send
        );
        // Nothing is due before the window ends.
        assert!(c.sweep(99).is_empty());
        // At its end, one summary with the count, the first repeat's time
        // and the last repeat's record; the window opens again.
        let due = c.sweep(120);
        assert_eq!(due.len(), 1);
        assert_eq!(summary(&due[0]), (deny, 5, "t1".to_owned(), 5));
        // The windows without repeats closed; the one with repeats is open.
        assert_eq!(c.windows().len(), 1);
        let o = c.offer(deny, &arc(RecordedVerdict::Deny, "t6", 6), 150);
        assert!(!o.send, "a steady stream stays coalesced");
        // A window whose time is up before the ticker came by is
        // summarised by the next decision, which starts the next window.
        let o = c.offer(deny, &arc(RecordedVerdict::Deny, "t7", 7), 250);
        assert!(!o.send);
        assert_eq!(
            summary(o.summary.as_ref().unwrap()),
            (deny, 1, "t6".to_owned(), 6)
        );
        // close_all ends everything, with what was folded.
        let closed = c.close_all();
        assert_eq!(closed.len(), 1);
        assert_eq!(summary(&closed[0]), (deny, 1, "t7".to_owned(), 7));
        assert!(c.windows().is_empty());
        // After a quiet window, the next decision is sent at once again.
        assert!(
            c.offer(deny, &arc(RecordedVerdict::Deny, "t8", 8), 400)
                .send
        );
        assert!(c.sweep(500).is_empty());
        assert!(c.windows().is_empty());
    }

    #[test]
    fn coalescing_windows_are_bounded() {
        let c = Coalescer::new(Duration::from_secs(60));
        for i in 0..MAX_COALESCE_WINDOWS + 10 {
            let mut r = record(RecordedVerdict::Deny);
            r.digest = format!("sha256:{i}");
            assert!(c.offer(AlertEvent::Deny, &Arc::new(r), 0).send);
        }
        assert_eq!(c.windows().len(), MAX_COALESCE_WINDOWS);
        // Past the bound, a repeat is sent on its own rather than lost.
        let mut r = record(RecordedVerdict::Deny);
        r.digest = format!("sha256:{}", MAX_COALESCE_WINDOWS + 1);
        assert!(c.offer(AlertEvent::Deny, &Arc::new(r), 1).send);
    }
}
