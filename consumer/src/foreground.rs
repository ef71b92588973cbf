//! `consumer import --provider stripe` and `consumer reconcile --provider stripe
//! [--repair]`: the job is queued like any other (so the API and the console see it),
//! claimed by this process and run here, with a progress bar on a terminal and JSON lines
//! otherwise; the report is printed at the end. Ctrl-C hands the job back at its
//! checkpoint, for a consumer (or the same command again) to resume.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use shared::config::{ConsumerSettings, JobRequest};
use shared::db::jobs::{self, JobFilter, NewJob};
use shared::db::{self};
use shared::domain::{JobKind, JobStatus};
use tokio::sync::watch;

use crate::jobs::{self as runner, Observer};
use crate::startup::{job_context, parts, stop_signal};

/// Exit code: the job ran and (for a reconcile) everything is in sync.
pub const IN_SYNC: u8 = 0;
/// Exit code: a reconcile found drift (or, with `--repair`, drift it could not repair).
pub const DRIFT: u8 = 1;
/// Exit code: the job could not run or failed.
pub const ERROR: u8 = 2;

/// Runs the requested job here; the process's exit code.
pub async fn run(settings: ConsumerSettings, request: JobRequest) -> ExitCode {
    match run_job(settings, request).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("consumer {}: {e:#}", request.kind);
            ExitCode::from(ERROR)
        }
    }
}

async fn run_job(settings: ConsumerSettings, request: JobRequest) -> anyhow::Result<u8> {
    let parts = parts(&settings).await?;
    let ctx = job_context(&settings, &parts).context("STRIPE_API_KEY is not set")?;
    let pool = ctx.pool.clone();
    let owner = ctx.owner.clone();
    let lease = ctx.lease;
    let job = db::run(&pool, move |conn| {
        let running = jobs::list(
            conn,
            &JobFilter {
                status: Some(JobStatus::Running),
                limit: 10,
                ..JobFilter::default()
            },
        )?;
        if let Some(other) = running.iter().find(|j| j.provider == request.provider) {
            return Ok(Err(format!(
                "a {} job ({}) is running for {}; wait for it, or cancel it with POST /api/v1/jobs/{}/cancel",
                other.kind, other.id, other.provider, other.id
            )));
        }
        let job = jobs::insert(
            conn,
            NewJob {
                kind: request.kind,
                provider: request.provider,
                repair: request.repair,
                requested_by: "cli",
            },
        )?;
        Ok(match jobs::claim_id(conn, job.id, &owner, lease)? {
            Some(job) => Ok(job),
            None => {
                jobs::cancel(conn, job.id).ok();
                Err("another job started meanwhile; try again".to_owned())
            }
        })
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    let observer = Progress::new(job.id, request.kind);
    let (stop_tx, stop) = watch::channel(false);
    let signal = tokio::spawn(async move {
        stop_signal().await;
        let _ = stop_tx.send(true);
    });
    let ended = runner::run(&ctx, job, stop, &observer).await;
    signal.abort();
    let Some(ended) = ended? else {
        observer.finish("stopped: the job was handed back at its checkpoint");
        return Ok(ERROR);
    };
    let report = ended.job.report.clone().unwrap_or(Value::Null);
    observer.finish(&format!("{}", ended.job.status));
    observer.print(json!({
        "job_id": ended.job.id,
        "status": ended.job.status,
        "error": ended.job.error,
        "report": report,
    }));
    Ok(match (ended.job.status, request.kind) {
        (JobStatus::Succeeded, JobKind::Reconcile) if ended.drift_remains() => DRIFT,
        (JobStatus::Succeeded, _) => IN_SYNC,
        _ => ERROR,
    })
}

/// A spinner with the counts on a terminal; JSON lines on stdout otherwise.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(job: uuid::Uuid, kind: JobKind) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {prefix} {wide_msg}")
                    .expect("a valid template"),
            );
            bar.set_prefix(format!("{kind} {job}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { bar }
    }

    fn finish(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(message.to_owned());
        }
    }

    /// The final report: pretty on a terminal, one line otherwise.
    fn print(&self, value: Value) {
        let mut out = std::io::stdout().lock();
        let text = if self.bar.is_some() {
            serde_json::to_string_pretty(&value)
        } else {
            serde_json::to_string(&value)
        };
        let _ = writeln!(out, "{}", text.unwrap_or_default());
    }
}

impl Observer for Progress {
    fn step(&self, job: uuid::Uuid, phase: &str, progress: &Value) {
        match &self.bar {
            Some(bar) => {
                let counts: Vec<String> = progress
                    .as_object()
                    .map(|o| o.iter().map(|(k, v)| format!("{k} {v}")).collect())
                    .unwrap_or_default();
                bar.set_message(format!("{phase}: {}", counts.join(", ")));
            }
            None => {
                let line = json!({"job_id": job, "phase": phase, "progress": progress});
                println!("{line}");
            }
        }
    }
}
