//! One webhook's two lanes: the bounded queues its alerts wait in (the
//! normal lane for denials and dry runs, the urgent lane for break-glass
//! uses, failed reloads and drop notices), what happens when one is full
//! (the alert is dropped, counted, logged and noticed), and its
//! coalescing windows. Delivering what the lanes hold is [`super::delivery`]'s
//! job.
//!
//! May use: `crate::audit::record`, `crate::config::alerts`, and its
//! siblings. Must never use: the layers above alerts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};

use super::coalesce::Coalescer;
use super::format::{Coalesced, ReloadFailure};
use super::Shared;
use crate::audit::record::DecisionRecord;
use crate::config::alerts::AlertEvent;

/// At most one drop notice per webhook per this interval (the first drop
/// after a quiet interval is noticed at once).
pub const DROP_NOTICE_INTERVAL: Duration = Duration::from_secs(10);

/// Which of a webhook's two queues an alert goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Denials and dry-run would-denials (coalesced).
    Normal,
    /// Break-glass uses, failed reloads, drop notices: never behind a denial.
    Urgent,
}

impl Lane {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Lane::Normal => "normal",
            Lane::Urgent => "urgent",
        }
    }
}

/// One thing to deliver.
pub(super) enum Alert {
    /// A decision; with `coalesced`, the last of `count` like it.
    Decision {
        event: AlertEvent,
        record: Arc<DecisionRecord>,
        coalesced: Option<Coalesced>,
    },
    Reload(Arc<ReloadFailure>),
    /// "Alerts were dropped": the count is read when it is delivered.
    Dropped,
}

impl Alert {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Alert::Decision { event, .. } => event.as_str(),
            Alert::Reload(_) => AlertEvent::Reload.as_str(),
            Alert::Dropped => "dropped",
        }
    }

    /// The request the alert is about, for logs.
    pub(super) fn request_id(&self) -> Option<u64> {
        match self {
            Alert::Decision { record, .. } => Some(record.request_id),
            _ => None,
        }
    }

    /// How many decisions the alert stands for, for logs.
    pub(super) fn count(&self) -> u64 {
        match self {
            Alert::Decision {
                coalesced: Some(c), ..
            } => c.count,
            _ => 1,
        }
    }
}

/// Per webhook: alerts dropped and not yet told in a drop notice.
#[derive(Default)]
pub(super) struct DropNotices {
    pub(super) unreported: AtomicU64,
    /// A notice is on the urgent lane, not yet delivered.
    pub(super) queued: AtomicBool,
    /// When the last notice was queued (ms since start; 0: never).
    last_ms: AtomicU64,
}

/// One configured webhook: its filter, its two lanes, its windows.
pub(super) struct Webhook {
    pub(super) events: Vec<AlertEvent>,
    pub(super) target: String,
    pub(super) normal: mpsc::Sender<Alert>,
    pub(super) urgent: mpsc::Sender<Alert>,
    /// `None` when coalescing is off for this webhook.
    pub(super) coalescer: Option<Coalescer>,
    pub(super) drops: Arc<DropNotices>,
}

impl Webhook {
    /// Queues `alert` on `lane`, or drops it (counted, logged, noticed).
    pub(super) fn enqueue(&self, shared: &Shared, lane: Lane, alert: Alert, now_ms: u64) {
        shared.pending.fetch_add(1, Ordering::AcqRel);
        let tx = match lane {
            Lane::Normal => &self.normal,
            Lane::Urgent => &self.urgent,
        };
        let alert = match tx.try_send(alert) {
            Ok(()) => return,
            Err(TrySendError::Full(a) | TrySendError::Closed(a)) => a,
        };
        shared.finish_one();
        let dropped = shared.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let log = match lane {
            Lane::Normal => &shared.dropped_log,
            Lane::Urgent => &shared.urgent_dropped_log,
        };
        if let Some(suppressed) = log.check(now_ms) {
            tracing::warn!(
                webhook = %self.target,
                lane = lane.as_str(),
                event = alert.name(),
                request_id = alert.request_id(),
                decisions = alert.count(),
                dropped_total = dropped,
                suppressed,
                "alert dropped: webhook queue full"
            );
        }
        self.drops.unreported.fetch_add(1, Ordering::AcqRel);
        self.notice_drops(shared, now_ms, false);
    }

    /// Queues a drop notice on the urgent lane if alerts were dropped and
    /// none is queued, at most one per [`DROP_NOTICE_INTERVAL`] (unless
    /// `now`). A notice that does not fit is tried again later.
    fn notice_drops(&self, shared: &Shared, now_ms: u64, now: bool) {
        let d = &self.drops;
        if d.unreported.load(Ordering::Acquire) == 0 {
            return;
        }
        let last = d.last_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(DROP_NOTICE_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if !now && last != 0 && now_ms < last.saturating_add(interval) {
            return;
        }
        if d.queued
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        d.last_ms.store(now_ms.max(1), Ordering::Relaxed);
        shared.pending.fetch_add(1, Ordering::AcqRel);
        if self.urgent.try_send(Alert::Dropped).is_err() {
            shared.finish_one();
            d.queued.store(false, Ordering::Release);
        }
    }

    /// Queues the summaries of the windows whose time is up (all of them
    /// with `close`), and a drop notice if one is due.
    pub(super) fn tick(&self, shared: &Shared, now_ms: u64, close: bool) {
        if let Some(c) = &self.coalescer {
            let summaries = if close {
                c.close_all()
            } else {
                c.sweep(now_ms)
            };
            for summary in summaries {
                self.enqueue(shared, Lane::Normal, summary, now_ms);
            }
        }
        self.notice_drops(shared, now_ms, close);
    }
}
