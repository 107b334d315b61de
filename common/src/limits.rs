//! Rate limits: the login brute-force guard, the generic per-IP limiter and the download
//! limit all ask one [`Limiter`] whether a key may act once more this minute.
//!
//! The algorithm is GCRA (the generic cell rate algorithm, as in `governor` and
//! `redis-cell`): a key's whole state is one "theoretical arrival time" (TAT). A limit of
//! `n` per minute lets `n` requests through at once, then one more every `60/n` seconds;
//! a refusal says exactly when the next one will pass (`Retry-After`). Unlike a fixed
//! window, a burst cannot straddle a minute boundary to get `2n` through.
//!
//! Two stores with the same arithmetic:
//! - **Redis** (whenever `REDIS_URL` is set): one Lua script reads and updates the TAT
//!   atomically on the server, with the server's clock, so every API replica shares the
//!   limits. Keys live under `QUEUE_NAME:limit:` and expire once their bucket is full again.
//! - **Memory** otherwise: a map in this process (the embedded mode has one API process).
//!   If Redis fails at a request, that request falls back to the memory store and the
//!   error is logged: the limits still hold per replica instead of vanishing (the
//!   original's fallback was re-created on every request and never refused anything).
//!
//! `governor` was considered for the memory store and rejected: the login guard must ask
//! whether an account is already locked *before* checking the password (without spending
//! a cell), and spend a cell only when the password was wrong, so that a correct password
//! never locks its owner out and a locked account never reveals whether a guess was right.
//! `governor` has no side-effect-free check. A hand-written GCRA of a few lines with a
//! `peek` gives that, and the identical formula in Rust and Lua makes the behaviour with
//! and without Redis the same, which the integration tests check on both.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A refusal: the caller may try again after this many seconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

/// What to do with a key's cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Only ask whether one more would pass.
    Peek,
    /// Take a cell when one is free.
    Take,
}

/// The shared limiter of an API process.
pub struct Limiter {
    memory: MemoryStore,
    redis: Option<RedisStore>,
}

struct RedisStore {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    script: redis::Script,
}

/// The GCRA step in Lua: KEYS[1] the key; ARGV period (ms), limit, spend (0 peek, 1 take).
/// Returns 0 when allowed, else the wait in ms until one more would pass.
const GCRA_LUA: &str = r#"
local period = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local take = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = math.ceil(period / limit)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
if next_tat - now > period then
  return math.ceil(next_tat - now - period)
end
if take == 1 then
  redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(next_tat - now))
end
return 0
"#;

impl Limiter {
    /// A limiter in this process's memory only.
    pub fn in_memory() -> Limiter {
        Limiter {
            memory: MemoryStore::default(),
            redis: None,
        }
    }

    /// A limiter shared through Redis; `prefix` namespaces its keys.
    pub fn with_redis(conn: redis::aio::ConnectionManager, prefix: &str) -> Limiter {
        Limiter {
            memory: MemoryStore::default(),
            redis: Some(RedisStore {
                conn,
                prefix: format!("{prefix}:limit:"),
                script: redis::Script::new(GCRA_LUA),
            }),
        }
    }

    /// Which store answers: `redis` or `memory`.
    pub fn backend_name(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// Whether `key` may act once more under `per_minute`; with [`Spend::Take`], a cell is
    /// spent when it may.
    pub async fn check(&self, key: &str, per_minute: u32, spend: Spend) -> Result<(), RetryAfter> {
        if let Some(redis) = &self.redis {
            let mut conn = redis.conn.clone();
            let answer: Result<u64, _> = redis
                .script
                .key(format!("{}{key}", redis.prefix))
                .arg(PERIOD.as_millis() as u64)
                .arg(per_minute.max(1))
                .arg(u8::from(spend == Spend::Take))
                .invoke_async(&mut conn)
                .await;
            match answer {
                Ok(0) => return Ok(()),
                Ok(wait_ms) => return Err(RetryAfter(wait_ms.div_ceil(1000).max(1))),
                Err(err) => {
                    tracing::error!(error = %err, "rate limiter: Redis failed, limiting in memory");
                }
            }
        }
        self.memory.check(key, per_minute, spend, Instant::now())
    }
}

/// The window a per-minute limit is spread over.
const PERIOD: Duration = Duration::from_secs(60);

/// Past this many keys, expired ones are swept on the next write.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Default)]
struct MemoryStore {
    /// Key → theoretical arrival time.
    tats: Mutex<HashMap<String, Instant>>,
}

impl MemoryStore {
    fn check(
        &self,
        key: &str,
        per_minute: u32,
        spend: Spend,
        now: Instant,
    ) -> Result<(), RetryAfter> {
        let interval = PERIOD / per_minute.max(1);
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        let tat = tats.get(key).copied().unwrap_or(now).max(now);
        let next_tat = tat + interval;
        let ahead = next_tat - now;
        if ahead > PERIOD {
            let wait = ahead - PERIOD;
            return Err(RetryAfter(wait.as_millis().div_ceil(1000).max(1) as u64));
        }
        if spend == Spend::Take {
            if tats.len() >= SWEEP_ABOVE {
                tats.retain(|_, tat| *tat > now);
            }
            tats.insert(key.to_owned(), next_tat);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_limit_passes_then_one_per_interval() {
        let store = MemoryStore::default();
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(store.check("k", 10, Spend::Take, start), Ok(()));
        }
        assert_eq!(store.check("k", 10, Spend::Take, start), Err(RetryAfter(6)));
        // Other keys are independent.
        assert_eq!(store.check("other", 10, Spend::Take, start), Ok(()));
        // One interval (6 s) later, exactly one more passes.
        let later = start + Duration::from_secs(6);
        assert_eq!(store.check("k", 10, Spend::Take, later), Ok(()));
        assert!(store.check("k", 10, Spend::Take, later).is_err());
        // A full minute later the whole burst is back.
        let much_later = later + PERIOD;
        for _ in 0..10 {
            assert_eq!(store.check("k", 10, Spend::Take, much_later), Ok(()));
        }
    }

    #[test]
    fn peeking_spends_nothing() {
        let store = MemoryStore::default();
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(store.check("k", 2, Spend::Peek, now), Ok(()));
        }
        store.check("k", 2, Spend::Take, now).unwrap();
        store.check("k", 2, Spend::Take, now).unwrap();
        assert_eq!(store.check("k", 2, Spend::Peek, now), Err(RetryAfter(30)));
    }
}
