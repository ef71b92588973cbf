//! Group commit for creates: requests that arrive while a transaction commits are written
//! together in the next one, so a burst costs a few statements and one fsync per batch
//! instead of per request. Each caller still gets its answer only after the commit.

use std::sync::Arc;

use shared::catalog::{self, CatalogError, Change, NewCustomer, Origin};
use shared::db::{self, DbError, PgPool};
use shared::domain::Provider;
use tokio::sync::{mpsc, oneshot, Mutex};

/// The most creates written in one transaction.
const MAX_BATCH: usize = 256;
/// Transactions in flight at once (each holds one connection).
pub const COMMITTERS: usize = 2;

type Reply = oneshot::Sender<Result<Change, CatalogError>>;

/// A handle to the committers.
#[derive(Clone)]
pub struct CreateBatcher {
    queue: mpsc::Sender<(NewCustomer, Origin, Reply)>,
}

impl CreateBatcher {
    /// Starts the committer tasks.
    pub fn start(pool: PgPool, providers: Vec<Provider>) -> Self {
        let (queue, rx) = mpsc::channel::<(NewCustomer, Origin, Reply)>(MAX_BATCH * COMMITTERS * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..COMMITTERS {
            let (rx, pool, providers) = (rx.clone(), pool.clone(), providers.clone());
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else {
                            return;
                        };
                        let mut batch = vec![first];
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(item) => batch.push(item),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    commit(&pool, &providers, batch).await;
                }
            });
        }
        Self { queue }
    }

    /// Creates one customer as part of the next batch; resolves after its commit.
    pub async fn create(&self, new: NewCustomer, origin: Origin) -> Result<Change, CatalogError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((new, origin, reply)).await.map_err(|_| {
            CatalogError::Db(DbError::Unexpected(anyhow::anyhow!("batcher stopped")))
        })?;
        answer
            .await
            .map_err(|_| CatalogError::Db(DbError::Unexpected(anyhow::anyhow!("batch dropped"))))?
    }
}

async fn commit(pool: &PgPool, providers: &[Provider], batch: Vec<(NewCustomer, Origin, Reply)>) {
    let items: Vec<(NewCustomer, Origin)> = batch
        .iter()
        .map(|(new, origin, _)| (new.clone(), origin.clone()))
        .collect();
    let providers_for_batch = providers.to_vec();
    let answers = db::run(pool, move |conn| {
        match catalog::create_batch(conn, &items, &providers_for_batch) {
            Ok(answers) => Ok(answers),
            // One bad item must not fail the others: fall back to one transaction each.
            Err(DbError::Unexpected(e)) if items.len() > 1 => {
                tracing::warn!(error = %e, size = items.len(), "batch failed; committing one by one");
                Ok(items
                    .iter()
                    .map(|(new, origin)| catalog::create(conn, new, &providers_for_batch, origin))
                    .collect())
            }
            Err(e) => Err(e),
        }
    })
    .await;
    match answers {
        Ok(answers) => {
            for ((_, _, reply), answer) in batch.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            let message = e.to_string();
            let unavailable = matches!(e, DbError::Unavailable(_));
            for (_, _, reply) in batch {
                let error = if unavailable {
                    DbError::Unavailable(message.clone())
                } else {
                    DbError::Unexpected(anyhow::anyhow!(message.clone()))
                };
                let _ = reply.send(Err(CatalogError::Db(error)));
            }
        }
    }
}
