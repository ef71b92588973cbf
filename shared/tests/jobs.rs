//! The job table's rules against a real PostgreSQL: one running job per provider, leases
//! that resume a dead consumer's job from its checkpoint, findings counted once however
//! often a step is redone, cancellation, and the reconcile schedule.

use std::time::Duration;

use diesel::prelude::*;
use shared::db::cursors;
use shared::db::jobs::{self, Checkpoint, Finding, NewJob, Renewal};
use shared::domain::{JobKind, JobStatus, Provider};
use shared::testing::TestDatabase;

const LEASE: Duration = Duration::from_secs(30);

fn import() -> NewJob<'static> {
    NewJob {
        kind: JobKind::Import,
        provider: Provider::Stripe,
        repair: false,
        requested_by: "api",
    }
}

fn finding(kind: &'static str, subject: &str) -> Finding {
    Finding {
        kind,
        subject: subject.to_owned(),
        customer_id: Some(subject.to_owned()),
        external_id: None,
        detail: None,
    }
}

fn expire_lease(conn: &mut PgConnection, id: uuid::Uuid) {
    diesel::sql_query(format!(
        "UPDATE sync_jobs SET lease_expires_at = now() - interval '1 second' WHERE id = '{id}'"
    ))
    .execute(conn)
    .unwrap();
}

#[test]
fn only_one_job_per_provider_runs_and_the_next_waits_its_turn() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    let first = jobs::insert(&mut conn, import()).unwrap();
    let second = jobs::insert(&mut conn, import()).unwrap();
    let claimed = jobs::claim(&mut conn, Provider::Stripe, "a", LEASE)
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, first.id, "the oldest queued job first");
    assert!(jobs::claim(&mut conn, Provider::Stripe, "b", LEASE)
        .unwrap()
        .is_none());
    assert!(jobs::claim_id(&mut conn, second.id, "b", LEASE)
        .unwrap()
        .is_none());
    jobs::finish(&mut conn, first.id, "a", JobStatus::Succeeded, None).unwrap();
    let next = jobs::claim(&mut conn, Provider::Stripe, "b", LEASE)
        .unwrap()
        .unwrap();
    assert_eq!(next.id, second.id);
}

#[test]
fn a_job_whose_consumer_stopped_renewing_is_resumed_from_its_checkpoint() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    jobs::insert(&mut conn, import()).unwrap();
    let job = jobs::claim(&mut conn, Provider::Stripe, "a", LEASE)
        .unwrap()
        .unwrap();
    let at = Checkpoint {
        phase: "decide",
        checkpoint: Some("cus_M"),
    };
    assert!(jobs::record_step(
        &mut conn,
        job.id,
        "a",
        &[],
        &[("customers_walked", 100)],
        at
    )
    .unwrap());
    // While the lease runs, nobody takes it over.
    assert!(jobs::claim(&mut conn, Provider::Stripe, "b", LEASE)
        .unwrap()
        .is_none());
    expire_lease(&mut conn, job.id);
    let resumed = jobs::claim(&mut conn, Provider::Stripe, "b", LEASE)
        .unwrap()
        .unwrap();
    assert_eq!(resumed.id, job.id);
    assert_eq!(resumed.phase, "decide");
    assert_eq!(resumed.checkpoint.as_deref(), Some("cus_M"));
    assert_eq!(resumed.started_at, job.started_at, "resumed, not restarted");
    assert_eq!(resumed.progress["customers_walked"], 100);
    // The first consumer, waking up late, can write nothing more.
    assert_eq!(
        jobs::renew(&mut conn, job.id, "a", LEASE).unwrap(),
        Renewal::Lost
    );
    assert!(!jobs::record_step(&mut conn, job.id, "a", &[], &[("x", 1)], at).unwrap());
    assert!(
        jobs::finish(&mut conn, job.id, "a", JobStatus::Failed, Some("late"))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        jobs::renew(&mut conn, job.id, "b", LEASE).unwrap(),
        Renewal::Held
    );
}

#[test]
fn a_step_redone_after_a_resume_counts_its_findings_once() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    jobs::insert(&mut conn, import()).unwrap();
    let job = jobs::claim(&mut conn, Provider::Stripe, "a", LEASE)
        .unwrap()
        .unwrap();
    let at = Checkpoint {
        phase: "decide",
        checkpoint: Some("cus_B"),
    };
    let found = [finding("imported", "cus_A"), finding("imported", "cus_B")];
    assert!(jobs::record_step(&mut conn, job.id, "a", &found, &[], at).unwrap());
    let again = [finding("imported", "cus_B"), finding("ambiguous", "cus_C")];
    assert!(jobs::record_step(&mut conn, job.id, "a", &again, &[], at).unwrap());
    let job = jobs::finish(&mut conn, job.id, "a", JobStatus::Succeeded, None)
        .unwrap()
        .unwrap();
    let report = job.report.unwrap();
    assert_eq!(report["counts"]["imported"], 2, "{report}");
    assert_eq!(report["counts"]["ambiguous"], 1, "{report}");
    assert_eq!(report["findings"]["imported"].as_array().unwrap().len(), 2);
    assert!(job.finished_at.is_some());
}

#[test]
fn the_report_lists_the_first_hundred_of_each_kind_and_the_rows_keep_all() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    jobs::insert(&mut conn, import()).unwrap();
    let job = jobs::claim(&mut conn, Provider::Stripe, "a", LEASE)
        .unwrap()
        .unwrap();
    let many: Vec<Finding> = (0..250)
        .map(|i| finding("imported", &format!("cus_{i:03}")))
        .collect();
    let at = Checkpoint {
        phase: "decide",
        checkpoint: Some("cus_249"),
    };
    assert!(jobs::record_step(&mut conn, job.id, "a", &many, &[], at).unwrap());
    let job = jobs::finish(&mut conn, job.id, "a", JobStatus::Succeeded, None)
        .unwrap()
        .unwrap();
    let report = job.report.unwrap();
    assert_eq!(report["counts"]["imported"], 250);
    let listed = report["findings"]["imported"].as_array().unwrap();
    assert_eq!(listed.len(), 100);
    assert_eq!(listed[0]["customer_id"], "cus_000", "in the order found");
    let all = jobs::findings(&mut conn, job.id, Some("imported"), None, 1000).unwrap();
    assert_eq!(all.len(), 250);
}

#[test]
fn cancelling_stops_a_queued_job_at_once_and_asks_a_running_one() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    let running = jobs::insert(&mut conn, import()).unwrap();
    jobs::claim(&mut conn, Provider::Stripe, "a", LEASE)
        .unwrap()
        .unwrap();
    let queued = jobs::insert(&mut conn, import()).unwrap();
    let cancelled = jobs::cancel(&mut conn, queued.id).unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    let asked = jobs::cancel(&mut conn, running.id).unwrap();
    assert_eq!(asked.status, JobStatus::Running);
    assert_eq!(
        jobs::renew(&mut conn, running.id, "a", LEASE).unwrap(),
        Renewal::CancelRequested
    );
    assert!(matches!(
        jobs::cancel(&mut conn, queued.id),
        Err(jobs::CancelError::Finished(JobStatus::Cancelled))
    ));
    assert!(matches!(
        jobs::cancel(&mut conn, uuid::Uuid::now_v7()),
        Err(jobs::CancelError::NotFound)
    ));
}

#[test]
fn a_reconcile_is_scheduled_once_per_interval_counted_from_the_first_consumer() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    let day = Duration::from_secs(86_400);
    // No consumer ever started: nothing to count from.
    assert!(jobs::queue_if_due(&mut conn, Provider::Stripe, day)
        .unwrap()
        .is_none());
    cursors::claim_poll(&mut conn, Provider::Stripe, "a", LEASE).unwrap();
    assert!(jobs::queue_if_due(&mut conn, Provider::Stripe, day)
        .unwrap()
        .is_none());
    diesel::sql_query("UPDATE sync_cursors SET created_at = now() - interval '25 hours'")
        .execute(&mut conn)
        .unwrap();
    let job = jobs::queue_if_due(&mut conn, Provider::Stripe, day)
        .unwrap()
        .expect("due after a day");
    assert_eq!(job.kind, JobKind::Reconcile);
    assert!(job.repair);
    assert_eq!(job.requested_by, "schedule");
    // Queued, then just run: not due again for a day.
    assert!(jobs::queue_if_due(&mut conn, Provider::Stripe, day)
        .unwrap()
        .is_none());
    jobs::cancel(&mut conn, job.id).unwrap();
    assert!(jobs::queue_if_due(&mut conn, Provider::Stripe, day)
        .unwrap()
        .is_none());
}

#[test]
fn one_consumer_at_a_time_polls_the_events_and_the_cursor_moves_only_under_its_lease() {
    let db = TestDatabase::create();
    let mut conn = db.connect();
    let cursor = cursors::claim_poll(&mut conn, Provider::Stripe, "a", LEASE)
        .unwrap()
        .unwrap();
    assert!(cursor.last_event_id.is_none());
    assert!(cursors::claim_poll(&mut conn, Provider::Stripe, "b", LEASE)
        .unwrap()
        .is_none());
    assert!(!cursors::advance(&mut conn, Provider::Stripe, "b", "evt_2", 2, 1).unwrap());
    assert!(cursors::advance(&mut conn, Provider::Stripe, "a", "evt_1", 1, 1).unwrap());
    cursors::finish_poll(&mut conn, Provider::Stripe, "a", None, Some("boom")).unwrap();
    let cursor = cursors::claim_poll(&mut conn, Provider::Stripe, "b", LEASE)
        .unwrap()
        .expect("free once let go");
    assert_eq!(cursor.last_event_id.as_deref(), Some("evt_1"));
    assert_eq!(cursor.last_poll_error.as_deref(), Some("boom"));
}
