//! Delivers every event to the webhook URL, signed as Stripe signs, at least once: a non-2xx
//! answer (3xx included) or a connection error is retried with backoff, each attempt with a
//! fresh `t` and signature. Delivery runs on its own task so it never slows an API response.
//! A pause holds every delivery (they still count as pending) until it is lifted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::Value;
use tokio::sync::Notify;
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
    /// The event's place in the order events were queued, to tell forgotten ones.
    serial: u64,
    body: Arc<Vec<u8>>,
    attempt: u32,
}

/// Deliveries not finished yet: waiting their turn, waiting for a retry, or being sent.
#[derive(Default)]
struct Queue {
    ready: VecDeque<Delivery>,
    retries: Vec<(Instant, Delivery)>,
    in_flight: usize,
    paused: bool,
    next_serial: u64,
    /// Deliveries of events queued before this serial belong to forgotten events.
    forgotten_below: u64,
}

impl Queue {
    /// Moves the retries that are due to the back of the ready queue.
    fn promote_due(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) = self.retries.drain(..).partition(|(at, _)| *at <= now);
        self.retries = later;
        self.ready.extend(due.into_iter().map(|(_, d)| d));
    }

    fn next_retry(&self) -> Option<Instant> {
        self.retries.iter().map(|(at, _)| *at).min()
    }
}

/// The queue between the store, which adds a delivery per event, and the delivery task.
/// It also holds the pause switch, so that held deliveries still count as pending.
pub struct Outbox {
    queue: Mutex<Queue>,
    wake: Notify,
    pub duplicate_rate: f64,
}

impl Outbox {
    /// An empty, running queue; `duplicate_rate` is the share of events queued twice.
    pub fn new(duplicate_rate: f64) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            duplicate_rate,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `copies` deliveries of the event. Stripe sends JSON pretty-printed, so do we:
    /// a receiver that verifies a re-serialised body fails here as it would there.
    pub fn send(&self, event: &Value, copies: usize) {
        let body = Arc::new(serde_json::to_vec_pretty(event).expect("events serialise"));
        let event_id = event["id"].as_str().unwrap_or_default().to_owned();
        let mut queue = self.lock();
        let serial = queue.next_serial;
        queue.next_serial += 1;
        for _ in 0..copies {
            queue.ready.push_back(Delivery {
                event_id: event_id.clone(),
                serial,
                body: body.clone(),
                attempt: 0,
            });
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Deliveries queued, held by a pause, being sent or waiting for a retry.
    pub fn pending(&self) -> usize {
        let queue = self.lock();
        queue.ready.len() + queue.retries.len() + queue.in_flight
    }

    /// Holds every delivery (new ones and retries) until [`Outbox::resume`]; one already
    /// being sent finishes.
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// Lets held deliveries go out, in order.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.wake.notify_one();
    }

    /// Drops every delivery queued so far, since their events were forgotten; one being
    /// sent is dropped instead of retried. Returns how many were dropped.
    pub fn forget_queued(&self) -> usize {
        let mut queue = self.lock();
        queue.forgotten_below = queue.next_serial;
        let dropped = queue.ready.len() + queue.retries.len();
        queue.ready.clear();
        queue.retries.clear();
        dropped
    }
}

/// What the delivery task needs.
pub struct Deliverer {
    pub url: String,
    pub secret: String,
    pub shuffle: bool,
    pub rng: StdRng,
    pub outbox: Arc<Outbox>,
    pub store: Arc<Mutex<Store>>,
}

/// Backoff before attempt `n + 1`: 100 ms doubling, capped at 5 s, with jitter.
fn backoff(attempt: u32, rng: &mut StdRng) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(10)).min(5_000);
    Duration::from_millis(rng.gen_range(base / 2..=base))
}

impl Deliverer {
    /// Runs until aborted: one delivery at a time, in order unless shuffling; failed ones
    /// wait for their retry without holding up the rest.
    pub async fn run(mut self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Stripe/1.0 (+https://stripe.com/docs/webhooks)")
            .build()
            .expect("an HTTP client");
        loop {
            for delivery in self.next_batch().await {
                let delivered = self.attempt(&client, &delivery).await;
                if delivered {
                    // Before the delivery stops counting as pending, so that a caller who
                    // waited for idle sees the event as delivered.
                    self.store
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .mark_delivered(&delivery.event_id);
                }
                self.settle(delivery, delivered);
            }
        }
    }

    /// Waits for the next deliveries to send (a shuffled window, or the oldest one) and
    /// counts them as in flight.
    async fn next_batch(&mut self) -> Vec<Delivery> {
        let mut window_closes: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let wake_at = {
                let mut queue = self.outbox.lock();
                if queue.paused {
                    window_closes = None;
                    None
                } else {
                    queue.promote_due(now);
                    if queue.ready.is_empty() {
                        queue.next_retry()
                    } else {
                        let closes = *window_closes.get_or_insert(now + SHUFFLE_WAIT);
                        let full = queue.ready.len() >= SHUFFLE_WINDOW;
                        if !self.shuffle || full || now >= closes {
                            let n = if self.shuffle {
                                queue.ready.len().min(SHUFFLE_WINDOW)
                            } else {
                                1
                            };
                            let mut batch: Vec<Delivery> = queue.ready.drain(..n).collect();
                            queue.in_flight += n;
                            drop(queue);
                            if self.shuffle {
                                batch.shuffle(&mut self.rng);
                            }
                            return batch;
                        }
                        Some(closes)
                    }
                }
            };
            // A notification sent since the queue was unlocked is kept as a permit, so
            // none is missed between the check and the wait.
            match wake_at {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, self.outbox.wake.notified()).await;
                }
                None => self.outbox.wake.notified().await,
            }
        }
    }

    /// Records an attempt's outcome: done, given up, forgotten, or queued for a retry.
    fn settle(&mut self, mut delivery: Delivery, delivered: bool) {
        let mut queue = self.outbox.lock();
        queue.in_flight -= 1;
        if delivered || delivery.serial < queue.forgotten_below {
            return;
        }
        delivery.attempt += 1;
        if delivery.attempt >= MAX_ATTEMPTS {
            tracing::warn!(event = %delivery.event_id, "webhook delivery given up");
            return;
        }
        let at = Instant::now() + backoff(delivery.attempt, &mut self.rng);
        queue.retries.push((at, delivery));
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
