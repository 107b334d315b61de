//! The per-process cache of open sessions, so that an authenticated request does not pay a
//! database round trip to learn that its session is still open and its account active.
//!
//! Being fast must not make revocation slow: deactivating a user, revoking a session or a
//! device, a detected refresh-token reuse and a logout all end access tokens at once. So an
//! entry is dropped
//! - by this process, right after its own change to a user or a session commits (the
//!   repositories in `users` and `sessions` call [`SessionCache::forget_user`]);
//! - on Postgres, by every other process too: triggers on `users` and `auth_sessions` send
//!   `NOTIFY monassurance_auth` with the user's id at commit, whoever made the change
//!   (another API replica, an operator in `psql`), and each API listens
//!   ([`super::Db::watch_session_changes`]). While that listener is not connected the
//!   cache is off and every request asks the database, as it would without a cache;
//! - at the latest after `AUTH_CACHE_SECONDS` (and never after the session's own expiry),
//!   which bounds what a change the process cannot hear about could leave behind (on
//!   SQLite: `create-admin` run by another process while the API serves).
//!
//! A lookup that misses records the cache's generation before it reads the database; its
//! result is kept only if no invalidation happened in between, so an answer read before a
//! revocation committed can never be cached after the revocation was heard.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::User;

/// More open sessions than this are not cached (the cache is cleared of expired entries
/// first); requests past it simply ask the database.
const MAX_ENTRIES: usize = 10_000;

/// What a lookup found.
pub enum Cached {
    /// The session is open and this is its user, as the database said less than a TTL ago.
    Hit(User),
    /// Ask the database, then offer the answer to [`SessionCache::store`] with this
    /// generation.
    Miss(u64),
}

#[derive(Debug)]
pub struct SessionCache {
    ttl: Duration,
    /// False while changes made elsewhere could go unheard (Postgres without its listener).
    enabled: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every invalidation.
    generation: u64,
    entries: HashMap<Uuid, Entry>,
}

#[derive(Debug)]
struct Entry {
    user: User,
    until: Instant,
}

impl SessionCache {
    /// A cache keeping entries for `ttl` (zero turns it off), enabled from the start or
    /// only once [`SessionCache::enable`] is called.
    pub fn new(ttl: Duration, enabled: bool) -> SessionCache {
        SessionCache {
            ttl,
            enabled: AtomicBool::new(enabled && !ttl.is_zero()),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The user of `session_id` if it was found open recently and nothing invalidated it.
    pub fn get(&self, user_id: Uuid, session_id: Uuid) -> Cached {
        let mut inner = self.lock();
        if !self.enabled.load(Ordering::Acquire) {
            return Cached::Miss(inner.generation);
        }
        match inner.entries.get(&session_id) {
            Some(entry) if entry.user.id == user_id && entry.until > Instant::now() => {
                Cached::Hit(entry.user.clone())
            }
            Some(_) => {
                inner.entries.remove(&session_id);
                Cached::Miss(inner.generation)
            }
            None => Cached::Miss(inner.generation),
        }
    }

    /// Keeps what the database said about an open session, unless an invalidation came
    /// after `generation` was read.
    pub fn store(
        &self,
        generation: u64,
        session_id: Uuid,
        user: &User,
        session_expires_at: DateTime<Utc>,
    ) {
        let now = Instant::now();
        let left = (session_expires_at - crate::now())
            .to_std()
            .unwrap_or_default();
        let until = now + self.ttl.min(left);
        let mut inner = self.lock();
        if !self.enabled.load(Ordering::Acquire) || inner.generation != generation || until <= now {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.retain(|_, entry| entry.until > now);
            if inner.entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        inner.entries.insert(
            session_id,
            Entry {
                user: user.clone(),
                until,
            },
        );
    }

    /// Drops every entry of `user_id` (its account or one of its sessions changed).
    pub fn forget_user(&self, user_id: Uuid) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.retain(|_, entry| entry.user.id != user_id);
    }

    /// Drops everything (changes may have gone unheard).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
    }

    /// Turns the cache off and empties it: from now on every lookup misses.
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Release);
        self.clear();
    }

    /// Turns the cache on, empty (a zero TTL keeps it off).
    pub fn enable(&self) {
        self.clear();
        self.enabled.store(!self.ttl.is_zero(), Ordering::Release);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The critical sections cannot panic halfway through an update that matters: a
        // poisoned lock still holds a usable map.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn user(id: Uuid) -> User {
        User {
            id,
            email: format!("{id}@example.com"),
            full_name: None,
            hashed_password: String::new(),
            role: Role::Agent,
            is_active: true,
            created_at: crate::now(),
        }
    }

    fn later() -> DateTime<Utc> {
        crate::now() + chrono::Duration::hours(1)
    }

    fn generation(cache: &SessionCache, user_id: Uuid, session_id: Uuid) -> u64 {
        match cache.get(user_id, session_id) {
            Cached::Miss(generation) => generation,
            Cached::Hit(_) => panic!("expected a miss"),
        }
    }

    fn hit(cache: &SessionCache, user_id: Uuid, session_id: Uuid) -> bool {
        matches!(cache.get(user_id, session_id), Cached::Hit(_))
    }

    #[test]
    fn a_stored_session_hits_until_its_user_is_forgotten() {
        let cache = SessionCache::new(Duration::from_secs(60), true);
        let (alice, bob) = (user(Uuid::now_v7()), user(Uuid::now_v7()));
        let (sa, sb) = (Uuid::now_v7(), Uuid::now_v7());
        cache.store(generation(&cache, alice.id, sa), sa, &alice, later());
        cache.store(generation(&cache, bob.id, sb), sb, &bob, later());
        assert!(hit(&cache, alice.id, sa));
        // The session id alone is not enough: the token's user must match.
        assert!(!hit(&cache, bob.id, sa));

        cache.forget_user(alice.id);
        assert!(!hit(&cache, alice.id, sa));
        assert!(hit(&cache, bob.id, sb), "another user's entry survives");
    }

    #[test]
    fn an_answer_read_before_an_invalidation_is_not_kept() {
        let cache = SessionCache::new(Duration::from_secs(60), true);
        let alice = user(Uuid::now_v7());
        let session = Uuid::now_v7();
        let before = generation(&cache, alice.id, session);
        // The revocation is heard while the request is still reading the database.
        cache.forget_user(alice.id);
        cache.store(before, session, &alice, later());
        assert!(!hit(&cache, alice.id, session));
    }

    #[test]
    fn entries_end_with_the_ttl_or_the_session() {
        let cache = SessionCache::new(Duration::from_secs(60), true);
        let alice = user(Uuid::now_v7());
        let ended = Uuid::now_v7();
        let g = generation(&cache, alice.id, ended);
        cache.store(
            g,
            ended,
            &alice,
            crate::now() - chrono::Duration::seconds(1),
        );
        assert!(
            !hit(&cache, alice.id, ended),
            "an expired session is not kept"
        );

        let off = SessionCache::new(Duration::ZERO, true);
        assert!(!off.is_enabled(), "a zero TTL turns the cache off");
        let session = Uuid::now_v7();
        off.store(
            generation(&off, alice.id, session),
            session,
            &alice,
            later(),
        );
        assert!(!hit(&off, alice.id, session));
    }

    #[test]
    fn a_disabled_cache_forgets_and_keeps_nothing_until_enabled() {
        let cache = SessionCache::new(Duration::from_secs(60), false);
        let alice = user(Uuid::now_v7());
        let session = Uuid::now_v7();
        cache.store(
            generation(&cache, alice.id, session),
            session,
            &alice,
            later(),
        );
        assert!(!hit(&cache, alice.id, session));

        cache.enable();
        cache.store(
            generation(&cache, alice.id, session),
            session,
            &alice,
            later(),
        );
        assert!(hit(&cache, alice.id, session));

        cache.disable();
        assert!(!hit(&cache, alice.id, session));
        cache.enable();
        assert!(!hit(&cache, alice.id, session), "disabling emptied it");
    }
}
