//! Auditors' checks over the whole log: verify every chain, anchor the stream heads, export to
//! JSON Lines and verify an export with no database.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::error::EventStoreError;
use crate::hash::StreamCheck;
use crate::model::{Checkpoint, RecordedEvent, StreamHead, StreamId, StreamVerification};
use crate::store::{COLUMNS, EventStore, decode_event};
use crate::xid8::Xid8;

type Result<T, E = EventStoreError> = std::result::Result<T, E>;

const BATCH: i64 = 5_000;

/// The outcome of checking many streams.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    pub streams: u64,
    pub events: u64,
    /// Streams whose chain is broken, each with its first broken version.
    pub broken: Vec<StreamVerification>,
    /// Problems of the log as a whole (repeated positions or event ids).
    pub global: Vec<String>,
    /// Streams an excerpt started in the middle of (their first event is taken as given).
    pub excerpts: Vec<(StreamId, i64)>,
}

impl AuditReport {
    pub fn is_intact(&self) -> bool {
        self.broken.is_empty() && self.global.is_empty()
    }

    fn finish_stream(&mut self, check: StreamCheck) {
        self.streams += 1;
        if let Some(start) = check.trusted_start() {
            self.excerpts.push((check.stream().clone(), start));
        }
        let result = check.finish();
        self.events += result.events;
        if !result.is_valid() {
            self.broken.push(result);
        }
    }
}

/// Number of events in the log (for progress bars).
pub async fn count_events(store: &EventStore) -> Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Recompute every stream's chain and check the global sequence.
///
/// Walks the log in `(aggregate_type, aggregate_id, version)` order in batches; `progress` is
/// called with the number of events checked so far.
pub async fn verify_all(store: &EventStore, mut progress: impl FnMut(u64)) -> Result<AuditReport> {
    let mut report = AuditReport::default();
    for (what, column) in [
        ("global position", "global_position"),
        ("event id", "event_id"),
    ] {
        let sql = format!(
            "SELECT {column}::text FROM events GROUP BY {column} HAVING count(*) > 1 LIMIT 100"
        );
        for value in sqlx::query_scalar::<_, String>(&sql)
            .fetch_all(store.pool())
            .await?
        {
            report
                .global
                .push(format!("{what} {value} appears more than once"));
        }
    }
    walk_chains(store, None, &mut report, &mut progress).await?;
    Ok(report)
}

/// Recompute the chain of every stream, in `(aggregate_type, aggregate_id, version)` order,
/// over the events at or before `upto` (all when `None`), into `report`.
async fn walk_chains(
    store: &EventStore,
    upto: Option<Checkpoint>,
    report: &mut AuditReport,
    progress: &mut impl FnMut(u64),
) -> Result<()> {
    let bounded = upto.is_some();
    let upto = upto.unwrap_or_default();
    let sql = format!(
        "SELECT {COLUMNS} FROM events \
         WHERE (aggregate_type, aggregate_id, version) > ($1, $2, $3) \
           AND (NOT $5 OR (transaction_id, global_position) <= ($6, $7)) \
         ORDER BY aggregate_type, aggregate_id, version LIMIT $4"
    );
    let mut current: Option<StreamCheck> = None;
    let mut after = (String::new(), String::new(), 0i64);
    let mut seen = 0u64;
    loop {
        let rows = sqlx::query(&sql)
            .bind(&after.0)
            .bind(&after.1)
            .bind(after.2)
            .bind(BATCH)
            .bind(bounded)
            .bind(Xid8(upto.transaction_id))
            .bind(upto.global_position)
            .fetch_all(store.pool())
            .await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let event = decode_event(&row)?;
            let same = current.as_ref().is_some_and(|c| {
                c.stream().aggregate_type == event.aggregate_type
                    && c.stream().aggregate_id == event.aggregate_id
            });
            if !same {
                if let Some(done) = current.take() {
                    report.finish_stream(done);
                }
                current = Some(StreamCheck::new(event.stream()));
            }
            if let Some(check) = current.as_mut() {
                check.push(&event);
            }
            after = (event.aggregate_type, event.aggregate_id, event.version);
            seen += 1;
        }
        progress(seen);
    }
    if let Some(done) = current.take() {
        report.finish_stream(done);
    }
    Ok(())
}

/// A digest over every stream head at one point of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub checkpoint: Checkpoint,
    pub digest: [u8; 32],
    pub streams: u64,
    pub events: u64,
    pub created_at: Option<DateTime<Utc>>,
}

impl Anchor {
    /// The form an auditor keeps: `TRANSACTION:POSITION:HEXDIGEST`.
    pub fn token(&self) -> String {
        format!(
            "{}:{}:{}",
            self.checkpoint.transaction_id,
            self.checkpoint.global_position,
            hex::encode(self.digest)
        )
    }
}

/// How an auditor names an anchor on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnchorRef {
    /// The full token: trusts nothing stored in the database.
    Token {
        checkpoint: Checkpoint,
        digest: [u8; 32],
    },
    /// A digest only: its position is looked up in the anchors table.
    Digest([u8; 32]),
    /// A global position: the anchor taken there is looked up (digest included).
    Position(i64),
}

impl std::str::FromStr for AnchorRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let digest = |h: &str| -> Result<[u8; 32], String> {
            hex::decode(h)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("{h:?} is not a 64-digit hex digest"))
        };
        let parts: Vec<&str> = s.trim().split(':').collect();
        match parts.as_slice() {
            [txid, pos, d] => Ok(Self::Token {
                checkpoint: Checkpoint {
                    transaction_id: txid
                        .parse()
                        .map_err(|_| format!("bad transaction id {txid:?}"))?,
                    global_position: pos.parse().map_err(|_| format!("bad position {pos:?}"))?,
                },
                digest: digest(d)?,
            }),
            [one] if one.len() == 64 => Ok(Self::Digest(digest(one)?)),
            [one] => one
                .parse()
                .map(Self::Position)
                .map_err(|_| format!("{one:?} is neither a digest, a position nor a token")),
            _ => Err(format!("cannot read anchor {s:?}")),
        }
    }
}

/// Every stream's last event at or before `at` in commit order.
pub async fn heads_at(store: &EventStore, at: Checkpoint) -> Result<Vec<(StreamId, StreamHead)>> {
    let rows = sqlx::query(
        "SELECT DISTINCT ON (aggregate_type, aggregate_id) aggregate_type, aggregate_id, version, hash \
         FROM events WHERE (transaction_id, global_position) <= ($1, $2) \
         ORDER BY aggregate_type, aggregate_id, version DESC",
    )
    .bind(Xid8(at.transaction_id))
    .bind(at.global_position)
    .fetch_all(store.pool())
    .await?;
    let mut heads = Vec::with_capacity(rows.len());
    for row in rows {
        let stream = StreamId::new(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
        let hash: Vec<u8> = row.try_get(3)?;
        let head = StreamHead {
            version: row.try_get(2)?,
            hash: hash.try_into().unwrap_or([0; 32]),
        };
        heads.push((stream, head));
    }
    // Byte order, not the database collation, so the digest is the same everywhere.
    heads.sort_by(|a, b| {
        (a.0.aggregate_type.as_bytes(), a.0.aggregate_id.as_bytes())
            .cmp(&(b.0.aggregate_type.as_bytes(), b.0.aggregate_id.as_bytes()))
    });
    Ok(heads)
}

/// `sha256("fleetledger-anchor-v1\n" ‖ "TX:POS\n" ‖ one "type\tid\tversion\thash\n" per stream)`.
pub fn anchor_digest(at: Checkpoint, heads: &[(StreamId, StreamHead)]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"fleetledger-anchor-v1\n");
    hasher.update(format!("{}:{}\n", at.transaction_id, at.global_position));
    for (stream, head) in heads {
        hasher.update(stream.aggregate_type.as_bytes());
        hasher.update(b"\t");
        hasher.update(stream.aggregate_id.as_bytes());
        hasher.update(format!("\t{}\t{}\n", head.version, hex::encode(head.hash)));
    }
    hasher.finalize().into()
}

/// Take an anchor covering every event committed when it is called, store it with its heads.
///
/// The anchor's point must be one that nothing can later commit before, so this waits (up to
/// `settle`) for transactions still open to finish; a longer one is an error naming the wait.
pub async fn take_anchor(store: &EventStore, settle: std::time::Duration) -> Result<Anchor> {
    let committed = store.committed_head().await?;
    let Some(at) = store.wait_visible(committed, settle).await? else {
        return Err(EventStoreError::Timeout(format!(
            "an open transaction kept the log from settling at {committed} for {settle:?}; try again"
        )));
    };
    let heads = heads_at(store, at).await?;
    let digest = anchor_digest(at, &heads);
    let events: i64 = heads.iter().map(|(_, h)| h.version).sum();
    let mut tx = store.pool().begin().await?;
    let row = sqlx::query(
        "INSERT INTO anchors (transaction_id, global_position, digest, streams, events) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (digest) DO NOTHING \
         RETURNING id, created_at",
    )
    .bind(Xid8(at.transaction_id))
    .bind(at.global_position)
    .bind(digest.as_slice())
    .bind(i64::try_from(heads.len()).unwrap_or(i64::MAX))
    .bind(events)
    .fetch_optional(&mut *tx)
    .await?;
    // The same digest again (nothing appended since): report the stored anchor.
    let Some(row) = row else {
        tx.rollback().await?;
        return find_anchor(store, &AnchorRef::Digest(digest)).await;
    };
    let id: i64 = row.try_get("id")?;
    let created_at: DateTime<Utc> = row.try_get("created_at")?;
    let types: Vec<&str> = heads
        .iter()
        .map(|(s, _)| s.aggregate_type.as_str())
        .collect();
    let ids: Vec<&str> = heads.iter().map(|(s, _)| s.aggregate_id.as_str()).collect();
    let versions: Vec<i64> = heads.iter().map(|(_, h)| h.version).collect();
    let hashes: Vec<Vec<u8>> = heads.iter().map(|(_, h)| h.hash.to_vec()).collect();
    sqlx::query(
        "INSERT INTO anchor_heads (anchor_id, aggregate_type, aggregate_id, version, hash) \
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bytea[])",
    )
    .bind(id)
    .bind(&types)
    .bind(&ids)
    .bind(&versions)
    .bind(&hashes)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Anchor {
        checkpoint: at,
        digest,
        streams: heads.len() as u64,
        events: u64::try_from(events).unwrap_or(0),
        created_at: Some(created_at),
    })
}

/// Look an anchor up in the anchors table.
pub async fn find_anchor(store: &EventStore, anchor: &AnchorRef) -> Result<Anchor> {
    let (filter, bind_digest, bind_position) = match anchor {
        AnchorRef::Token { digest, .. } | AnchorRef::Digest(digest) => {
            ("digest = $1", Some(digest.to_vec()), None)
        }
        AnchorRef::Position(p) => ("global_position = $2", None, Some(*p)),
    };
    let sql = format!(
        "SELECT transaction_id, global_position, digest, streams, events, created_at \
         FROM anchors WHERE {filter} ORDER BY id DESC LIMIT 1"
    );
    let row = sqlx::query(&sql)
        .bind(bind_digest)
        .bind(bind_position)
        .fetch_optional(store.pool())
        .await?
        .ok_or_else(|| EventStoreError::NotFound(format!("no stored anchor matches {anchor:?}")))?;
    let digest: Vec<u8> = row.try_get(2)?;
    Ok(Anchor {
        checkpoint: Checkpoint {
            transaction_id: row.try_get::<Xid8, _>(0)?.0,
            global_position: row.try_get(1)?,
        },
        digest: digest
            .try_into()
            .map_err(|_| EventStoreError::Corrupt("anchor digest is not 32 bytes".into()))?,
        streams: u64::try_from(row.try_get::<i64, _>(3)?).unwrap_or(0),
        events: u64::try_from(row.try_get::<i64, _>(4)?).unwrap_or(0),
        created_at: Some(row.try_get(5)?),
    })
}

/// The result of checking the log against an anchor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorCheck {
    pub expected: [u8; 32],
    pub recomputed: [u8; 32],
    /// Streams whose head at the anchor differs from the stored anchor heads (when the anchors
    /// table still agrees with the expected digest, so its heads can be trusted).
    pub changed_streams: Vec<String>,
    /// Streams whose chain, recomputed from the first event up to the anchor, does not hold:
    /// the stored head hashes the digest is made of are then not what the events hash to.
    pub broken_chains: Vec<StreamVerification>,
}

impl AnchorCheck {
    /// The digest matches and every chain it covers recomputes from its events.
    pub fn matches(&self) -> bool {
        self.expected == self.recomputed && self.broken_chains.is_empty()
    }
}

/// Recompute the heads digest at the anchor's point and compare it with the expected digest.
///
/// `progress` is called with the number of events whose chain has been recomputed so far.
pub async fn check_anchor(
    store: &EventStore,
    anchor: &AnchorRef,
    mut progress: impl FnMut(u64),
) -> Result<AnchorCheck> {
    let (at, expected) = match anchor {
        AnchorRef::Token { checkpoint, digest } => (*checkpoint, *digest),
        other => {
            let found = find_anchor(store, other).await?;
            (found.checkpoint, found.digest)
        }
    };
    let heads = heads_at(store, at).await?;
    let recomputed = anchor_digest(at, &heads);
    let mut changed_streams = Vec::new();
    if recomputed != expected {
        changed_streams = changed_since_anchor(store, expected, &heads).await?;
    }
    // The digest is over stored head hashes; recompute every chain up to the anchor so that an
    // event altered together with its stored hash, or a hash that no longer recomputes, fails
    // this check exactly as it fails `verify`.
    let mut chains = AuditReport::default();
    walk_chains(store, Some(at), &mut chains, &mut progress).await?;
    Ok(AnchorCheck {
        expected,
        recomputed,
        changed_streams,
        broken_chains: chains.broken,
    })
}

async fn changed_since_anchor(
    store: &EventStore,
    digest: [u8; 32],
    now: &[(StreamId, StreamHead)],
) -> Result<Vec<String>> {
    let Some(stored) = stored_heads(store, digest).await? else {
        return Ok(Vec::new());
    };
    let now: HashMap<&StreamId, &StreamHead> = now.iter().map(|(s, h)| (s, h)).collect();
    let then: HashMap<&StreamId, &StreamHead> = stored.iter().map(|(s, h)| (s, h)).collect();
    let mut changed = Vec::new();
    for (stream, head) in &then {
        match now.get(stream) {
            None => changed.push(format!("{stream}: gone (was at version {})", head.version)),
            Some(h) if h != head => changed.push(format!(
                "{stream}: head was version {} {}, is version {} {}",
                head.version,
                hex::encode(&head.hash[..8]),
                h.version,
                hex::encode(&h.hash[..8])
            )),
            Some(_) => {}
        }
    }
    for (stream, head) in &now {
        if !then.contains_key(stream) {
            changed.push(format!(
                "{stream}: not in the anchor (now at version {})",
                head.version
            ));
        }
    }
    changed.sort();
    Ok(changed)
}

/// The heads stored with an anchor, if the stored anchor still hashes to `digest`.
async fn stored_heads(
    store: &EventStore,
    digest: [u8; 32],
) -> Result<Option<Vec<(StreamId, StreamHead)>>> {
    let Ok(anchor) = find_anchor(store, &AnchorRef::Digest(digest)).await else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT h.aggregate_type, h.aggregate_id, h.version, h.hash FROM anchor_heads h \
         JOIN anchors a ON a.id = h.anchor_id WHERE a.digest = $1",
    )
    .bind(digest.as_slice())
    .fetch_all(store.pool())
    .await?;
    let mut heads = Vec::with_capacity(rows.len());
    for row in rows {
        let hash: Vec<u8> = row.try_get(3)?;
        heads.push((
            StreamId::new(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?),
            StreamHead {
                version: row.try_get(2)?,
                hash: hash.try_into().unwrap_or([0; 32]),
            },
        ));
    }
    heads.sort_by(|a, b| {
        (a.0.aggregate_type.as_bytes(), a.0.aggregate_id.as_bytes())
            .cmp(&(b.0.aggregate_type.as_bytes(), b.0.aggregate_id.as_bytes()))
    });
    // Only trust the stored heads if they are the ones the digest covers.
    Ok((anchor_digest(anchor.checkpoint, &heads) == digest).then_some(heads))
}

/// Which events an export covers.
#[derive(Clone, Debug, Default)]
pub struct ExportFilter {
    pub from_position: Option<i64>,
    pub to_position: Option<i64>,
    pub stream: Option<StreamId>,
}

/// Write every matching event, every stored field, one JSON object per line, in commit order.
///
/// Reads in one repeatable-read snapshot, so the file is the log exactly as committed at the
/// start (a transaction still open then is not in it). Returns the number of events written.
pub async fn export(
    store: &EventStore,
    filter: &ExportFilter,
    out: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> Result<u64> {
    let mut after = Checkpoint::START;
    let mut written = 0u64;
    let sql = format!(
        "SELECT {COLUMNS} FROM events \
         WHERE (transaction_id, global_position) > ($1, $2) \
           AND global_position >= $3 AND global_position <= $4 \
           AND ($5::text IS NULL OR (aggregate_type = $5 AND aggregate_id = $6)) \
         ORDER BY transaction_id, global_position LIMIT $7"
    );
    let mut tx = store.pool().begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    loop {
        let rows = sqlx::query(&sql)
            .bind(Xid8(after.transaction_id))
            .bind(after.global_position)
            .bind(filter.from_position.unwrap_or(0))
            .bind(filter.to_position.unwrap_or(i64::MAX))
            .bind(filter.stream.as_ref().map(|s| s.aggregate_type.as_str()))
            .bind(filter.stream.as_ref().map(|s| s.aggregate_id.as_str()))
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let event = decode_event(&row)?;
            after = event.checkpoint();
            serde_json::to_writer(&mut *out, &event)
                .map_err(|e| EventStoreError::Corrupt(format!("cannot write the export: {e}")))?;
            out.write_all(b"\n")
                .map_err(|e| EventStoreError::Corrupt(format!("cannot write the export: {e}")))?;
            written += 1;
        }
        progress(written);
    }
    tx.commit().await?;
    out.flush()
        .map_err(|e| EventStoreError::Corrupt(format!("cannot write the export: {e}")))?;
    Ok(written)
}

/// Check an export with no database: every stream's chain in file order, unique positions and
/// event ids. A stream that does not start at version 1 in the file is checked from its first
/// event on (reported in `excerpts`).
pub fn verify_export(input: impl BufRead) -> Result<AuditReport, String> {
    let mut report = AuditReport::default();
    let mut checks: HashMap<StreamId, StreamCheck> = HashMap::new();
    let mut order: Vec<StreamId> = Vec::new();
    let mut positions = HashSet::new();
    let mut ids: HashSet<Uuid> = HashSet::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: RecordedEvent = serde_json::from_str(&line)
            .map_err(|e| format!("line {}: not an exported event: {e}", n + 1))?;
        if !positions.insert(event.global_position) {
            report.global.push(format!(
                "line {}: position {} appears twice",
                n + 1,
                event.global_position
            ));
        }
        if !ids.insert(event.event_id) {
            report.global.push(format!(
                "line {}: event id {} appears twice",
                n + 1,
                event.event_id
            ));
        }
        let stream = event.stream();
        match checks.get_mut(&stream) {
            Some(check) => check.push(&event),
            None => {
                let check = if event.version == 1 {
                    let mut check = StreamCheck::new(stream.clone());
                    check.push(&event);
                    check
                } else {
                    StreamCheck::from_excerpt(&event)
                };
                order.push(stream.clone());
                checks.insert(stream, check);
            }
        }
    }
    for stream in order {
        if let Some(check) = checks.remove(&stream) {
            report.finish_stream(check);
        }
    }
    Ok(report)
}
