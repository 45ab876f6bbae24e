//! `weft echo`: the test backend, on a socket, until a signal.

use std::net::SocketAddr;

use anyhow::Context;

use crate::process::wait_for_signal;

pub(crate) async fn run(listen: SocketAddr, opts: weft_echo::EchoOptions) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    println!(
        "{}",
        serde_json::json!({ "event": "ready", "address": addr.to_string(), "name": opts.name })
    );
    weft_echo::serve(listener, opts, async {
        let _ = wait_for_signal().await;
    })
    .await;
    Ok(())
}
