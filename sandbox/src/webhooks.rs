//! Delivers every event to the webhook URL, signed as Stripe signs, at least once: a non-2xx
//! answer (3xx included) or a connection error is retried with backoff, each attempt with a
//! fresh `t` and signature. Delivery runs on its own task so it never slows an API response.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::store::Store;

/// Attempts before a delivery is given up (about two minutes of backoff).
pub const MAX_ATTEMPTS: u32 = 30;
/// With `shuffle`, deliveries are gathered into windows this large and sent in random order.
const SHUFFLE_WINDOW: usize = 8;
/// How long a shuffle window waits to fill.
const SHUFFLE_WAIT: Duration = Duration::from_millis(30);

/// One delivery of one event.
#[derive(Debug)]
pub struct Delivery {
    event_id: String,
    body: Arc<Vec<u8>>,
    attempt: u32,
}

/// The store's side of the queue.
pub struct Outbox {
    tx: mpsc::UnboundedSender<Delivery>,
    pending: Arc<AtomicUsize>,
    pub duplicate_rate: f64,
}

impl Outbox {
    /// The queue and its receiving end; `pending` counts deliveries not yet finished.
    pub fn new(
        duplicate_rate: f64,
        pending: Arc<AtomicUsize>,
    ) -> (Self, mpsc::UnboundedReceiver<Delivery>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = Self {
            tx,
            pending,
            duplicate_rate,
        };
        (outbox, rx)
    }

    /// Queues `copies` deliveries of the event. Stripe sends JSON pretty-printed, so do we:
    /// a receiver that verifies a re-serialised body fails here as it would there.
    pub fn send(&self, event: &Value, copies: usize) {
        let body = Arc::new(serde_json::to_vec_pretty(event).expect("events serialise"));
        let event_id = event["id"].as_str().unwrap_or_default().to_owned();
        for _ in 0..copies {
            self.pending.fetch_add(1, Ordering::SeqCst);
            let delivery = Delivery {
                event_id: event_id.clone(),
                body: body.clone(),
                attempt: 0,
            };
            if self.tx.send(delivery).is_err() {
                self.pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// What the delivery task needs.
pub struct Deliverer {
    pub url: String,
    pub secret: String,
    pub shuffle: bool,
    pub rng: StdRng,
    pub pending: Arc<AtomicUsize>,
    pub store: Arc<Mutex<Store>>,
}

/// Backoff before attempt `n + 1`: 100 ms doubling, capped at 5 s, with jitter.
fn backoff(attempt: u32, rng: &mut StdRng) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(10)).min(5_000);
    Duration::from_millis(rng.gen_range(base / 2..=base))
}

impl Deliverer {
    /// Runs until the queue closes: one delivery at a time, in order unless shuffling;
    /// failed ones wait for their retry without holding up the rest.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Delivery>) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Stripe/1.0 (+https://stripe.com/docs/webhooks)")
            .build()
            .expect("an HTTP client");
        let mut ready: VecDeque<Delivery> = VecDeque::new();
        let mut retries: Vec<(Instant, Delivery)> = Vec::new();
        let mut open = true;
        loop {
            while let Ok(d) = rx.try_recv() {
                ready.push_back(d);
            }
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = retries.drain(..).partition(|(at, _)| *at <= now);
            retries = later;
            ready.extend(due.into_iter().map(|(_, d)| d));
            if ready.is_empty() {
                if !open && retries.is_empty() {
                    return;
                }
                let next_retry = retries.iter().map(|(at, _)| *at).min();
                let sleep_until = next_retry.unwrap_or(now + Duration::from_secs(3600));
                tokio::select! {
                    received = rx.recv(), if open => match received {
                        Some(d) => ready.push_back(d),
                        None => open = false,
                    },
                    _ = tokio::time::sleep_until(sleep_until) => {}
                }
                continue;
            }
            let batch: Vec<Delivery> = if self.shuffle {
                let deadline = Instant::now() + SHUFFLE_WAIT;
                while open && ready.len() < SHUFFLE_WINDOW {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(d)) => ready.push_back(d),
                        Ok(None) => open = false,
                        Err(_) => break,
                    }
                }
                let n = ready.len().min(SHUFFLE_WINDOW);
                let mut batch: Vec<Delivery> = ready.drain(..n).collect();
                batch.shuffle(&mut self.rng);
                batch
            } else {
                ready.pop_front().into_iter().collect()
            };
            for mut delivery in batch {
                if self.attempt(&client, &delivery).await {
                    self.store
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .mark_delivered(&delivery.event_id);
                    self.pending.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                delivery.attempt += 1;
                if delivery.attempt >= MAX_ATTEMPTS {
                    tracing::warn!(event = %delivery.event_id, "webhook delivery given up");
                    self.pending.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let at = Instant::now() + backoff(delivery.attempt, &mut self.rng);
                retries.push((at, delivery));
            }
        }
    }

    /// One POST; true on a 2xx.
    async fn attempt(&self, client: &reqwest::Client, delivery: &Delivery) -> bool {
        let timestamp = chrono::Utc::now().timestamp();
        // Signed as Stripe signs: the scheme the server verifies, from the one Stripe module.
        let signature = shared::stripe::signature::sign(&self.secret, timestamp, &delivery.body);
        let result = client
            .post(&self.url)
            .header("content-type", "application/json; charset=utf-8")
            .header("stripe-signature", signature)
            .body(delivery.body.as_ref().clone())
            .send()
            .await;
        match result {
            Ok(response) if response.status().is_success() => true,
            Ok(response) => {
                tracing::debug!(event = %delivery.event_id, status = %response.status(),
                    attempt = delivery.attempt, "webhook refused; will retry");
                false
            }
            Err(error) => {
                tracing::debug!(event = %delivery.event_id, %error,
                    attempt = delivery.attempt, "webhook delivery failed; will retry");
                false
            }
        }
    }
}
