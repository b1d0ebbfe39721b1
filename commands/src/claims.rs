//! Claims on workflow steps: session advisory locks on one connection per process.
//!
//! Whoever works on a step (the worker running it, or a request paying a booking, whose
//! `confirm_payment` step waits behind it) holds its claim. A claim is a session advisory lock,
//! so it lasts exactly as long as the owner's database session: a process that dies (SIGKILL,
//! lost connection) drops all its claims at once, and another process can take the steps over
//! at its next look, with no lease to run out and none to lapse under a slow gateway.
//!
//! One session serves every claim of the process; the session is locked only for the
//! lock/unlock statement itself, never while the claimed work runs. Advisory locks are
//! re-entrant within a session, so the claims held in this process are also tracked here: a
//! second claim of the same step from the same process is refused like one from elsewhere.
//!
//! If the session itself breaks while the process lives, its claims end with it and another
//! process may start the same step; every step is idempotent and every gateway call carries an
//! idempotency key, so that costs a repeated call, never a second charge.

use std::collections::HashSet;
use std::sync::{Arc, Mutex as SyncMutex, PoisonError};

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;
use uuid::Uuid;

/// The advisory lock key of a step: its claim.
const CLAIM_KEY: &str = "hashtextextended('fleetledger.step:' || $1::text, 0)";

/// The process's claims. Cheap to clone (shared).
#[derive(Clone)]
pub struct Claims {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    session: Mutex<Option<PgConnection>>,
    held: SyncMutex<HashSet<Uuid>>,
}

/// A step this process holds. Release it with [`Claim::release`]; dropped without that (a
/// cancelled request), it is released in the background.
pub struct Claim {
    claims: Claims,
    step: Option<Uuid>,
}

impl Claim {
    pub fn step(&self) -> Uuid {
        self.step.unwrap_or_default()
    }

    pub async fn release(mut self) {
        if let Some(step) = self.step.take() {
            self.claims.release(step).await;
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(step) = self.step.take() {
            let claims = self.claims.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { claims.release(step).await });
            }
        }
    }
}

impl Claims {
    pub fn new(pool: PgPool) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                session: Mutex::new(None),
                held: SyncMutex::new(HashSet::new()),
            }),
        }
    }

    /// Claim `step` unless someone (here or in another process) holds it.
    pub async fn try_claim(&self, step: Uuid) -> Result<Option<Claim>, sqlx::Error> {
        if !self.held().insert(step) {
            return Ok(None);
        }
        let locked = self
            .on_session(&format!("SELECT pg_try_advisory_lock({CLAIM_KEY})"), step)
            .await;
        match locked {
            Ok(true) => Ok(Some(Claim {
                claims: self.clone(),
                step: Some(step),
            })),
            Ok(false) => {
                self.held().remove(&step);
                Ok(None)
            }
            Err(e) => {
                self.held().remove(&step);
                Err(e)
            }
        }
    }

    async fn release(&self, step: Uuid) {
        if let Err(e) = self
            .on_session(&format!("SELECT pg_advisory_unlock({CLAIM_KEY})"), step)
            .await
        {
            // The session is gone, and its locks with it.
            tracing::warn!(step.id = %step, error = %e, "releasing a claim failed");
        }
        self.held().remove(&step);
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        // A set of ids: no invariant a panicking holder could break half-way.
        self.inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Run one lock statement on the claim session, opening it if needed; a session that
    /// fails is dropped (its locks end with it) and the next call opens a new one.
    async fn on_session(&self, sql: &str, step: Uuid) -> Result<bool, sqlx::Error> {
        let mut session = self.inner.session.lock().await;
        let conn = match session.as_mut() {
            Some(conn) => conn,
            None => session.insert(
                PgConnection::connect_with(self.inner.pool.connect_options().as_ref()).await?,
            ),
        };
        let result = sqlx::query_scalar::<_, bool>(sql)
            .bind(step)
            .fetch_one(conn)
            .await;
        if result.is_err() {
            *session = None;
        }
        result
    }
}
