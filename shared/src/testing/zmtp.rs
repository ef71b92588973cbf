//! Raw ZMTP 3.0 (rfc.zeromq.org/spec/23) for hostile-peer tests and the attack benchmark:
//! the bytes a ZeroMQ library would never send, written by hand.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The 64-byte greeting: signature, version 3.0, `mechanism`, as-server, filler.
pub fn greeting(mechanism: &str, as_server: bool) -> Vec<u8> {
    let mut bytes = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    let mut name = mechanism.as_bytes().to_vec();
    name.resize(20, 0);
    bytes.extend_from_slice(&name);
    bytes.push(u8::from(as_server));
    bytes.resize(64, 0);
    bytes
}

/// A READY command announcing `socket_type` (`SUB`, `PUB`).
pub fn ready(socket_type: &str) -> Vec<u8> {
    let mut body = b"\x05READY\x0bSocket-Type".to_vec();
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    let mut frame = vec![0x04, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

/// A one-frame subscription message for `topic` (shorter than 255 bytes).
pub fn subscribe(topic: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x00, topic.len() as u8 + 1, 0x01];
    frame.extend_from_slice(topic);
    frame
}

/// The head of a long message frame announcing `length` bytes.
pub fn long_frame(length: u64) -> Vec<u8> {
    let mut head = vec![0x02];
    head.extend_from_slice(&length.to_be_bytes());
    head
}

/// One frame as read off the wire.
#[derive(Debug)]
pub struct Frame {
    /// A command (READY, ERROR, PING) rather than a message frame.
    pub command: bool,
    /// More frames of the same message follow.
    pub more: bool,
    pub body: Vec<u8>,
}

/// Reads one frame, or `None` when the peer closed the connection.
pub async fn read_frame(stream: &mut TcpStream) -> Option<Frame> {
    let flags = stream.read_u8().await.ok()?;
    let length = if flags & 0x02 != 0 {
        stream.read_u64().await.ok()?
    } else {
        u64::from(stream.read_u8().await.ok()?)
    };
    // Only ever used against our own peers, which never send long frames to clients.
    let mut body = vec![0; usize::try_from(length).ok().filter(|n| *n <= 1 << 20)?];
    stream.read_exact(&mut body).await.ok()?;
    Some(Frame {
        command: flags & 0x04 != 0,
        more: flags & 0x01 != 0,
        body,
    })
}

/// Connects to a PUB socket at `address` as a SUB peer (NULL mechanism) and returns the
/// stream with the server's answer to the handshake: its READY command's body, or an
/// ERROR's, or `None` when it closed the connection.
pub async fn handshake(address: &str) -> (TcpStream, Option<Vec<u8>>) {
    let mut stream = TcpStream::connect(address)
        .await
        .expect("connecting to the ZeroMQ port");
    let mut hello = greeting("NULL", false);
    hello.extend_from_slice(&ready("SUB"));
    stream.write_all(&hello).await.expect("sending a greeting");
    let answer = answer(&mut stream).await;
    (stream, answer)
}

/// After our greeting and READY: skips the server's greeting and returns the body of its
/// answer (READY, or ERROR), or `None` when it closed the connection.
pub async fn answer(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut theirs = [0u8; 64];
    stream.read_exact(&mut theirs).await.ok()?;
    read_frame(stream).await.map(|f| f.body)
}

/// Reads and discards until the peer closes the connection; false if it is still open
/// after `deadline`.
pub async fn closed_within(stream: &mut TcpStream, deadline: Duration) -> bool {
    let drain = async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(deadline, drain).await.is_ok()
}

/// `tcp://host:port` as `host:port`.
pub fn address(endpoint: &str) -> &str {
    endpoint.trim_start_matches("tcp://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_greeting_is_64_bytes_with_the_zmtp_3_layout() {
        let greeting = greeting("NULL", false);
        assert_eq!(greeting.len(), 64);
        assert_eq!((greeting[0], greeting[9]), (0xff, 0x7f));
        assert_eq!((greeting[10], greeting[11]), (3, 0));
        assert_eq!(&greeting[12..16], b"NULL");
        assert!(greeting[16..].iter().all(|b| *b == 0));
        assert_eq!(super::greeting("NULL", true)[32], 1);
    }

    #[test]
    fn a_ready_command_carries_its_socket_type() {
        let frame = ready("SUB");
        assert_eq!(frame[0], 0x04);
        assert_eq!(frame[1] as usize, frame.len() - 2);
        assert_eq!(&frame[2..8], b"\x05READY");
        assert_eq!(&frame[8..20], b"\x0bSocket-Type");
        assert_eq!(&frame[20..], b"\x00\x00\x00\x03SUB");
    }
}
