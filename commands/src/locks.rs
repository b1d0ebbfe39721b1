//! The per-car Redis lock that makes concurrent booking requests for one car queue up.
//!
//! `SET fleetledger:lock:car:<id> <token> NX PX <ttl>`; released with a compare-and-delete
//! script so only the holder's token frees it. It only spares retries: every failure to reach
//! Redis is treated as "no lock" and the request goes ahead, still protected by the event
//! store's version check.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;
use uuid::Uuid;

const RELEASE: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;

/// How long any single Redis call may take before we go on without the lock.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// A Redis-backed lock per car; a no-op when Redis is not configured or not reachable.
#[derive(Clone, Default)]
pub struct HotCarLock {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    client: redis::Client,
    prefix: String,
    conn: Mutex<Option<MultiplexedConnection>>,
}

/// A held lock; released when dropped (in the background).
pub struct LockGuard {
    inner: Arc<Inner>,
    key: String,
    token: String,
}

impl HotCarLock {
    /// No lock at all (Redis not configured).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// A lock on the Redis at `url`; keys start with `prefix` (tests use their own prefix).
    pub fn new(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            inner: Some(Arc::new(Inner {
                client: redis::Client::open(url)?,
                prefix: prefix.to_owned(),
                conn: Mutex::new(None),
            })),
        })
    }

    /// Wait up to `wait` for the car's lock. `None` means "go ahead unlocked": Redis is
    /// unreachable, or the wait ran out (the holder may be slow; the version check still holds).
    pub async fn acquire(&self, car_id: Uuid, ttl: Duration, wait: Duration) -> Option<LockGuard> {
        let inner = self.inner.as_ref()?;
        let key = format!("{}lock:car:{car_id}", inner.prefix);
        let token = Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + wait;
        let mut pauses =
            eventstore::backoff::Backoff::new(Duration::from_millis(2), Duration::from_millis(50))
                .pauses();
        loop {
            let mut conn = inner.connection().await?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            let set = cmd.query_async::<Option<String>>(&mut conn);
            match tokio::time::timeout(CALL_TIMEOUT, set).await {
                Ok(Ok(Some(_))) => {
                    return Some(LockGuard {
                        inner: Arc::clone(inner),
                        key,
                        token,
                    });
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "redis lock unavailable; going ahead without it");
                    inner.reset().await;
                    return None;
                }
                Err(_) => {
                    tracing::debug!("redis lock timed out; going ahead without it");
                    inner.reset().await;
                    return None;
                }
            }
            let pause = pauses.next().unwrap_or(Duration::from_millis(50));
            if tokio::time::Instant::now() + pause > deadline {
                return None;
            }
            tokio::time::sleep(pause).await;
        }
    }
}

impl Inner {
    async fn connection(&self) -> Option<MultiplexedConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Some(conn.clone());
        }
        match tokio::time::timeout(CALL_TIMEOUT, self.client.get_multiplexed_async_connection())
            .await
        {
            Ok(Ok(conn)) => {
                *slot = Some(conn.clone());
                Some(conn)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot reach redis");
                None
            }
            Err(_) => None,
        }
    }

    async fn reset(&self) {
        *self.conn.lock().await = None;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let inner = Arc::clone(&self.inner);
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.token);
        // Without a runtime (shutdown) the lock simply expires after its TTL.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Some(mut conn) = inner.connection().await {
                    let script = redis::Script::new(RELEASE);
                    let mut call = script.key(&key);
                    call.arg(&token);
                    let release = call.invoke_async::<i64>(&mut conn);
                    let _ = tokio::time::timeout(CALL_TIMEOUT, release).await;
                }
            });
        }
    }
}
