//! The HTTP listening socket and the process limits it needs: a long accept queue, and an
//! open-file limit that covers `HTTP_MAX_CONNECTIONS`.

use std::net::TcpListener;

/// Connections the kernel completes and queues while the server serves
/// `HTTP_MAX_CONNECTIONS` (capped by `net.core.somaxconn`). Beyond it, new connections' SYNs
/// are dropped and clients retry 1, 3, 7, 15… s after their first: a storm's stragglers wait
/// for seconds. The standard library's 128 made a storm of 8,000 clients last 112 s.
const ACCEPT_BACKLOG: i32 = 4096;

/// Binds the HTTP listener with [`ACCEPT_BACKLOG`] (and `SO_REUSEADDR`, as the standard
/// library's bind does, so a restart does not wait for old connections' `TIME_WAIT`).
pub fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(ACCEPT_BACKLOG)?;
    Ok(socket.into())
}

/// File descriptors the server needs besides its HTTP connections: the PostgreSQL pools
/// (32 + 1 + 2 connections), ZeroMQ peers, the Stripe client, logs and the runtime.
const RESERVED_FILE_DESCRIPTORS: u64 = 256;

/// Raises the soft open-file limit as far as `HTTP_MAX_CONNECTIONS` needs (up to the hard
/// limit), and warns when even the hard limit is too low: a server out of descriptors can
/// neither accept connections nor open PostgreSQL connections, and answers 5xx instead of
/// letting clients wait. Many shells and service managers start processes at 1,024.
pub fn ensure_file_descriptors(max_connections: usize) {
    let needed = max_connections as u64 + RESERVED_FILE_DESCRIPTORS;
    match rlimit::increase_nofile_limit(needed) {
        Ok(limit) if limit >= needed => {}
        Ok(limit) => tracing::warn!(
            limit,
            needed,
            "the open-file limit is below HTTP_MAX_CONNECTIONS plus {RESERVED_FILE_DESCRIPTORS} \
             for PostgreSQL and ZeroMQ: a connection storm would make accepts and database \
             connections fail; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or \
             lower HTTP_MAX_CONNECTIONS"
        ),
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::net::{SocketAddr, TcpStream};

    use super::listen;

    #[test]
    fn the_listener_accepts_and_a_second_server_on_its_port_is_refused() {
        let mut addresses: Vec<SocketAddr> = vec!["127.0.0.1:0".parse().unwrap()];
        // IPv6 where the machine has it, as the standard library's bind would.
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            addresses.push("[::1]:0".parse().unwrap());
        }
        for address in addresses {
            let listener = listen(address).unwrap();
            let bound = listener.local_addr().unwrap();
            TcpStream::connect(bound).unwrap();
            listener.accept().unwrap();
            let second = listen(bound).expect_err("the port is taken");
            assert_eq!(second.kind(), ErrorKind::AddrInUse, "{address}");
        }
    }
}
