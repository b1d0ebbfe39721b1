//! Rate limiting per user (or client IP when anonymous): a fixed window counted in Redis
//! (`INCR` + `PEXPIRE` under a key prefix), falling back to an in-process count while Redis is
//! unreachable, so the limit keeps holding (per process) through a Redis outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

/// How long a Redis call may take before the in-process count is used instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(150);
/// After a Redis failure, how long to count in-process before trying Redis again.
const REDIS_RETRY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct RateLimitConfig {
    /// Requests allowed per key and window; 0 disables the limit.
    pub requests: u64,
    pub window: Duration,
    /// `REDIS_URL`; `None` counts in-process only.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (tests use their own).
    pub key_prefix: String,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests: 600,
            window: Duration::from_secs(60),
            redis_url: None,
            key_prefix: "fleetledger:".into(),
        }
    }
}

/// What the limiter decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Limited { retry_after_secs: u64 },
}

/// A connection's share of the limiter: WebSocket operations count one each, like HTTP
/// requests (put in the connection's data; [`OperationQuota`] checks it).
#[derive(Clone)]
pub struct ConnectionQuota {
    pub limiter: RateLimiter,
    pub key: String,
}

/// The limit on login attempts per account (schema data; the `login` resolver checks it), so
/// that guessing a password is slow whatever the addresses it comes from.
#[derive(Clone)]
pub struct LoginGuard {
    pub limiter: RateLimiter,
    /// Attempts per account and window (0 = no limit).
    pub attempts: u64,
    /// Attempts per client address and window, whatever the account (0 = no limit): one
    /// address trying many accounts.
    pub attempts_per_address: u64,
    pub window: Duration,
}

/// Counts every operation that arrives over a WebSocket against the connection's quota.
pub struct OperationQuota;

impl async_graphql::extensions::ExtensionFactory for OperationQuota {
    fn create(&self) -> Arc<dyn async_graphql::extensions::Extension> {
        Arc::new(OperationQuotaExtension)
    }
}

struct OperationQuotaExtension;

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for OperationQuotaExtension {
    async fn prepare_request(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        request: async_graphql::Request,
        next: async_graphql::extensions::NextPrepareRequest<'_>,
    ) -> async_graphql::ServerResult<async_graphql::Request> {
        if let Some(quota) = ctx.data_opt::<ConnectionQuota>()
            && let Decision::Limited { retry_after_secs } = quota.limiter.check(&quota.key).await
        {
            metrics::counter!("fleetledger_rate_limited_total").increment(1);
            let mut extensions = async_graphql::ErrorExtensionValues::default();
            extensions.set("code", crate::error::Code::RateLimited.as_str());
            extensions.set("retryAfter", retry_after_secs);
            let mut error = async_graphql::ServerError::new(
                format!("too many requests; retry in {retry_after_secs} s"),
                None,
            );
            error.extensions = Some(extensions);
            return Err(error);
        }
        next.run(ctx, request).await
    }
}

#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    config: RateLimitConfig,
    client: Option<redis::Client>,
    conn: tokio::sync::Mutex<RedisState>,
    local: Mutex<HashMap<String, (u64, u64)>>,
}

#[derive(Default)]
struct RedisState {
    conn: Option<MultiplexedConnection>,
    failed_at: Option<Instant>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Result<Self, redis::RedisError> {
        let client = config
            .redis_url
            .as_deref()
            .map(redis::Client::open)
            .transpose()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                client,
                conn: tokio::sync::Mutex::new(RedisState::default()),
                local: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Count one request for `key` (`user:<id>` or `ip:<addr>`).
    pub async fn check(&self, key: &str) -> Decision {
        let config = &self.inner.config;
        self.check_against(key, config.requests, config.window)
            .await
    }

    /// Count one attempt for `key` against a limit of its own: `requests` per `window`
    /// (0 = no limit). Shares the counters' store (Redis, else in-process).
    pub async fn check_against(&self, key: &str, requests: u64, window: Duration) -> Decision {
        if requests == 0 {
            return Decision::Allowed;
        }
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let now_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        let window = now_ms / window_ms;
        let count = match self.redis_count(key, window, window_ms).await {
            Some(n) => n,
            None => self.local_count(key, window),
        };
        if count <= requests {
            Decision::Allowed
        } else {
            let left_ms = (window + 1) * window_ms - now_ms;
            Decision::Limited {
                retry_after_secs: left_ms.div_ceil(1000).max(1),
            }
        }
    }

    async fn redis_count(&self, key: &str, window: u64, window_ms: u64) -> Option<u64> {
        let client = self.inner.client.as_ref()?;
        let mut state = self.inner.conn.lock().await;
        if state.failed_at.is_some_and(|t| t.elapsed() < REDIS_RETRY) {
            return None;
        }
        if state.conn.is_none() {
            match tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection())
                .await
            {
                Ok(Ok(conn)) => state.conn = Some(conn),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "rate limiter: Redis unreachable; counting in-process");
                    state.failed_at = Some(Instant::now());
                    return None;
                }
                Err(_) => {
                    tracing::warn!("rate limiter: Redis connect timed out; counting in-process");
                    state.failed_at = Some(Instant::now());
                    return None;
                }
            }
        }
        let mut conn = state.conn.clone()?;
        drop(state);
        let redis_key = format!("{}ratelimit:{key}:{window}", self.inner.config.key_prefix);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .incr(&redis_key, 1u64)
            .pexpire(&redis_key, i64::try_from(window_ms).unwrap_or(i64::MAX))
            .ignore();
        let call = pipe.query_async::<(u64,)>(&mut conn);
        match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok((count,))) => Some(count),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rate limiter: Redis call failed; counting in-process");
                self.mark_failed().await;
                None
            }
            Err(_) => {
                tracing::warn!("rate limiter: Redis call timed out; counting in-process");
                self.mark_failed().await;
                None
            }
        }
    }

    async fn mark_failed(&self) {
        let mut state = self.inner.conn.lock().await;
        state.conn = None;
        state.failed_at = Some(Instant::now());
    }

    fn local_count(&self, key: &str, window: u64) -> u64 {
        let mut map = self
            .inner
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() > 100_000 {
            map.retain(|_, (w, _)| *w == window);
        }
        let entry = map.entry(key.to_owned()).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 += 1;
        entry.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_in_process_count_limits_per_key_and_names_a_retry() {
        let limiter = RateLimiter::new(RateLimitConfig {
            requests: 2,
            window: Duration::from_secs(60),
            redis_url: None,
            key_prefix: "t:".into(),
        })
        .unwrap();
        assert_eq!(limiter.check("ip:1").await, Decision::Allowed);
        assert_eq!(limiter.check("ip:1").await, Decision::Allowed);
        assert!(matches!(
            limiter.check("ip:1").await,
            Decision::Limited { retry_after_secs } if (1..=60).contains(&retry_after_secs)
        ));
        assert_eq!(limiter.check("ip:2").await, Decision::Allowed);
    }
}
