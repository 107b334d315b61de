//! The bulk lane's feeder: how batch items reach the queue without holding up interactive
//! documents, and how the workers are shared between owners.
//!
//! An interactive document is pushed to the queue as soon as it is accepted. A bulk
//! document (every batch item, and a single document asked for with `priority: bulk`)
//! waits in its row with no lease; the feeder keeps at most `BULK_WINDOW` bulk documents on
//! the queue or rendering, all workers together, and tops the window up as they finish.
//! The queue is first in, first out, so an interactive document waits behind at most the
//! window, never behind a 10,000-item batch; and the window is shared between the owners
//! with waiting bulk work by [`share`], so one agent's 50,000 items do not hold back
//! another agent's ten.
//!
//! Every worker runs a feeder ([`run`]): woken when its own bulk documents have freed a
//! quarter of the window, and every `FEEDER_INTERVAL_MS` regardless. The API tops up once
//! right after accepting a batch, so the first items start at once. A place is taken in
//! the row (`lease_until` set, guarded by `lease_until IS NULL`), so two feeders never
//! push the same document; two feeders topping up at the same moment may together
//! overshoot the window by up to its size, which costs an interactive document a few
//! milliseconds, not correctness. A push the queue refuses ends the lease, and the
//! reconciler enqueues the document like any other whose job was lost.
//!
//! Rejected: a second apalis queue for bulk work (a worker's slots would be split between
//! two consumers, so bulk work would idle slots while interactive work waited, and
//! fairness between owners would still need a rule of our own); pushing every item when
//! the batch is accepted (10,000 pushes on the request path, and a FIFO queue that puts
//! an interactive document behind all of them).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::Db;
use crate::db::documents::OwnerLoad;
use crate::queue::{JobQueue, RenderJob};

/// Shares `room` free places of the bulk window between the owners of `loads`: one place
/// at a time, to the owner with the fewest documents in the window among those who still
/// have documents waiting (ties: the first in `loads`, which the database orders by owner).
/// An owner whose waiting documents run out leaves the rest to the others. Returns each
/// owner given places and how many, in the order of `loads`.
pub fn share(room: i64, loads: &[OwnerLoad]) -> Vec<(Uuid, i64)> {
    let mut level: Vec<i64> = loads.iter().map(|l| l.in_window).collect();
    let mut given = vec![0i64; loads.len()];
    for _ in 0..room.max(0) {
        let next = (0..loads.len())
            .filter(|&i| given[i] < loads[i].waiting)
            .min_by_key(|&i| (level[i], i));
        let Some(i) = next else { break };
        level[i] += 1;
        given[i] += 1;
    }
    loads
        .iter()
        .zip(given)
        .filter(|(_, n)| *n > 0)
        .map(|(load, n)| (load.owner_id, n))
        .collect()
}

/// Gives waiting bulk documents the free places of a window of `window`, fairly between
/// owners, and pushes their jobs. Returns how many were pushed.
pub async fn top_up(
    db: &Db,
    queue: &JobQueue,
    window: i64,
    queued_lease: Duration,
) -> anyhow::Result<usize> {
    let room = window.max(1) - db.documents().bulk_in_window().await?;
    if room <= 0 {
        return Ok(0);
    }
    let loads = db.documents().bulk_waiting(room).await?;
    let lease_until = crate::now() + queued_lease;
    let mut pushed = 0;
    for (owner, places) in share(room, &loads) {
        let taken = db.documents().take_bulk(owner, places, lease_until).await?;
        for (n, (document_id, request_id)) in taken.iter().enumerate() {
            let job = RenderJob {
                document_id: *document_id,
                request_id: request_id.clone(),
            };
            if let Err(err) = queue.push(job).await {
                // Handed to the reconciler, like a job the queue lost.
                for (unpushed, _) in &taken[n..] {
                    db.documents().end_lease(*unpushed).await?;
                }
                return Err(err);
            }
            pushed += 1;
        }
    }
    Ok(pushed)
}

/// A worker's side of the feeder: counts the bulk documents it finishes and wakes its
/// feeder once they have freed a quarter of the window.
#[derive(Debug)]
pub struct Feeder {
    finished: AtomicI64,
    threshold: i64,
    wake: Notify,
}

impl Feeder {
    pub fn new(window: i64) -> Feeder {
        Feeder {
            finished: AtomicI64::new(0),
            threshold: (window / 4).max(1),
            wake: Notify::new(),
        }
    }

    /// A bulk document this worker took has left the window (finished, failed, or put
    /// back for a later attempt).
    pub fn left_window(&self) {
        if self.finished.fetch_add(1, Ordering::Relaxed) + 1 >= self.threshold {
            self.wake.notify_one();
        }
    }
}

/// Tops up the bulk window whenever `feeder` is woken and every `interval`, until `stop`.
pub async fn run(
    db: Db,
    queue: JobQueue,
    settings: crate::settings::QueueSettings,
    feeder: Arc<Feeder>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(settings.feeder_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = feeder.wake.notified() => {}
            _ = tick.tick() => {}
        }
        feeder.finished.store(0, Ordering::Relaxed);
        match top_up(&db, &queue, settings.bulk_window, settings.queued_lease).await {
            Ok(0) => {}
            Ok(n) => debug!(count = n, "bulk window topped up"),
            Err(err) => warn!(error = %format!("{err:#}"), "cannot top up the bulk window"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(n: u128, in_window: i64, waiting: i64) -> OwnerLoad {
        OwnerLoad {
            owner_id: Uuid::from_u128(n),
            in_window,
            waiting,
        }
    }

    fn shares(room: i64, loads: &[OwnerLoad]) -> Vec<(u128, i64)> {
        share(room, loads)
            .into_iter()
            .map(|(id, n)| (id.as_u128(), n))
            .collect()
    }

    #[test]
    fn owners_with_nothing_running_share_the_room_evenly() {
        let loads = [owner(1, 0, 50_000), owner(2, 0, 10)];
        // They alternate until the small batch has all it needs; the rest goes to the big one.
        assert_eq!(shares(64, &loads), [(1, 54), (2, 10)]);
    }

    #[test]
    fn an_owner_with_fewer_waiting_than_its_share_leaves_the_rest_to_others() {
        let loads = [owner(1, 0, 100), owner(2, 0, 3), owner(3, 0, 100)];
        assert_eq!(shares(30, &loads), [(1, 14), (2, 3), (3, 13)]);
    }

    #[test]
    fn the_room_goes_first_to_the_owners_with_least_in_the_window() {
        // Owner 1 already has 40 on the queue; owner 2 just arrived.
        let loads = [owner(1, 40, 1_000), owner(2, 0, 1_000)];
        assert_eq!(shares(24, &loads), [(2, 24)]);
        // Once level, they alternate.
        assert_eq!(shares(50, &loads), [(1, 5), (2, 45)]);
    }

    #[test]
    fn owners_without_waiting_work_get_nothing() {
        let loads = [owner(1, 10, 0), owner(2, 0, 0)];
        assert!(shares(64, &loads).is_empty());
        assert!(shares(0, &[owner(1, 0, 10)]).is_empty());
        assert!(shares(-3, &[owner(1, 0, 10)]).is_empty());
    }

    #[test]
    fn equal_owners_finish_level_over_successive_top_ups() {
        // Two owners with equal batches: whatever each top-up gives, the places each has
        // had never differ by more than one.
        let (mut a, mut b) = ((0i64, 500i64), (0i64, 500i64));
        for room in [7, 1, 1, 16, 3, 64, 5] {
            let loads = [owner(1, a.0, a.1), owner(2, b.0, b.1)];
            for (id, n) in share(room, &loads) {
                let slot = if id.as_u128() == 1 { &mut a } else { &mut b };
                slot.0 += n;
                slot.1 -= n;
            }
            assert!((a.0 - b.0).abs() <= 1, "{a:?} {b:?}");
        }
    }

    /// Two agents with six bulk documents each: top-ups of a window of 3, then of 7, share
    /// the places between them, push what they give, and give nothing past the window.
    async fn a_top_up_shares_the_window_between_owners(db: &Db) {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap().to_owned();
        let settings = crate::Settings::from_lookup(|key| match key {
            "DATA_DIR" => Some(data_dir.clone()),
            _ => None,
        })
        .unwrap();
        let queue = JobQueue::connect(&settings, None).await.unwrap();
        let mut owners = Vec::new();
        for email in ["a@example.com", "b@example.com"] {
            owners.push(crate::db::fixtures::agent(db, email).await.id);
        }
        owners.sort();
        for &owner_id in &owners {
            for _ in 0..6 {
                let new = crate::db::documents::NewDocument {
                    priority: crate::model::Priority::Bulk,
                    ..crate::db::fixtures::document(owner_id)
                };
                db.documents().create(new).await.unwrap();
            }
        }
        let lease = Duration::from_secs(600);
        let loads = |cap| async move {
            let loads = db.documents().bulk_waiting(cap).await.unwrap();
            loads
                .iter()
                .map(|l| (l.owner_id, l.in_window, l.waiting))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            loads(100).await,
            [(owners[0], 0, 6), (owners[1], 0, 6)],
            "bulk documents wait, none in the window"
        );
        assert_eq!(top_up(db, &queue, 3, lease).await.unwrap(), 3);
        assert_eq!(db.documents().bulk_in_window().await.unwrap(), 3);
        assert_eq!(loads(100).await, [(owners[0], 2, 4), (owners[1], 1, 5)]);
        assert_eq!(top_up(db, &queue, 7, lease).await.unwrap(), 4);
        assert_eq!(loads(100).await, [(owners[0], 4, 2), (owners[1], 3, 3)]);
        assert_eq!(
            loads(2).await,
            [(owners[0], 4, 2), (owners[1], 3, 2)],
            "waiting counted up to the cap"
        );
        assert_eq!(
            top_up(db, &queue, 7, lease).await.unwrap(),
            0,
            "the window is full"
        );
    }

    #[tokio::test]
    async fn a_top_up_shares_the_window_between_owners_on_sqlite() {
        a_top_up_shares_the_window_between_owners(&crate::db::fixtures::sqlite().await).await;
    }

    #[tokio::test]
    async fn a_top_up_shares_the_window_between_owners_on_postgres() {
        let Some(pg) = crate::db::fixtures::postgres().await else {
            return;
        };
        a_top_up_shares_the_window_between_owners(&pg.db).await;
        pg.drop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_feeder_wakes_once_a_quarter_of_the_window_has_left() {
        let feeder = Feeder::new(16);
        for _ in 0..3 {
            feeder.left_window();
        }
        let early = tokio::time::timeout(Duration::from_millis(20), feeder.wake.notified()).await;
        assert!(early.is_err(), "three of sixteen do not wake it");
        feeder.left_window();
        let woken = tokio::time::timeout(Duration::from_secs(5), feeder.wake.notified()).await;
        assert!(woken.is_ok(), "the fourth does");
    }
}
