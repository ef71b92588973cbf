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

/// A committer's connection that died, inside a batch or while held between batches, is
/// not used again: the next batch runs on a working connection.
#[tokio::test]
async fn a_committer_never_writes_on_a_connection_that_died() {
    use diesel::prelude::*;
    use server::committers::{CommitFn, GroupCommit};
    use shared::db::DbError;

    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let db = tokio::task::spawn_blocking(shared::testing::TestDatabase::create)
        .await
        .unwrap();
    // "kill" ends the connection's own backend, as a restart or a network cut would, and
    // answers that item alone with the error (as a committer answers a run that failed
    // after others committed); "pid" answers the backend's pid, and its failure fails the
    // batch (as the committers' first statement failing does).
    let commit: std::sync::Arc<CommitFn<&'static str, i32, DbError>> =
        std::sync::Arc::new(|conn, items| {
            let mut answers = Vec::new();
            for item in items {
                let sql = match *item {
                    "kill" => "SELECT pg_terminate_backend(pg_backend_pid())::int AS pid",
                    _ => "SELECT pg_backend_pid() AS pid",
                };
                let answer = diesel::sql_query(sql)
                    .get_result::<Pid>(&mut **conn)
                    .map(|row| row.pid)
                    .map_err(DbError::from);
                match answer {
                    Err(e) if *item == "pid" => return Err(e),
                    answer => answers.push(answer),
                }
            }
            Ok(answers)
        });
    let pool = shared::db::bulk_pool(&db.url.clone().into(), 1);
    let committer = GroupCommit::start("test", pool, 1, commit);
    let first = committer.submit("k", "pid").await.unwrap();
    assert!(committer.submit("k", "kill").await.is_err());
    let second = committer
        .submit("k", "pid")
        .await
        .expect("the batch after a failed one runs on a working connection");
    assert_ne!(first, second);

    // Now the held connection dies between two batches (within the second in which a
    // committer keeps its connection without testing it).
    let mut admin = db.connect();
    diesel::sql_query(format!("SELECT pg_terminate_backend({second})"))
        .execute(&mut admin)
        .unwrap();
    shared::testing::eventually("the backend to end", Duration::from_secs(10), || {
        let gone = diesel::sql_query(format!(
            "SELECT pid FROM pg_stat_activity WHERE pid = {second}"
        ))
        .load::<Pid>(&mut admin)
        .unwrap()
        .is_empty();
        async move { gone.then_some(()) }
    })
    .await;
    let third = committer
        .submit("k", "pid")
        .await
        .expect("a batch on a connection that died while held is written on a new one");
    assert_ne!(third, second);
}
