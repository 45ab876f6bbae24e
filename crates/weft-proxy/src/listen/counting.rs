//! A client connection that counts its bytes (published when it ends, one atomic add
//! per direction per connection) and marks progress for the idle watchdog; and a guard
//! that counts a live thing (a listener's connection, an HTTP/2 connection's stream).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::telemetry::metrics::ListenerStats;

/// Counts one live thing in a shared number (a listener's open connections, an HTTP/2
/// connection's open streams) until it is dropped.
pub(super) struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    pub(super) fn new(n: &Arc<AtomicUsize>) -> ActiveGuard {
        n.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(n.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts bytes in and out; publishes totals when the connection ends (one atomic add per
/// direction per connection, not per read).
pub(crate) struct CountingIo {
    pub(super) inner: TcpStream,
    pub(super) stats: ListenerStats,
    /// Bumped on every read and write: the idle watchdog compares it over time.
    pub(super) progress: Arc<AtomicU64>,
    pub(super) read: u64,
    pub(super) written: u64,
}

impl Drop for CountingIo {
    fn drop(&mut self) {
        self.stats.bytes_in.inc_by(self.read);
        self.stats.bytes_out.inc_by(self.written);
        self.stats.open.dec();
    }
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read += n;
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
