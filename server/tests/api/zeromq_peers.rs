//! Hostile ZeroMQ peers on the server's PUB port: whatever they send, they are dropped
//! and the server keeps serving and publishing.

use std::time::Duration;

use server::publisher::{Limits, Publisher};
use shared::testing::eventually;
use shared::testing::zmtp::{self, closed_within, handshake, read_frame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::{salesforce, spawn_app, spawn_app_with};

/// Comfortably above the server's 5 s handshake interval.
const DROPPED: Duration = Duration::from_secs(15);

fn hello() -> Vec<u8> {
    [zmtp::greeting("NULL", false), zmtp::ready("SUB")].concat()
}

#[tokio::test]
async fn hostile_frames_close_that_peer_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    let address = zmtp::address(&app.zmq_endpoint).to_owned();
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        (
            "a frame announcing 2^44 bytes",
            [hello(), zmtp::long_frame(1 << 44), vec![0; 1024]].concat(),
        ),
        (
            "a subscription longer than any topic",
            [hello(), zmtp::long_frame(1 << 20), vec![1; 64 * 1024]].concat(),
        ),
        ("the PLAIN mechanism", zmtp::greeting("PLAIN", false)),
        ("the CURVE mechanism", zmtp::greeting("CURVE", false)),
        ("garbage", vec![b'A'; 4096]),
        (
            "a truncated greeting",
            zmtp::greeting("NULL", false)[..30].to_vec(),
        ),
        (
            "a message before READY",
            [zmtp::greeting("NULL", false), zmtp::subscribe(b"stripe")].concat(),
        ),
        (
            "a second READY",
            [hello(), zmtp::ready("SUB"), zmtp::subscribe(b"stripe")].concat(),
        ),
    ];
    for (attack, bytes) in attacks {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        // The server may close before all of it is written.
        let _ = stream.write_all(&bytes).await;
        assert!(
            closed_within(&mut stream, DROPPED).await,
            "the server kept a peer that sent {attack}"
        );
    }
    let (_stream, answer) = handshake(&address).await;
    assert!(
        answer.is_some_and(|body| body.starts_with(b"\x05READY")),
        "a well-behaved peer is still admitted"
    );
    assert_eq!(app.get("/api/v1/health").await.status().as_u16(), 200);
    let created = app.create_customer("c-1", "Ada", "ada@example.com").await;
    assert_eq!(created["tasks"].as_array().unwrap().len(), 1);
}

/// Reads messages (skipping commands such as heartbeats) on a task of its own and hands
/// over each message's frames.
fn messages(mut stream: TcpStream) -> tokio::sync::mpsc::UnboundedReceiver<Vec<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut message = Vec::new();
        while let Some(frame) = read_frame(&mut stream).await {
            if frame.command {
                continue;
            }
            message.push(frame.body);
            if !frame.more && tx.send(std::mem::take(&mut message)).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test]
async fn only_the_providers_topics_can_be_subscribed() {
    let app = spawn_app_with(|s| s.common.salesforce = Some(salesforce())).await;
    let (mut stream, answer) = handshake(zmtp::address(&app.zmq_endpoint)).await;
    assert!(answer.is_some_and(|body| body.starts_with(b"\x05READY")));
    // Everything, prefixes of a real topic and thousands of made-up topics, then stripe
    // last: once stripe messages arrive, the others were read and (not) applied.
    let mut subscriptions = [b"".as_slice(), b"s", b"sales", b"salesforc"]
        .iter()
        .flat_map(|topic| zmtp::subscribe(topic))
        .collect::<Vec<u8>>();
    for n in 0..5_000 {
        subscriptions.extend(zmtp::subscribe(format!("made-up-{n}").as_bytes()));
    }
    subscriptions.extend(zmtp::subscribe(b"stripe"));
    stream.write_all(&subscriptions).await.unwrap();

    let mut messages = messages(stream);

    // Messages sent before the subscription landed are dropped: create until one arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    let mut seen = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no stripe announcement arrived"
        );
        n += 1;
        app.create_customer(&format!("c-{n}"), "Ada", "ada@example.com")
            .await;
        if let Ok(message) = tokio::time::timeout(Duration::from_millis(200), messages.recv()).await
        {
            break vec![message.expect("the server closed the connection")];
        }
    };
    // Two more creates publish on both topics; what arrives is ordered, so any salesforce
    // message of theirs comes before the stripe announcement of the last one.
    for id in ["d-1", "d-2"] {
        app.create_customer(id, "Ada", "ada@example.com").await;
    }
    let last = br#""customer_id":"d-2""#;
    while !seen
        .last()
        .is_some_and(|m| m[1].windows(last.len()).any(|w| w == last))
    {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.recv())
            .await
            .expect("the announcements of two creates")
            .expect("the server closed the connection");
        seen.push(message);
    }
    for message in seen {
        assert_eq!(
            message[0], b"stripe",
            "received a message it never could subscribe to"
        );
    }
}

#[tokio::test]
async fn beyond_its_peer_limit_the_publisher_refuses_new_peers_until_one_leaves() {
    let (_publisher, endpoint) =
        Publisher::bind("tcp://127.0.0.1:0", Limits { max_peers: 2 }).unwrap();
    let address = zmtp::address(&endpoint).to_owned();
    let admitted = |answer: &Option<Vec<u8>>| {
        answer
            .as_ref()
            .is_some_and(|body| body.starts_with(b"\x05READY"))
    };
    let (first, answer) = handshake(&address).await;
    assert!(admitted(&answer), "{answer:?}");
    let (_second, answer) = handshake(&address).await;
    assert!(admitted(&answer), "{answer:?}");
    let (_third, answer) = handshake(&address).await;
    assert!(!admitted(&answer), "a third peer was admitted: {answer:?}");

    drop(first);
    eventually(
        "a peer to be admitted again",
        Duration::from_secs(10),
        || {
            let address = address.clone();
            async move {
                let (stream, answer) = handshake(&address).await;
                admitted(&answer).then_some(stream)
            }
        },
    )
    .await;
}
