//! weft's own HTTP/2 server against the `h2` crate's client (and a silent raw peer), over
//! in-memory connections.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::*;

type Answer = Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible>;

/// Serves `handle` on the server side of an in-memory connection; returns that side's
/// task, the client side and the listener's stop switch.
fn server<F, Fut>(
    limits: ListenerLimits,
    handle: F,
) -> (JoinHandle<()>, DuplexStream, watch::Sender<bool>)
where
    F: Fn(Request<Source>) -> Fut + Send + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let (client, io) = tokio::io::duplex(256 * 1024);
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let settings = crate::http::server_settings(&limits).http2;
        serve(io, &settings, &limits, &mut stopped, handle).await;
    });
    (task, client, stop)
}

async fn client(io: DuplexStream) -> h2::client::SendRequest<Bytes> {
    let (send, conn) = h2::client::handshake(io).await.expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// The default limits with an idle timeout of `ms` milliseconds.
fn idle_after(ms: u64) -> ListenerLimits {
    ListenerLimits {
        idle_timeout: weft_model::duration::Duration::from_millis(ms),
        ..ListenerLimits::default()
    }
}

fn get(path: &str) -> Request<()> {
    Request::builder()
        .uri(format!("http://app.local{path}"))
        .body(())
        .expect("request")
}

fn boxed<B>(body: B) -> http_body_util::combinators::BoxBody<Bytes, Infallible>
where
    B: Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
{
    body.boxed()
}

/// A body of these frames, last first.
struct Frames(Vec<http_body::Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop().map(Ok))
    }
}

#[tokio::test]
async fn bodies_larger_than_every_window_go_both_ways_with_trailers() {
    // 3 MB each way: more than our stream and connection windows (1 MiB) for the upload,
    // which only arrives whole if the server gives its window back as the exchange reads
    // it, and more than the client's default window (64 KiB) for the answer, which only
    // leaves whole if the server sends as the client's flow control allows.
    const SIZE: usize = 3 << 20;
    let (_task, io, _stop) = server(
        ListenerLimits::default(),
        |req: Request<Source>| async move {
            let (head, body) = req.into_parts();
            let got = body.collect().await.expect("request body");
            let trailers = got.trailers().cloned().unwrap_or_default();
            let bytes = got.to_bytes();
            assert_eq!(head.version, http::Version::HTTP_2);
            assert_eq!(head.uri.authority().map(|a| a.as_str()), Some("app.local"));
            let mut out = HeaderMap::new();
            out.insert("grpc-status", HeaderValue::from_static("0"));
            out.insert(
                "x-received",
                HeaderValue::from(bytes.len() as u64 + trailers.len() as u64 * 1_000_000_000),
            );
            let frames = Frames(vec![
                http_body::Frame::trailers(out),
                http_body::Frame::data(Bytes::from(vec![7u8; SIZE])),
            ]);
            Ok(Response::new(boxed(frames)))
        },
    );
    let mut send = client(io).await;
    let mut req = get("/upload");
    *req.method_mut() = Method::POST;
    let (response, mut upload) = send.send_request(req, false).expect("request");
    let uploading = tokio::spawn(async move {
        let mut left = SIZE;
        while left > 0 {
            let n = left.min(64 << 10);
            upload.reserve_capacity(n);
            let granted = std::future::poll_fn(|cx| upload.poll_capacity(cx))
                .await
                .expect("capacity")
                .expect("capacity");
            let n = granted.min(n);
            upload
                .send_data(Bytes::from(vec![1u8; n]), false)
                .expect("data");
            left -= n;
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-done", HeaderValue::from_static("1"));
        upload.send_trailers(trailers).expect("trailers");
    });
    let resp = response.await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key(header::DATE));
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("response data");
        n += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    assert_eq!(n, SIZE);
    let trailers = body.trailers().await.expect("trailers").expect("some");
    assert_eq!(trailers["grpc-status"], "0");
    // The whole upload and its one trailer reached the exchange.
    assert_eq!(
        trailers["x-received"].to_str().ok(),
        Some((SIZE as u64 + 1_000_000_000).to_string().as_str())
    );
    uploading.await.expect("upload");
}

#[tokio::test]
async fn connection_fields_are_dropped_and_a_length_is_given_when_known() {
    // h2 refuses to send connection-specific fields (RFC 9113 §8.2.2): without the
    // server's stripping this response would be a reset.
    let (_task, io, _stop) = server(ListenerLimits::default(), |_req| async move {
        let mut resp = Response::new(boxed(Full::new(Bytes::from_static(b"hello"))));
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("yes"));
        Ok(resp)
    });
    let mut send = client(io).await;
    let (response, _) = send.send_request(get("/"), true).expect("request");
    let resp = response.await.expect("a response, not a reset");
    let h = resp.headers();
    assert!(!h.contains_key(header::CONNECTION));
    assert!(!h.contains_key("keep-alive"));
    assert!(!h.contains_key(header::TRANSFER_ENCODING));
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(h[header::CONTENT_LENGTH], "5");
    let mut body = resp.into_body();
    let mut got = BytesMut::new();
    while let Some(chunk) = body.data().await {
        got.extend_from_slice(&chunk.expect("data"));
    }
    assert_eq!(&got[..], b"hello");
}

/// Sets its flag when dropped: the exchange was cancelled.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_reset_from_the_client_cancels_the_exchange() {
    let cancelled = Arc::new(AtomicBool::new(false));
    let (started_tx, started) = tokio::sync::mpsc::unbounded_channel();
    let flag = cancelled.clone();
    let (_task, io, _stop) = server(ListenerLimits::default(), move |req| {
        let slow = req.uri().path() == "/slow";
        let guard = Dropped(flag.clone());
        let started = started_tx.clone();
        async move {
            if slow {
                let _guard = guard;
                let _ = started.send(());
                std::future::pending::<()>().await;
            }
            Ok(Response::new(boxed(Full::new(Bytes::new()))))
        }
    });
    let mut send = client(io).await;
    let (_response, mut stream) = send.send_request(get("/slow"), false).expect("request");
    let mut started = started;
    started.recv().await.expect("the exchange started");
    assert!(!cancelled.load(Ordering::SeqCst));
    stream.send_reset(Reason::CANCEL);
    let cancelling = async {
        while !cancelled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), cancelling)
        .await
        .expect("the exchange is dropped");
    // The connection serves on.
    let (response, _) = send.send_request(get("/next"), true).expect("request");
    assert_eq!(response.await.expect("answered").status(), StatusCode::OK);
}

#[tokio::test]
async fn stopping_lets_a_stream_in_flight_finish_and_then_closes() {
    let (release, released) = tokio::sync::watch::channel(false);
    let (task, io, stop) = server(ListenerLimits::default(), move |_req| {
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|r| *r).await;
            Ok(Response::new(boxed(Full::new(Bytes::from_static(b"done")))))
        }
    });
    let mut send = client(io).await;
    let (response, _) = send.send_request(get("/"), true).expect("request");
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.send(true).expect("stop");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!task.is_finished(), "closed with a stream in flight");
    release.send(true).expect("release");
    let resp = response.await.expect("the stream in flight is answered");
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the connection closes once its last stream is done")
        .expect("task");
}

/// The client's preface and an empty SETTINGS frame, then silence: a peer that never
/// reads, so never answers a ping.
async fn silent_peer(mut io: DuplexStream) -> DuplexStream {
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    io.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    io
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_does_not_answer_pings_is_closed() {
    let limits = idle_after(3_600_000);
    let (task, io, _stop) = server(limits, |_req| async move {
        Ok(Response::new(boxed(Full::new(Bytes::new()))))
    });
    let start = Instant::now();
    let mut io = silent_peer(io).await;
    // Drain what the server writes (its settings, the ping) without answering, so its
    // writes never block on a full pipe.
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    task.await.expect("the server side ends");
    let took = start.elapsed();
    // A ping after a minute, 20 seconds for its answer, a moment to say goodbye.
    assert!(took >= KEEP_ALIVE + KEEP_ALIVE_TIMEOUT, "{took:?}");
    assert!(
        took <= KEEP_ALIVE + KEEP_ALIVE_TIMEOUT + IDLE_GRACE,
        "{took:?}"
    );
    drain.abort();
}

#[tokio::test(start_paused = true)]
async fn a_connection_without_streams_is_closed_after_the_idle_timeout_pings_or_not() {
    // Five minutes, so the server pings (every minute) and the client answers four
    // times: answered pings do not keep an idle connection.
    let idle = Duration::from_secs(300);
    let limits = idle_after(300_000);
    let (task, io, _stop) = server(limits, |_req| async move {
        Ok(Response::new(boxed(Full::new(Bytes::from_static(b"ok")))))
    });
    let mut send = client(io).await;
    let (response, _) = send.send_request(get("/"), true).expect("request");
    let mut body = response.await.expect("answered").into_body();
    while body.data().await.is_some() {}
    let answered = Instant::now();
    task.await.expect("the server side ends");
    let took = answered.elapsed();
    // The first check after the answer may come up to one period later.
    assert!(took >= idle, "{took:?}");
    assert!(took <= 2 * idle + IDLE_GRACE, "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stream_longer_than_the_idle_timeout_keeps_its_connection() {
    let limits = idle_after(5_000);
    let (task, io, _stop) = server(limits, |_req| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(Response::new(boxed(Full::new(Bytes::from_static(b"late")))))
    });
    let mut send = client(io).await;
    let (response, _) = send.send_request(get("/slow"), true).expect("request");
    // Were the open stream not counted, the connection would be closed a second after
    // the first idle check, and the stream with it.
    let resp = response
        .await
        .expect("answered after six idle periods, not cut off");
    assert_eq!(resp.status(), StatusCode::OK);
    drop(task);
}

#[test]
fn the_preface_is_recognised_in_any_piece_the_http1_parser_gives_up_on() {
    let limits = crate::listen::h1::HeadLimits {
        fields: 100,
        bytes: 65_536,
    };
    let whole = [PREFACE, &[0, 0, 0, 4, 0, 0, 0, 0, 0][..]].concat();
    for n in 1..=whole.len() {
        let mut buf = BytesMut::from(&whole[..n]);
        match crate::listen::h1::parse(&mut buf, limits) {
            // Not enough to judge yet: more is read first.
            crate::listen::h1::Parsed::Partial => {}
            crate::listen::h1::Parsed::HandOff => {
                assert!(
                    is_preface(&buf),
                    "{n} bytes handed off but not taken for HTTP/2"
                )
            }
            crate::listen::h1::Parsed::Request(..) => panic!("{n} bytes read as HTTP/1.1"),
        }
    }
    assert!(!is_preface(b"GET / HTTP/1.1\r\n"));
    assert!(!is_preface(b"PRI * HTTP/1.1\r\n"));
    assert!(!is_preface(b""));
}
