//! Event statistics: counted by the writer, stored in the trailer, recomputed by the
//! reader for a recording that was cut short.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::EventKind;

/// Statistics of a recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Events of each kind; every kind is present, with zero counts too.
    pub per_kind: BTreeMap<EventKind, u64>,
    pub total_events: u64,
    /// Guest ring-0 instructions recorded, as the recorder reported at the end. For an
    /// incomplete recording: the `icount` of the last recovered event. Without an
    /// instruction counter (see `counted`) it is the ordinal of the last deterministic
    /// exit instead (see [`crate::icount`]).
    pub kernel_instructions: u64,
    /// Whether the recording's positions are instruction counts: false for one made
    /// without an instruction counter.
    pub counted: bool,
    /// Wall-clock length of the recording in seconds (0 when unknown: incomplete).
    pub duration_s: f64,
    /// Why recording ended ("guest powered off", "interrupted (SIGINT)", "error: ...").
    pub end_reason: String,
    /// Whether the recording was finished (trailer and footer intact).
    pub complete: bool,
    /// Size of the whole file in bytes.
    pub file_size: u64,
    /// Bytes of event chunk sections (headers included).
    pub event_bytes: u64,
    /// `file_size / total_events` (0 without events).
    pub bytes_per_event: f64,
}

impl Stats {
    pub fn count(&self, kind: EventKind) -> u64 {
        self.per_kind.get(&kind).copied().unwrap_or(0)
    }

    /// Compressed event-chunk bytes per event (0 without events).
    pub fn event_bytes_per_event(&self) -> f64 {
        ratio(self.event_bytes, self.total_events)
    }

    /// One JSON object: `total_events`, `kernel_instructions` (null for a recording made
    /// without an instruction counter, which has `deterministic_exits` instead),
    /// `duration_s`, `events` (every kind's name to its count), `file_size`,
    /// `event_bytes`, `bytes_per_event`, `end_reason`, `complete`.
    pub fn to_json(&self) -> serde_json::Value {
        let events: serde_json::Map<String, serde_json::Value> = EventKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), self.count(*k).into()))
            .collect();
        let (instructions, exits) = if self.counted {
            (Some(self.kernel_instructions), None)
        } else {
            (None, Some(self.kernel_instructions))
        };
        let mut v = serde_json::json!({
            "total_events": self.total_events,
            "kernel_instructions": instructions,
            "duration_s": self.duration_s,
            "events": events,
            "file_size": self.file_size,
            "event_bytes": self.event_bytes,
            "bytes_per_event": self.bytes_per_event,
            "end_reason": self.end_reason,
            "complete": self.complete,
        });
        if let (Some(exits), Some(obj)) = (exits, v.as_object_mut()) {
            obj.insert("deterministic_exits".into(), exits.into());
        }
        v
    }

    pub(crate) fn from_counts(counts: &KindCounts, total_events: u64) -> Self {
        Stats {
            per_kind: counts.to_map(),
            total_events,
            kernel_instructions: 0,
            counted: true,
            duration_s: 0.0,
            end_reason: String::new(),
            complete: false,
            file_size: 0,
            event_bytes: 0,
            bytes_per_event: 0.0,
        }
    }

    pub(crate) fn set_sizes(&mut self, file_size: u64, event_bytes: u64) {
        self.file_size = file_size;
        self.event_bytes = event_bytes;
        self.bytes_per_event = ratio(file_size, self.total_events);
    }
}

fn ratio(bytes: u64, events: u64) -> f64 {
    if events == 0 {
        0.0
    } else {
        bytes as f64 / events as f64
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.complete {
            "complete"
        } else {
            "INCOMPLETE"
        };
        writeln!(f, "Recording: {state}, ended: {}", self.end_reason)?;
        writeln!(f, "{:<18} {:>14} {:>8}", "event", "count", "percent")?;
        let total = self.total_events;
        for kind in EventKind::ALL {
            let n = self.count(kind);
            if n == 0 {
                continue;
            }
            let pct = 100.0 * n as f64 / total.max(1) as f64;
            writeln!(f, "{:<18} {:>14} {:>7.2}%", kind.name(), n, pct)?;
        }
        let total_pct = if total == 0 { 0.0 } else { 100.0 };
        writeln!(f, "{:<18} {:>14} {:>7.2}%", "total", total, total_pct)?;
        if self.counted {
            writeln!(f, "kernel instructions: {}", self.kernel_instructions)?;
        } else {
            writeln!(
                f,
                "deterministic exits: {} (recorded without an instruction counter)",
                self.kernel_instructions
            )?;
        }
        writeln!(f, "duration: {:.3} s", self.duration_s)?;
        write!(
            f,
            "file size: {} bytes ({:.2} bytes/event, events {:.2} bytes/event)",
            self.file_size,
            self.bytes_per_event,
            self.event_bytes_per_event()
        )
    }
}

/// Per-kind counters, indexed by [`EventKind::index`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KindCounts(pub [u64; EventKind::ALL.len()]);

impl KindCounts {
    pub fn add(&mut self, kind: EventKind) {
        self.0[kind.index()] += 1;
    }

    pub fn sum(&self) -> Option<u64> {
        self.0.iter().try_fold(0u64, |a, b| a.checked_add(*b))
    }

    pub fn to_map(self) -> BTreeMap<EventKind, u64> {
        EventKind::ALL
            .iter()
            .map(|k| (*k, self.0[k.index()]))
            .collect()
    }
}

/// The statistics as the trailer stores them (sizes are measured by the reader).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredStats {
    pub counts: KindCounts,
    pub total_events: u64,
    pub kernel_instructions: u64,
    pub duration_s: f64,
    pub end_reason: String,
    pub event_bytes: u64,
}
