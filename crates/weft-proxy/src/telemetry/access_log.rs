//! JSON-lines access log that never blocks the request path.
//!
//! Requests hand a finished line to a bounded queue with `try_send`; a dedicated thread
//! writes and flushes. When the writer falls behind (a slow disk, a blocked pipe), lines are
//! dropped and counted in `weft_access_log_dropped_total` rather than slowing traffic.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// Lines buffered between requests and the writer thread.
pub const QUEUE_LINES: usize = 16 * 1024;

/// Where the log goes.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// Append to a file.
    File(std::path::PathBuf),
}

/// The sending half, cheap to clone into every connection.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: Counter,
}

impl AccessLog {
    /// Opens the sink and starts the writer thread.
    pub fn start(sink: Sink, dropped: Counter) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match sink {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        Self::start_with(out, dropped)
    }

    fn start_with(out: Box<dyn Write + Send>, dropped: Counter) -> std::io::Result<AccessLog> {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("weft-access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queues one record; drops it (and counts) if the queue is full.
    pub fn log(&self, record: &Record<'_>) {
        let Ok(line) = serde_json::to_string(record) else {
            return;
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let mut next = Some(line);
        // Drain what is queued, then flush once: one syscall for a burst of lines.
        while let Some(line) = next {
            if writeln!(out, "{line}").is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}

/// One access log line.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Request start, RFC 3339 UTC.
    pub start_time: String,
    /// Listener (`gateway/listener`).
    pub listener: &'a str,
    /// `HTTPRoute` name, empty if unrouted.
    pub route: &'a str,
    /// Service name, empty if none was chosen.
    pub service: &'a str,
    /// Endpoint address, empty if none was chosen.
    pub upstream: String,
    /// Client address.
    pub client: String,
    /// Method.
    pub method: &'a str,
    /// Host.
    pub authority: &'a str,
    /// Path and query as received.
    pub path: &'a str,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: &'static str,
    /// Status sent to the client.
    pub status: u16,
    /// The `x-weft-error` code, if the proxy answered for itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// Milliseconds from request received to response body finished.
    pub duration_ms: f64,
    /// `x-request-id`.
    pub request_id: &'a str,
    /// `user-agent`.
    pub user_agent: &'a str,
    /// The trace this request belongs to (W3C, 32 hex digits).
    pub trace_id: &'a str,
    /// This hop's span in it (16 hex digits).
    pub span_id: &'a str,
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A destination that never accepts a byte (a stuck disk, a pipe nobody reads).
    struct Stuck(std::sync::mpsc::Receiver<()>);

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv(); // blocks until the test ends
            Err(std::io::Error::other("closed"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_destination_drops_lines_instead_of_blocking() {
        let (_hold, rx) = std::sync::mpsc::channel::<()>();
        let dropped = Counter::default();
        let log = AccessLog::start_with(Box::new(Stuck(rx)), dropped.clone()).unwrap();
        let record = Record {
            start_time: String::new(),
            listener: "l",
            route: "r",
            service: "s",
            upstream: String::new(),
            client: String::new(),
            method: "GET",
            authority: "a",
            path: "/",
            protocol: "HTTP/1.1",
            status: 200,
            error: None,
            duration_ms: 1.0,
            request_id: "id",
            user_agent: "ua",
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            span_id: "00f067aa0ba902b7",
        };
        // The writer thread absorbs lines into its 64 KiB buffer until the first write to
        // the stuck destination blocks it; the queue then takes QUEUE_LINES more; every
        // further line must be dropped at once rather than wait. (If `log` blocked, this loop
        // would never finish and the test would hang, not pass.)
        let line = serde_json::to_string(&record).unwrap().len() + 1;
        let absorbed_at_most = (64 * 1024) / line + 2;
        let extra = 2000;
        for _ in 0..QUEUE_LINES + extra {
            log.log(&record);
        }
        let dropped = dropped.get() as usize;
        assert!(
            dropped <= extra,
            "dropped {dropped}: more than the overflow"
        );
        assert!(
            dropped + absorbed_at_most >= extra,
            "dropped only {dropped} of {extra} overflowing lines"
        );
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
