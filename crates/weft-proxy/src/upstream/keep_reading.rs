//! An HTTP/1.1 upstream connection whose write side may die before its read side.
//!
//! A server that refuses an upload early (`413` before the whole body arrived) answers and
//! closes; our next writes fail with `EPIPE` or `ECONNRESET` while its answer is already
//! in our socket. hyper fails the exchange on the write error without reading that
//! answer, and the client would get a 502 for what the server said plainly (most of the
//! time: it is a race). [`KeepReading`] takes the write side's death quietly — the rest of
//! the body is discarded, as a server's lingering close would — so hyper goes on to read
//! the answer and it is forwarded. If no answer comes, the read side fails as before (the
//! same 502). A connection whose writes died is marked ([`KeepReading::dead_writes`]) and
//! never pooled again.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `T`, with write errors that mean "the peer closed" swallowed (see the module docs).
#[derive(Debug)]
pub struct KeepReading<T> {
    inner: T,
    dead: Arc<AtomicBool>,
}

impl<T> KeepReading<T> {
    /// Wraps a fresh connection.
    pub fn new(inner: T) -> Self {
        KeepReading {
            inner,
            dead: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set once a write found the peer gone: the connection must not be reused.
    pub fn dead_writes(&self) -> Arc<AtomicBool> {
        self.dead.clone()
    }
}

/// Whether a write error means only that the peer stopped reading.
fn peer_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for KeepReading<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> KeepReading<T> {
    /// The outcome of a write of `len` bytes: a peer-closed error becomes "written".
    fn absorb(&self, r: Poll<io::Result<usize>>, len: usize) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Err(e)) if peer_closed(&e) => {
                if !self.dead.swap(true, Ordering::Relaxed) {
                    tracing::debug!(error = %e, "upstream stopped reading; reading its answer");
                }
                Poll::Ready(Ok(len))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for KeepReading<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.dead.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.absorb(r, buf.len())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if this.dead.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(len));
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.absorb(r, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.inner).poll_flush(cx).map_ok(|()| 0);
        this.absorb(r, 0).map_ok(|_| ())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
