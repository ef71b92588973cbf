//! A minimal HTTP/1.1 keep-alive client for the task API and webhook loops: one connection
//! per worker, one write and usually one read per request. On this two-core machine every
//! microsecond the load generator spends is taken from the server and PostgreSQL;
//! `reqwest` cost 23 µs of CPU per request.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection to the server.
pub struct Connection {
    address: String,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl Connection {
    /// A connection to `base_url` (`http://host:port`), opened at the first request.
    pub fn new(base_url: &str) -> Self {
        Self {
            address: base_url.trim_start_matches("http://").to_owned(),
            stream: None,
            request: Vec::with_capacity(1024),
            response: Vec::with_capacity(4096),
        }
    }

    /// POSTs a JSON `body` to `path` with extra `headers`; answers the status code. On an
    /// error the connection is closed and the next request opens a new one.
    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<u16> {
        self.send("POST", path, headers, body).await
    }

    /// Sends a JSON `body` to `path` with `method` and extra `headers`; as [`Self::post`].
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<u16> {
        let result = self.exchange(method, path, headers, body).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<u16> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.address).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        self.request.clear();
        self.request.extend_from_slice(method.as_bytes());
        self.request.extend_from_slice(b" ");
        self.request.extend_from_slice(path.as_bytes());
        self.request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.request.extend_from_slice(self.address.as_bytes());
        self.request
            .extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
        self.request
            .extend_from_slice(body.len().to_string().as_bytes());
        for (name, value) in headers {
            self.request.extend_from_slice(b"\r\n");
            self.request.extend_from_slice(name.as_bytes());
            self.request.extend_from_slice(b": ");
            self.request.extend_from_slice(value.as_bytes());
        }
        self.request.extend_from_slice(b"\r\n\r\n");
        self.request.extend_from_slice(body);
        stream.write_all(&self.request).await?;

        self.response.clear();
        let (status, head, length) = loop {
            if let Some(parsed) = parse_head(&self.response)? {
                break parsed;
            }
            read_more(stream, &mut self.response).await?;
        };
        while self.response.len() < head + length {
            read_more(stream, &mut self.response).await?;
        }
        Ok(status)
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    buffer.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// The status, the head's length and the body's `Content-Length`, once the whole head
/// has arrived; `None` before.
fn parse_head(buffer: &[u8]) -> io::Result<Option<(u16, usize, usize)>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..end]).map_err(|_| invalid("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no status line"))?;
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| invalid("bad header"))?;
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse().map_err(|_| invalid("bad length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(invalid("chunked responses are not supported"));
        }
    }
    let length = length.ok_or_else(|| invalid("no Content-Length"))?;
    Ok(Some((status, end + 4, length)))
}

#[cfg(test)]
mod tests {
    use super::parse_head;

    #[test]
    fn a_head_is_parsed_only_once_complete() {
        assert!(
            parse_head(b"HTTP/1.1 202 Accepted\r\ncontent-length: 5\r\n")
                .unwrap()
                .is_none()
        );
        let response = b"HTTP/1.1 202 Accepted\r\ncontent-length: 5\r\nx: y\r\n\r\nhello";
        assert_eq!(parse_head(response).unwrap(), Some((202, 50, 5)));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }
}
