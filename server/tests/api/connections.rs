//! HTTP_MAX_CONNECTIONS: connections beyond the limit wait for one to close.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::spawn_app_with;

/// Sends a keep-alive request for an unknown route (no database work).
async fn send(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /nowhere HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
}

/// Reads an answer's head and returns its status line.
async fn status_line(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "connection closed before an answer");
        answer.extend_from_slice(&buffer[..n]);
    }
    let head = String::from_utf8_lossy(&answer);
    head.lines().next().unwrap().to_owned()
}

#[tokio::test]
async fn a_connection_beyond_the_limit_is_served_once_another_closes() {
    let app = spawn_app_with(|settings| settings.http_max_connections = 2).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut first = TcpStream::connect(&address).await.unwrap();
    let mut second = TcpStream::connect(&address).await.unwrap();
    for stream in [&mut first, &mut second] {
        send(stream).await;
        let status = status_line(stream).await;
        assert!(status.ends_with("404 Not Found"), "{status}");
    }

    // The kernel completes the third handshake, but the server does not take the
    // connection while two are open: its request waits unanswered.
    let mut third = TcpStream::connect(&address).await.unwrap();
    send(&mut third).await;
    let early = tokio::time::timeout(Duration::from_millis(700), status_line(&mut third)).await;
    assert!(early.is_err(), "served beyond the limit: {early:?}");

    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(10), status_line(&mut third))
        .await
        .expect("served once a connection closed");
    assert!(answer.ends_with("404 Not Found"), "{answer}");
    // The connection that stayed open is still served.
    send(&mut second).await;
    assert!(status_line(&mut second).await.ends_with("404 Not Found"));
}
