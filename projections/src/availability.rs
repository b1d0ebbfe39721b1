//! The availability read model: each car's reserved and maintenance windows as `tstzrange`.
//!
//! Mirrors the Car aggregate's blocks: a reservation appears with `CarReserved`, moves with
//! `ReservationChanged`, disappears with `ReservationReleased`, and is cut at the actual return
//! instant when the car comes back early; maintenance is cut when it completes early. Each
//! block keeps its turnaround (minutes the car stays out after it, from its event): readers
//! treat a block as holding the car until `upper(period) + turnaround_minutes`. Windows
//! that ended stay (staff see past reservations), which never conflicts with new ones since the
//! aggregate only reserves ahead.
//!
//! A batch loads the blocks it touches, folds the events in memory, then deletes the blocks
//! that went away and upserts the rest (the no-overlap constraint is checked at commit).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use domain::car::CarEvent;
use eventstore::RecordedEvent;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{ApplyError, Projection};
use crate::{aggregate_uuid, decode};

pub struct Availability;

/// A window in which a car is not free.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Block {
    pub(crate) kind: &'static str,
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
    pub(crate) reason: Option<String>,
    /// Minutes the car stays out after `end` (from the event; 60 in older events).
    pub(crate) turnaround_minutes: i32,
}

impl Block {
    /// Until when it holds the car: its end plus its turnaround.
    pub(crate) fn held_until(&self) -> DateTime<Utc> {
        self.end + chrono::Duration::minutes(i64::from(self.turnaround_minutes))
    }
}

/// (car, block): a block is a booking's reservation or a maintenance.
pub(crate) type Key = (Uuid, Uuid);

#[async_trait::async_trait]
impl Projection for Availability {
    fn name(&self) -> &'static str {
        "availability"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_availability_blocks"]
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        event.aggregate_type == "car"
            && matches!(
                event.event_type.as_str(),
                "MaintenanceScheduled"
                    | "MaintenanceCompleted"
                    | "CarReserved"
                    | "ReservationChanged"
                    | "ReservationReleased"
                    | "CarReturned"
            )
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError> {
        let mut decoded = Vec::with_capacity(events.len());
        for event in events {
            decoded.push((aggregate_uuid(event)?, decode::<CarEvent>(event)?));
        }
        let keys: Vec<Key> = decoded
            .iter()
            .flat_map(|(car, e)| blocks_of(e).into_iter().map(|b| (*car, b)))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let (cars, blocks): (Vec<Uuid>, Vec<Uuid>) = keys.iter().copied().unzip();
        let rows: Vec<(
            Uuid,
            Uuid,
            String,
            DateTime<Utc>,
            DateTime<Utc>,
            Option<String>,
            i32,
        )> = sqlx::query_as(
            "SELECT b.car_id, b.block_id, b.kind, lower(b.period), upper(b.period), b.reason, \
                    b.turnaround_minutes \
                 FROM rm_availability_blocks b \
                 JOIN unnest($1::uuid[], $2::uuid[]) AS k(car_id, block_id) \
                   ON b.car_id = k.car_id AND b.block_id = k.block_id",
        )
        .bind(&cars)
        .bind(&blocks)
        .fetch_all(&mut *conn)
        .await?;
        let stored: HashSet<Key> = rows.iter().map(|r| (r.0, r.1)).collect();
        let mut current: HashMap<Key, Block> = rows
            .into_iter()
            .map(
                |(car, block, kind, start, end, reason, turnaround_minutes)| {
                    let kind = if kind == "MAINTENANCE" {
                        "MAINTENANCE"
                    } else {
                        "RESERVATION"
                    };
                    (
                        (car, block),
                        Block {
                            kind,
                            start,
                            end,
                            reason,
                            turnaround_minutes,
                        },
                    )
                },
            )
            .collect();
        let mut dirty = HashSet::new();
        for (car, event) in decoded {
            fold(&mut current, &mut dirty, car, event)?;
        }
        let gone: Vec<Key> = dirty
            .iter()
            .filter(|k| stored.contains(k) && !current.contains_key(k))
            .copied()
            .collect();
        if !gone.is_empty() {
            let (cars, blocks): (Vec<Uuid>, Vec<Uuid>) = gone.into_iter().unzip();
            sqlx::query(
                "DELETE FROM rm_availability_blocks b USING unnest($1::uuid[], $2::uuid[]) \
                   AS k(car_id, block_id) \
                 WHERE b.car_id = k.car_id AND b.block_id = k.block_id",
            )
            .bind(cars)
            .bind(blocks)
            .execute(&mut *conn)
            .await?;
        }
        let upserts: Vec<(Key, &Block)> = dirty
            .iter()
            .filter_map(|k| current.get(k).map(|b| (*k, b)))
            .collect();
        if upserts.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_availability_blocks \
               (car_id, block_id, kind, period, reason, turnaround_minutes) \
             SELECT car_id, block_id, kind, tstzrange(s, e, '[)'), reason, t \
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], \
               $5::timestamptz[], $6::text[], $7::int4[]) AS u(car_id, block_id, kind, s, e, reason, t) \
             ON CONFLICT (car_id, block_id) DO UPDATE \
               SET period = EXCLUDED.period, turnaround_minutes = EXCLUDED.turnaround_minutes",
        )
        .bind(upserts.iter().map(|(k, _)| k.0).collect::<Vec<_>>())
        .bind(upserts.iter().map(|(k, _)| k.1).collect::<Vec<_>>())
        .bind(upserts.iter().map(|(_, b)| b.kind).collect::<Vec<_>>())
        .bind(upserts.iter().map(|(_, b)| b.start).collect::<Vec<_>>())
        .bind(upserts.iter().map(|(_, b)| b.end).collect::<Vec<_>>())
        .bind(
            upserts
                .iter()
                .map(|(_, b)| b.reason.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            upserts
                .iter()
                .map(|(_, b)| b.turnaround_minutes)
                .collect::<Vec<_>>(),
        )
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Fold one event of `car` into its blocks, marking the blocks it touched in `dirty`: what the
/// Car aggregate decided, as windows. The search model folds the same way into each car's row.
pub(crate) fn fold(
    current: &mut HashMap<Key, Block>,
    dirty: &mut HashSet<Key>,
    car: Uuid,
    event: CarEvent,
) -> Result<(), ApplyError> {
    match event {
        CarEvent::MaintenanceScheduled {
            maintenance_id,
            window,
            reason,
            displaced,
            turnaround_minutes,
            ..
        } => {
            // An urgent maintenance drops the reservations it displaced.
            for booking_id in displaced {
                current.remove(&(car, booking_id));
                dirty.insert((car, booking_id));
            }
            let block = Block {
                kind: "MAINTENANCE",
                start: window.start,
                end: window.end,
                reason: Some(reason),
                turnaround_minutes: minutes(turnaround_minutes),
            };
            insert(current, (car, maintenance_id), block)?;
            dirty.insert((car, maintenance_id));
        }
        CarEvent::CarReserved {
            booking_id,
            window,
            turnaround_minutes,
            ..
        } => {
            let block = Block {
                kind: "RESERVATION",
                start: window.start,
                end: window.end,
                reason: None,
                turnaround_minutes: minutes(turnaround_minutes),
            };
            insert(current, (car, booking_id), block)?;
            dirty.insert((car, booking_id));
        }
        CarEvent::ReservationChanged {
            booking_id,
            to,
            turnaround_minutes,
            ..
        } => {
            // A reservation the reader no longer keeps (the search model forgets windows
            // long past) comes back when it moves: an overdue rental extended.
            let block = current.entry((car, booking_id)).or_insert_with(|| Block {
                kind: "RESERVATION",
                start: to.start,
                end: to.end,
                reason: None,
                turnaround_minutes: 0,
            });
            block.start = to.start;
            block.end = to.end;
            block.turnaround_minutes = minutes(turnaround_minutes);
            dirty.insert((car, booking_id));
        }
        CarEvent::ReservationReleased { booking_id, .. } => {
            current.remove(&(car, booking_id));
            dirty.insert((car, booking_id));
        }
        CarEvent::MaintenanceCompleted {
            maintenance_id: id,
            at,
        }
        | CarEvent::CarReturned {
            booking_id: id, at, ..
        } => {
            cut(current, (car, id), at);
            dirty.insert((car, id));
        }
        _ => {}
    }
    Ok(())
}

/// Whether an event moves a car's blocks.
pub(crate) fn moves_blocks(event: &CarEvent) -> bool {
    !blocks_of(event).is_empty()
}

/// The blocks an event is about.
fn blocks_of(event: &CarEvent) -> Vec<Uuid> {
    match event {
        CarEvent::MaintenanceScheduled {
            maintenance_id,
            displaced,
            ..
        } => std::iter::once(*maintenance_id)
            .chain(displaced.iter().copied())
            .collect(),
        CarEvent::MaintenanceCompleted { maintenance_id, .. } => vec![*maintenance_id],
        CarEvent::CarReserved { booking_id, .. }
        | CarEvent::ReservationChanged { booking_id, .. }
        | CarEvent::ReservationReleased { booking_id, .. }
        | CarEvent::CarReturned { booking_id, .. } => vec![*booking_id],
        _ => Vec::new(),
    }
}

fn insert(current: &mut HashMap<Key, Block>, key: Key, block: Block) -> Result<(), ApplyError> {
    if current.contains_key(&key) {
        return Err(ApplyError::Invalid(format!(
            "block {} of car {} exists already",
            key.1, key.0
        )));
    }
    current.insert(key, block);
    Ok(())
}

/// An event's turnaround, as the column keeps it (the aggregate bounds it to a day).
fn minutes(turnaround: i64) -> i32 {
    turnaround.clamp(0, domain::car::MAX_TURNAROUND_MINUTES) as i32
}

/// End a block at `at` if it would end later; drop it if it had not started by then.
fn cut(current: &mut HashMap<Key, Block>, key: Key, at: DateTime<Utc>) {
    let Some(block) = current.get_mut(&key) else {
        return;
    };
    if block.start >= at {
        current.remove(&key);
    } else if block.end > at {
        block.end = at;
    }
}

/// A car's reserved windows that meet `[from, to)`, earliest first (for staff).
pub async fn reservations(
    pool: &PgPool,
    car: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT lower(period), upper(period) FROM rm_availability_blocks \
         WHERE car_id = $1 AND kind = 'RESERVATION' AND period && tstzrange($2, $3) \
         ORDER BY lower(period)",
    )
    .bind(car)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// The windows inside `[from, to)` in which `car` can be booked as it is, for a rental whose
/// own turnaround (its return branch's) is `own`: a window ends where that turnaround would
/// reach the next block, and starts when the block before and its own turnaround are over.
/// The same rule as `Block::clashes`, which booking applies.
pub async fn free_ranges(
    pool: &PgPool,
    car: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    own: chrono::Duration,
) -> Result<Vec<(DateTime<Utc>, DateTime<Utc>)>, sqlx::Error> {
    // Blocks that end up to the longest turnaround before `from` may still hold the car.
    let blocks: Vec<(DateTime<Utc>, DateTime<Utc>, i32)> = sqlx::query_as(
        "SELECT lower(period), upper(period), turnaround_minutes FROM rm_availability_blocks \
         WHERE car_id = $1 AND period && tstzrange($2, $3) ORDER BY lower(period)",
    )
    .bind(car)
    .bind(from - chrono::Duration::minutes(domain::car::MAX_TURNAROUND_MINUTES))
    .bind(to + own)
    .fetch_all(pool)
    .await?;
    let mut free = Vec::new();
    let mut cursor = from;
    for (start, end) in blocks.into_iter().map(|(start, end, turnaround)| {
        (
            start - own,
            end + chrono::Duration::minutes(turnaround.into()),
        )
    }) {
        if start > cursor {
            free.push((cursor, start.min(to)));
        }
        cursor = cursor.max(end);
    }
    if cursor < to {
        free.push((cursor, to));
    }
    free.retain(|(start, end)| end > start);
    Ok(free)
}
