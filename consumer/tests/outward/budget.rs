//! STRIPE_MAX_RPS is the deployment's rate: consumer processes share one budget through
//! PostgreSQL. Checked against the sandbox's own request log and rate limit.

use sandbox::{RequestRecord, SandboxConfig};
use shared::testing::eventually;

use crate::helpers::{stack, Stack, WAIT};

/// The tests here measure rates: they run one at a time, so they do not slow each other.
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates `n` customers (committed with their tasks; no consumer runs yet).
async fn create(stack: &Stack, n: usize) {
    for i in 0..n {
        stack
            .create(&format!("c-{i}"), "Ada", &format!("c{i}@example.com"))
            .await;
    }
}

/// The API calls the sandbox saw, with their times (ms since it started).
fn calls(stack: &Stack) -> Vec<RequestRecord> {
    stack
        .sandbox
        .request_log()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/customers"))
        .collect()
}

/// Calls per second between `from_ms` and `to_ms`.
fn rate(calls: &[RequestRecord], from_ms: u64, to_ms: u64) -> f64 {
    let n = calls
        .iter()
        .filter(|c| (from_ms..to_ms).contains(&c.at_ms))
        .count();
    n as f64 * 1000.0 / (to_ms - from_ms) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_consumers_share_one_budget_and_the_survivors_take_a_killed_ones_share() {
    let _timed = TIMED.lock().await;
    const BUDGET: f64 = 36.0;
    let stack = stack(SandboxConfig {
        max_rps: Some(40),
        ..SandboxConfig::default()
    })
    .await;
    create(&stack, 400).await;
    let env = [
        ("STRIPE_MAX_RPS", "36"),
        ("CONSUMER_LEASE_SECS", "5"),
        ("CONSUMER_CONCURRENCY", "8"),
    ];
    let mut consumers: Vec<_> = (0..4).map(|_| stack.consumer_process(&env)).collect();

    eventually("a third of the calls", WAIT, || async {
        (calls(&stack).len() >= 130).then_some(())
    })
    .await;
    let killed_at = calls(&stack).last().unwrap().at_ms;
    consumers[0].kill().unwrap();
    consumers[0].wait().unwrap();
    stack.drained(400).await;
    for consumer in &mut consumers[1..] {
        consumer.kill().unwrap();
        consumer.wait().unwrap();
    }

    let calls = calls(&stack);
    let limited = calls.iter().filter(|c| c.status == 429).count();
    assert_eq!(limited, 0, "the sandbox answered 429 {limited} times");
    let first = calls.first().unwrap().at_ms;
    // Four processes, one rate: from the first call on, the calls never run ahead of
    // the budget (5% over it, and a few calls). Counting from the start, not in sliding
    // windows: when the whole machine stalls (all four processes and the sandbox sent
    // nothing for 300 ms, on a busy 2-core machine), the slots that fell due meanwhile
    // go out together after it, 18 calls in 200 ms, so a one-second window after a stall
    // saw 43 to 45 calls with the code before this test changed and after. Such a burst
    // only spends what the stall left unspent; a budget shared wrongly (each process
    // spending all of it) runs ahead of the line within a second.
    for (k, call) in calls.iter().enumerate() {
        let allowed = BUDGET * 1.05 * (call.at_ms - first) as f64 / 1000.0 + 5.0;
        assert!(
            (k + 1) as f64 <= allowed,
            "{} calls in the first {} ms, more than the budget allows ({allowed:.1})",
            k + 1,
            call.at_ms - first
        );
    }
    // Before the kill, and from a second after it, the budget is used (90%).
    let before = rate(&calls, first + 1000, killed_at);
    assert!(
        before >= 0.9 * BUDGET,
        "{before:.1} calls/s before the kill"
    );
    let after = rate(&calls, killed_at + 1000, killed_at + 4000);
    assert!(after >= 0.9 * BUDGET, "{after:.1} calls/s after the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_above_the_providers_limit_backs_off_together_instead_of_storming() {
    let _timed = TIMED.lock().await;
    let stack = stack(SandboxConfig {
        max_rps: Some(20),
        ..SandboxConfig::default()
    })
    .await;
    create(&stack, 200).await;
    let env = [("STRIPE_MAX_RPS", "60"), ("CONSUMER_CONCURRENCY", "8")];
    let mut consumers: Vec<_> = (0..2).map(|_| stack.consumer_process(&env)).collect();
    stack.drained(200).await;
    for consumer in &mut consumers {
        consumer.kill().unwrap();
        consumer.wait().unwrap();
    }
    let calls = calls(&stack);
    let limited = calls.iter().filter(|c| c.status == 429).count();
    // At 60/s against 20/s, two thirds of the calls would meet a 429 if each task only
    // backed off on its own; one pause for every process keeps them a small share.
    assert!(
        limited * 5 <= calls.len(),
        "{limited} of {} calls answered 429",
        calls.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn background_work_takes_what_live_traffic_leaves_and_never_less_than_its_floor() {
    let _timed = TIMED.lock().await;
    use consumer::budget::{Budget, FLOOR};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    const BUDGET: f64 = 40.0;
    let stack = stack(SandboxConfig::default()).await;
    create(&stack, 300).await;
    let url = secrecy::SecretString::from(stack.db.url.clone());
    let pool = tokio::task::spawn_blocking(move || shared::db::connect(&url, 4))
        .await
        .unwrap()
        .unwrap();
    let budget = Budget::open(pool, "stripe", shared::testing::settings::STRIPE_KEY, 40)
        .await
        .unwrap();
    let started = Instant::now();
    let granted = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let background = {
        let granted = granted.clone();
        tokio::spawn(async move {
            loop {
                budget.acquire_background().await;
                granted.lock().unwrap().push(started.elapsed());
            }
        })
    };
    let env = [("STRIPE_MAX_RPS", "40"), ("CONSUMER_CONCURRENCY", "8")];
    let mut consumers: Vec<_> = (0..2).map(|_| stack.consumer_process(&env)).collect();
    stack.drained(300).await;
    let live_done = started.elapsed();
    eventually("four seconds of background work alone", WAIT, || async {
        (started.elapsed() >= live_done + Duration::from_secs(5)).then_some(())
    })
    .await;
    background.abort();
    for consumer in &mut consumers {
        consumer.kill().unwrap();
        consumer.wait().unwrap();
    }

    let granted = granted.lock().unwrap().clone();
    let per_second = |from: Duration, to: Duration| {
        let n = granted.iter().filter(|t| (from..to).contains(*t)).count();
        n as f64 / (to - from).as_secs_f64()
    };
    // While live writes use the budget, background work gets its floor and little more.
    let busy = per_second(Duration::from_secs(3), live_done - Duration::from_secs(1));
    assert!(
        (0.7 * FLOOR * BUDGET..=2.5 * FLOOR * BUDGET).contains(&busy),
        "{busy:.1} background slots/s beside live traffic"
    );
    // Once live traffic stops, background work gets the whole budget (measured over 4 s,
    // with room for a busy machine: 35.5 of 40 over 2 s failed once while the machine
    // compiled beside it; the floor is a fraction of that).
    let alone = per_second(
        live_done + Duration::from_secs(1),
        live_done + Duration::from_secs(5),
    );
    assert!(alone >= 0.8 * BUDGET, "{alone:.1} background slots/s alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_writes_get_budgets_of_their_own_when_split() {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Account {
        #[diesel(sql_type = diesel::sql_types::Text)]
        class: String,
    }
    let stack = stack(SandboxConfig::default()).await;
    create(&stack, 1).await;
    let env = [("STRIPE_MAX_READ_RPS", "5"), ("STRIPE_MAX_WRITE_RPS", "50")];
    let mut consumer = stack.consumer_process(&env);
    stack.drained(1).await;
    consumer.kill().unwrap();
    consumer.wait().unwrap();
    let accounts: Vec<Account> = diesel::sql_query(
        "SELECT split_part(account, ':', 1) AS class FROM provider_budgets ORDER BY 1",
    )
    .load(&mut stack.db.connect())
    .unwrap();
    let classes: Vec<String> = accounts.into_iter().map(|a| a.class).collect();
    assert_eq!(classes, ["stripe-read", "stripe-write"]);
}
