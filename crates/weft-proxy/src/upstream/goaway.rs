//! Notices an HTTP/2 server's GOAWAY as its bytes are read, for weft's HTTP/2 client.
//!
//! RFC 9113 §6.8: a client that has received GOAWAY must not open new streams on that
//! connection; streams above the GOAWAY's last stream id were not processed and may be
//! sent again elsewhere. The `h2` crate (0.4.20) errors the streams above the last id, but
//! tells its user nothing else and goes on opening new streams on the connection; the
//! server ignores them, and each fails only when the connection closes (hyper's client
//! has the same problem, hyper#2500). nginx sends a GOAWAY after `keepalive_requests`
//! requests on a connection (1,000 by default) and weft's own server on a graceful stop,
//! so without this every such connection lost the requests sent while it drained.
//!
//! [`Watched`] sits between the `h2` crate and the connection (above TLS) and follows the
//! frame headers as the server's bytes pass (nine bytes each, the rest skipped), keeping
//! the last stream id of a GOAWAY frame (its payload's first four bytes). The client
//! then sends no new request on the connection (the pool opens another), and knows that
//! any of its streams above that id failed unprocessed, even one opened in the instant
//! before the GOAWAY was read. Following the frames costs a few instructions per frame and
//! copies nothing.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A frame header's length (RFC 9113 §4.1).
const HEADER: usize = 9;
/// A GOAWAY's header and its last stream id.
const GOAWAY_HEAD: usize = HEADER + 4;
/// GOAWAY's frame type.
const GOAWAY: u8 = 0x7;
/// The last stream id before any GOAWAY (stream ids have 31 bits).
pub const NO_GOAWAY: u32 = u32::MAX;

/// Where the reader stands in the server's frame sequence.
#[derive(Debug, Default)]
struct Frames {
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    /// The header being read (and a GOAWAY's last stream id), when it arrives in pieces.
    head: [u8; GOAWAY_HEAD],
    /// How much of it has arrived.
    have: usize,
}

impl Frames {
    /// Follows `bytes`, the next bytes from the server; the last stream id of the last
    /// GOAWAY among them.
    fn goaway(&mut self, mut bytes: &[u8]) -> Option<u32> {
        let mut last = None;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let h = &mut self.head;
            let want = if self.have >= HEADER && h[3] == GOAWAY {
                GOAWAY_HEAD
            } else {
                HEADER
            };
            let n = (want - self.have).min(bytes.len());
            h[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < want {
                continue;
            }
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            if want == HEADER && h[3] == GOAWAY && len >= 4 {
                continue; // and read the last stream id
            }
            self.have = 0;
            self.skip = len;
            if want == GOAWAY_HEAD {
                self.skip -= 4;
                last = Some(u32::from_be_bytes([h[9], h[10], h[11], h[12]]) & 0x7fff_ffff);
            }
        }
        last
    }
}

/// An HTTP/2 client connection's IO, with the server's GOAWAY noticed on the way in.
pub struct Watched<T> {
    io: T,
    frames: Frames,
    last_stream: Arc<AtomicU32>,
}

impl<T> Watched<T> {
    /// Wraps `io`; `last_stream` (at first [`NO_GOAWAY`]) becomes the last stream id of the
    /// server's GOAWAY, the lowest if it sends several.
    pub fn new(io: T, last_stream: Arc<AtomicU32>) -> Self {
        Watched {
            io,
            frames: Frames::default(),
            last_stream,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut me.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            if let Some(last) = me.frames.goaway(&buf.filled()[before..]) {
                tracing::debug!(
                    last,
                    "upstream HTTP/2 server sent GOAWAY: no new streams on it"
                );
                me.last_stream.fetch_min(last, Ordering::AcqRel);
            }
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of `kind` on stream 1 whose payload is `payload`.
    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            0,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_goaways_last_stream_is_found_after_any_frames_however_the_bytes_are_split() {
        // SETTINGS, HEADERS, a DATA frame of 70,000 bytes full of GOAWAY's type byte, then
        // a GOAWAY (last stream 0x01020305, error code, debug data) and a PING: only the
        // fourth is a GOAWAY.
        let mut bytes = frame(0x4, &[0; 18]);
        bytes.extend(frame(0x1, &[GOAWAY; 40]));
        bytes.extend(frame(0x0, &vec![GOAWAY; 70_000]));
        let goaway = bytes.len();
        bytes.extend(frame(GOAWAY, &[0x81, 2, 3, 5, 0, 0, 0, 0, GOAWAY, GOAWAY]));
        bytes.extend(frame(0x6, &[GOAWAY; 8]));
        for split in 1..bytes.len() {
            let mut f = Frames::default();
            let first = f.goaway(&bytes[..split]);
            let second = f.goaway(&bytes[split..]);
            // Found in the first part once its header and last stream id are in it (the
            // reserved bit cleared).
            let whole = split >= goaway + GOAWAY_HEAD;
            assert_eq!(first.is_some(), whole, "split at {split}");
            assert_eq!(first.or(second), Some(0x0102_0305), "split at {split}");
            assert!(first.is_none() || second.is_none(), "split at {split}");
        }
        // Byte by byte, and without the GOAWAY, none is seen.
        let mut f = Frames::default();
        assert!(bytes[..goaway]
            .iter()
            .all(|b| f.goaway(std::slice::from_ref(b)).is_none()));
    }
}
