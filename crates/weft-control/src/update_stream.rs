//! `Discovery/Stream` served without tonic's response encoder.
//!
//! tonic encodes a response stream into one buffer per stream that keeps the size of the
//! largest message it ever held (a proxy's first update, its whole slice) for the
//! stream's life: ~4.4 KB per connected proxy, the largest item of a proxy's cost on the
//! server (docs/benchmarks.md, dhat). Here each update is framed (`[0][length][protobuf]`)
//! in a buffer of its own size, freed as soon as HTTP/2 has sent it; the request side is
//! still tonic's `Streaming` decoder, and the method is the same [`Discovery::stream`].
//! The other methods stay on tonic's generated server.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use tonic::{codec::Codec, Status};
use weft_api::codec::SmallBufferCodec;
use weft_api::discovery::{discovery_server::Discovery, ProxyMessage, Update};

use crate::discovery::DiscoveryServer;

/// The route this serves.
pub const PATH: &str = "/weft.discovery.v1.Discovery/Stream";

/// See the module docs.
#[derive(Clone)]
pub struct StreamService {
    server: Arc<DiscoveryServer>,
    max_message: usize,
}

impl StreamService {
    /// Serves `server`'s stream; proxy messages larger than `max_message` end the stream.
    pub fn new(server: Arc<DiscoveryServer>, max_message: usize) -> StreamService {
        StreamService {
            server,
            max_message,
        }
    }
}

type Updates = Pin<Box<dyn tokio_stream::Stream<Item = Result<Update, Status>> + Send>>;

impl tower_service::Service<http::Request<axum::body::Body>> for StreamService {
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let (server, max) = (self.server.clone(), self.max_message);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let decoder = SmallBufferCodec::<Update, ProxyMessage>::default().decoder();
            let inbound = tonic::codec::Streaming::new_request(decoder, body, None, Some(max));
            let request = tonic::Request::from_http(http::Request::from_parts(parts, inbound));
            let response = match server.stream(request).await {
                Ok(r) => r,
                Err(status) => return Ok(status.into_http()),
            };
            let (metadata, updates, _) = response.into_parts();
            let mut http = http::Response::new(axum::body::Body::new(Frames {
                updates: Box::pin(updates),
                done: false,
            }));
            *http.headers_mut() = metadata.into_headers();
            http.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            Ok(http)
        })
    }
}

/// One gRPC message: the uncompressed flag, the length, the protobuf, in a buffer of
/// exactly that size.
pub fn frame(update: &Update) -> Bytes {
    let len = update.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // Encoding into a buffer of the exact length cannot fail.
    let _ = update.encode(&mut buf);
    buf.freeze()
}

/// The response body: a data frame per update, then the status as trailers.
struct Frames {
    updates: Updates,
    done: bool,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let status = match self.updates.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(update))) => {
                return Poll::Ready(Some(Ok(Frame::data(frame(&update)))))
            }
            Poll::Ready(Some(Err(status))) => status,
            Poll::Ready(None) => Status::ok(""),
        };
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_the_grpc_message_in_a_buffer_of_its_own_size() {
        let update = Update {
            version: 42,
            removes: vec!["Service/gone".into()],
            ..Default::default()
        };
        let bytes = frame(&update);
        assert_eq!(bytes[0], 0, "not compressed");
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 5);
        assert_eq!(Update::decode(&bytes[5..]).unwrap(), update);
    }
}
