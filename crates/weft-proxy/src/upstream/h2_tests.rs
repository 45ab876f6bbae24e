//! weft's own HTTP/2 client against the `h2` crate's server, over an in-memory connection.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::DuplexStream;

use super::*;
use crate::upstream::body::Source;
use crate::upstream::retry::Breaker;

/// A connection to an in-memory server; `serve` gets the server's side.
async fn connect<F, Fut>(serve: F) -> (Conn, tokio::task::JoinHandle<()>)
where
    F: FnOnce(DuplexStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (client, server) = tokio::io::duplex(256 * 1024);
    let server = tokio::spawn(async move { serve(server).await });
    let breaker = Breaker::new(&weft_model::CircuitBreaker {
        max_requests: 100,
        max_connections: 10,
        max_retries: 1,
    });
    let permit = breaker.connection().expect("a connection slot");
    let conn = Conn::open(UpstreamIo::Memory(client), permit)
        .await
        .expect("handshake");
    (conn, server)
}

fn request(method: &str, body: RequestBody) -> Request<RequestBody> {
    Request::builder()
        .method(method)
        .uri("http://app.local/x")
        .body(body)
        .expect("request")
}

/// A body given in 64 KiB frames, as a client's body arrives.
struct Frames(Bytes);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = crate::upstream::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let n = self.0.len().min(64 * 1024);
        std::task::Poll::Ready((n > 0).then(|| Ok(http_body::Frame::data(self.0.split_to(n)))))
    }
}

fn streamed(bytes: Bytes) -> RequestBody {
    let body = Source::Other(Frames(bytes).boxed());
    RequestBody::new(body, None, Duration::from_secs(30)).0
}

/// Reads a whole request body on the server side, giving its window back.
async fn read_all(mut body: ::h2::RecvStream) -> usize {
    let mut n = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("request data");
        n += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    n
}

/// A connection to a server that resets every stream with `reason`.
async fn resetting(reason: ::h2::Reason) -> (Conn, tokio::task::JoinHandle<()>) {
    connect(move |io| async move {
        let mut h2 = ::h2::server::handshake(io).await.expect("server handshake");
        while let Some(accepted) = h2.accept().await {
            let (_req, mut respond) = accepted.expect("stream");
            respond.send_reset(reason);
        }
    })
    .await
}

/// Drops the last handle of `conn` and waits for its server to see the connection close.
async fn closes(conn: Conn, server: tokio::task::JoinHandle<()>) {
    drop(conn);
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the connection was not closed when its last handle went")
        .expect("server");
}

#[tokio::test]
async fn bodies_larger_than_every_window_go_both_ways_with_trailers() {
    // 3 MB each way: more than the server's default stream window (64 KiB) for the
    // upload, and more than our own stream window (2 MiB) for the answer, which only
    // arrives whole if the client gives its window back as it reads.
    const SIZE: usize = 3 << 20;
    let (conn, server) = connect(|io| async move {
        let mut h2 = ::h2::server::handshake(io).await.expect("server handshake");
        while let Some(accepted) = h2.accept().await {
            let (req, mut respond) = accepted.expect("stream");
            tokio::spawn(async move {
                let got = read_all(req.into_body()).await;
                let resp = Response::builder()
                    .header("x-got", got.to_string())
                    .body(())
                    .unwrap();
                let mut send = respond.send_response(resp, false).expect("response");
                send.reserve_capacity(SIZE);
                let mut left = Bytes::from(vec![7u8; SIZE]);
                while !left.is_empty() {
                    let n = std::future::poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .expect("capacity")
                        .expect("capacity");
                    let chunk = left.split_to(n.min(left.len()));
                    send.send_data(chunk, false).expect("data");
                }
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                send.send_trailers(trailers).expect("trailers");
            });
        }
    })
    .await;
    let body = streamed(Bytes::from(vec![1u8; SIZE]));
    let resp = conn
        .round_trip(request("POST", body))
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-got"], SIZE.to_string().as_str());
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes().len(), SIZE);
    // A bodiless request on the same connection, then the last handle goes: the
    // connection closes (the server's accept loop ends) rather than idling forever.
    let resp = conn
        .round_trip(request("GET", RequestBody::Bytes(None)))
        .await
        .expect("answer");
    assert_eq!(resp.headers()["x-got"], "0");
    drop(resp);
    closes(conn, server).await;
}

#[tokio::test]
async fn a_reset_stream_is_a_sent_failure() {
    let (conn, _server) = resetting(::h2::Reason::INTERNAL_ERROR).await;
    match conn
        .round_trip(request("GET", RequestBody::Bytes(None)))
        .await
    {
        Err(Failed::Sent(e)) => assert_eq!(e, ProxyError::UpstreamReset),
        other => panic!("a reset stream: {other:?}"),
    }
}

#[tokio::test]
async fn a_closed_connection_hands_the_request_back_whole() {
    // The server goes away right after the handshake.
    let (conn, server) = connect(|io| async move {
        let h2 = ::h2::server::handshake(io).await.expect("server handshake");
        drop(h2);
    })
    .await;
    server.await.expect("server");
    while !conn.is_closed() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let body = RequestBody::Bytes(Some(Bytes::from_static(b"kept")));
    match conn.round_trip(request("PUT", body)).await {
        Err(Failed::Unsent(req, e)) => {
            assert_eq!(e, ProxyError::UpstreamReset);
            assert_eq!(req.method(), "PUT");
            let body = req.into_body().into_bytes().await.expect("body");
            assert_eq!(body, "kept", "the unsent request comes back whole");
        }
        other => panic!("a closed connection: {other:?}"),
    }
}

/// A body that gives one chunk and then waits forever (a client that stopped sending);
/// sets its flag when dropped.
struct Stalled(Option<Bytes>, std::sync::Arc<std::sync::atomic::AtomicBool>);

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = crate::upstream::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(chunk) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk)))),
            None => std::task::Poll::Pending,
        }
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_complete_answer_cancels_the_rest_of_the_upload() {
    // The server answers in full without reading the upload and does not reset the
    // stream; the client's body has stopped coming. Once the answer has been read, the
    // upload is cancelled (the server sees CANCEL) and the client's body is let go.
    let (seen_tx, seen) = tokio::sync::oneshot::channel();
    let (conn, _server) = connect(|io| async move {
        let mut h2 = ::h2::server::handshake(io).await.expect("server handshake");
        let (req, mut respond) = h2.accept().await.expect("a stream").expect("stream");
        respond
            .send_response(Response::new(()), true)
            .expect("response");
        tokio::spawn(async move { while h2.accept().await.is_some() {} });
        let mut body = req.into_body();
        let reset = loop {
            match body.data().await {
                Some(Ok(d)) => {
                    let _ = body.flow_control().release_capacity(d.len());
                }
                Some(Err(e)) => break e.reason(),
                None => break None,
            }
        };
        let _ = seen_tx.send(reset);
    })
    .await;
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stalled = Stalled(Some(Bytes::from_static(b"first")), dropped.clone());
    let body = RequestBody::new(
        Source::Other(stalled.boxed()),
        None,
        Duration::from_secs(30),
    )
    .0;
    let resp = conn
        .round_trip(request("POST", body))
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.expect("body");
    let reset = tokio::time::timeout(Duration::from_secs(10), seen)
        .await
        .expect("the upload was not cancelled")
        .expect("server");
    assert_eq!(reset, Some(::h2::Reason::CANCEL));
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
}

#[tokio::test]
async fn after_the_servers_goaway_no_new_request_goes_on_its_connection() {
    // The server holds one stream open and starts a graceful shutdown (GOAWAY). The
    // client hears it: the next request comes back unsent, to go on a new connection,
    // rather than being opened on a connection that will ignore it; the open stream
    // still finishes. (h2 alone would open the new stream, and it would fail only when
    // the connection closed.)
    let (answer, answer_now) = tokio::sync::oneshot::channel::<()>();
    let (conn, server) = connect(|io| async move {
        let mut h2 = ::h2::server::handshake(io).await.expect("server handshake");
        let (_req, mut respond) = h2.accept().await.expect("a stream").expect("stream");
        h2.graceful_shutdown();
        tokio::spawn(async move {
            let _ = answer_now.await;
            respond
                .send_response(Response::new(()), true)
                .expect("response");
        });
        let mut later = 0;
        while let Some(accepted) = h2.accept().await {
            later += usize::from(accepted.is_ok());
        }
        assert_eq!(later, 0, "a stream was opened after the GOAWAY");
    })
    .await;
    let held = {
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.round_trip(request("GET", RequestBody::Bytes(None)))
                .await
                .map(|r| r.status())
        })
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        while !conn.is_closed() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the client did not hear the GOAWAY");
    match conn
        .round_trip(request("GET", RequestBody::Bytes(None)))
        .await
    {
        Err(Failed::Unsent(req, _)) => assert_eq!(req.uri().path(), "/x"),
        other => panic!("a request after GOAWAY: {other:?}"),
    }
    answer.send(()).expect("server");
    let status = held.await.expect("task").expect("the open stream finishes");
    assert_eq!(status, StatusCode::OK);
    closes(conn, server).await;
}

#[tokio::test]
async fn a_refused_stream_comes_back_to_be_sent_again_whatever_its_method() {
    // REFUSED_STREAM: the server did nothing with the request (RFC 9113 §8.7), so even a
    // POST may go again; its head and its body (read in full) come back as they were.
    // The second time it is answered, on the same connection.
    let (conn, _server) = connect(|io| async move {
        let mut h2 = ::h2::server::handshake(io).await.expect("server handshake");
        let mut first = true;
        while let Some(accepted) = h2.accept().await {
            let (req, mut respond) = accepted.expect("stream");
            if std::mem::take(&mut first) {
                respond.send_reset(::h2::Reason::REFUSED_STREAM);
                continue;
            }
            tokio::spawn(async move {
                let tag = req.headers()["x-tag"].clone();
                let got = read_all(req.into_body()).await;
                let resp = Response::builder()
                    .header("x-tag", tag)
                    .header("x-got", got.to_string())
                    .body(())
                    .unwrap();
                respond.send_response(resp, true).expect("response");
            });
        }
    })
    .await;
    let mut req = request(
        "POST",
        RequestBody::Bytes(Some(Bytes::from_static(b"twice"))),
    );
    req.headers_mut()
        .insert("x-tag", HeaderValue::from_static("kept"));
    let again = match conn.round_trip(req).await {
        Err(Failed::Refused(again)) => again,
        other => panic!("a refused stream: {other:?}"),
    };
    assert_eq!(again.method(), "POST");
    assert_eq!(again.uri(), "http://app.local/x");
    let resp = conn.round_trip(*again).await.expect("answer");
    assert_eq!(resp.headers()["x-tag"], "kept");
    assert_eq!(resp.headers()["x-got"], "5");

    // A streamed body cannot be sent again: a refused stream is then a failure.
    let (conn, _server) = resetting(::h2::Reason::REFUSED_STREAM).await;
    let body = streamed(Bytes::from_static(b"once"));
    match conn.round_trip(request("POST", body)).await {
        Err(Failed::Sent(e)) => assert_eq!(e, ProxyError::UpstreamReset),
        other => panic!("a refused streamed upload: {other:?}"),
    }
}
