//! Hostile HTTP peers: trickled bodies, bodies nobody should read, and health floods
//! cannot hold the connections or the pool the API needs.

use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};
use shared::testing::{admin_url, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app_with, TestApp, TOKEN};

/// Opens a connection, sends `head` and the first byte of a body it never finishes, and
/// keeps trickling a byte every 100 ms from a task of its own.
async fn trickle(app: &TestApp, head: String) -> tokio::net::tcp::OwnedReadHalf {
    let address = app.address.trim_start_matches("http://");
    let stream = TcpStream::connect(address).await.unwrap();
    let (read, mut write) = stream.into_split();
    write.write_all(head.as_bytes()).await.unwrap();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        loop {
            ticks.tick().await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    read
}

/// Reads until the server closes the connection; returns what it sent.
async fn until_closed(mut read: tokio::net::tcp::OwnedReadHalf) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match read.read(&mut buffer).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&answer).into_owned(),
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
}

fn customers_head(length: usize, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "POST /api/v1/customers HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n{{"
    )
}

fn webhook_head(signature: Option<&str>) -> String {
    let signature = signature.map_or(String::new(), |s| format!("Stripe-Signature: {s}\r\n"));
    format!(
        "POST /api/v1/endpoint/stripe HTTP/1.1\r\nHost: t\r\n{signature}\
         Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{{"
    )
}

#[tokio::test]
async fn trickled_bodies_are_cut_at_their_deadline_while_health_keeps_answering() {
    let app = spawn_app_with(|s| {
        s.http_max_connections = 4;
        s.http_body_timeout = Duration::from_secs(1);
    })
    .await;
    // As many slow bodies as there are connection slots, to both routes that read one.
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(trickle(&app, customers_head(60_000, Some(TOKEN))).await);
        slow.push(trickle(&app, webhook_head(Some("t=1,v1=00"))).await);
    }
    let cut = futures_util::future::join_all(slow.into_iter().map(until_closed));
    let cut = tokio::time::timeout(Duration::from_secs(15), cut)
        .await
        .expect("the slow bodies were never cut");
    for answer in &cut {
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "a trickled body was not cut with 408: {answer:?}"
        );
        assert!(answer.contains("request_timeout"), "{answer}");
    }
    let health = tokio::time::timeout(Duration::from_secs(5), app.get("/api/v1/health"))
        .await
        .expect("health answers once the slow bodies are cut");
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(app.count("customers"), 0);
}

#[tokio::test]
async fn a_request_refused_on_its_headers_is_answered_without_waiting_for_its_body() {
    let app = spawn_app_with(|s| s.http_body_timeout = Duration::from_secs(30)).await;
    let cases = [
        (customers_head(60_000, None), "401"),
        (customers_head(10_000_000, Some(TOKEN)), "413"),
        (webhook_head(None), "400"),
        (webhook_head(Some("v1=only-a-signature")), "400"),
    ];
    for (head, status) in cases {
        let read = trickle(&app, head.clone()).await;
        // Well within the 30 s body deadline: the answer does not wait for the body,
        // and the connection is closed rather than left to the trickle.
        let answer = tokio::time::timeout(Duration::from_secs(10), until_closed(read))
            .await
            .unwrap_or_else(|_| panic!("no answer without the body for {head:?}"));
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{head:?} answered {answer:?}"
        );
    }
    assert_eq!(app.counts(), (0, 0));
}

/// Connections to `database` waiting on a lock.
fn waiting_on_locks(database: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = PgConnection::establish(admin_url()).unwrap();
    diesel::sql_query(format!(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = '{database}' AND wait_event_type = 'Lock'"
    ))
    .get_result::<Count>(&mut conn)
    .unwrap()
    .n
}

#[tokio::test]
async fn health_answers_at_once_while_every_pooled_connection_is_busy() {
    let app = spawn_app_with(|_| {}).await;
    // Every pooled connection blocks behind a lock on the customers table.
    let mut blocker = app.db.connect();
    diesel::sql_query("BEGIN").execute(&mut blocker).unwrap();
    diesel::sql_query("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .unwrap();
    let lists: Vec<_> = (0..40)
        .map(|_| {
            let app_client = app.api.clone();
            tokio::spawn(async move { app_client.get("/api/v1/customers?limit=1").await.status() })
        })
        .collect();
    let name = app.db.name().to_owned();
    eventually(
        "the pool's 32 connections to wait on the lock",
        Duration::from_secs(30),
        || {
            let name = name.clone();
            async move { (waiting_on_locks(&name) >= 32).then_some(()) }
        },
    )
    .await;

    for _ in 0..50 {
        let health = tokio::time::timeout(Duration::from_millis(900), app.get("/api/v1/health"))
            .await
            .expect("health does not wait for a pooled connection");
        assert_eq!(health.status().as_u16(), 200);
    }

    diesel::sql_query("COMMIT").execute(&mut blocker).unwrap();
    for list in lists {
        assert_eq!(list.await.unwrap().as_u16(), 200);
    }
}

fn admin_sql(sql: &str) {
    let mut conn = PgConnection::establish(admin_url()).unwrap();
    diesel::sql_query(sql).execute(&mut conn).unwrap();
}

#[tokio::test]
async fn health_turns_503_within_a_second_of_the_database_going_away_and_back_when_it_returns() {
    let app = spawn_app_with(|_| {}).await;
    assert_eq!(app.get("/api/v1/health").await.status().as_u16(), 200);
    let name = app.db.name().to_owned();
    admin_sql(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
    ));
    admin_sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ));
    let gone = Instant::now();
    eventually("health to turn 503", Duration::from_secs(5), || async {
        (app.get("/api/v1/health").await.status().as_u16() == 503).then_some(())
    })
    .await;
    let took = gone.elapsed();
    admin_sql(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"));
    assert!(
        took <= Duration::from_millis(1500),
        "503 only after {took:?}"
    );
    eventually(
        "health to turn 200 again",
        Duration::from_secs(10),
        || async { (app.get("/api/v1/health").await.status().as_u16() == 200).then_some(()) },
    )
    .await;
}
