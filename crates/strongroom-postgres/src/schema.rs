//! strongroom's tables and statements, and the schema's creation and upgrades.
//!
//! ```sql
//! CREATE TABLE <schema>.schema_version (version integer NOT NULL, at timestamptz NOT NULL);
//! CREATE TABLE <schema>.entries (
//!     tree smallint NOT NULL,   -- 0..7: meta, roots, keyrings, keks, deks, records, audit, jobs
//!     k    bytea    NOT NULL,
//!     v    bytea    NOT NULL,
//!     PRIMARY KEY (tree, k)
//! );
//! ```
//! bytea compares byte by byte, unsigned, as sled orders its keys: scans come back in the same
//! order on both engines. Every value is bound as a parameter: no key or value is ever part of
//! a statement's text (nor of the server's log of it).

use strongroom_store::{EngineError, EngineErrorKind};
use tokio_postgres::{Client, Statement};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 1;

/// The statements' texts for one schema.
#[derive(Clone)]
pub(crate) struct Sql {
    schema: String,
    pub(crate) schema_version: String,
    pub(crate) size: String,
}

impl Sql {
    /// Statements for `schema`: a name of lower-case letters, digits and `_` (checked by
    /// `config::check_schema`), always written quoted, so that a reserved word (`user`,
    /// `select`) is a name like any other.
    pub(crate) fn new(schema: &str) -> Self {
        let q = format!("\"{schema}\"");
        Self {
            schema_version: format!("SELECT max(version) FROM {q}.schema_version"),
            size: format!("SELECT pg_total_relation_size('{q}.entries'::regclass)"),
            schema: q,
        }
    }

    fn t(&self) -> String {
        format!("{}.entries", self.schema)
    }

    /// `VACUUM (FULL)` of the table, and the lock timeout to set around it (three statements:
    /// VACUUM cannot run inside the transaction a multi-statement string becomes).
    pub(crate) fn vacuum_full(&self, lock_wait: std::time::Duration) -> [String; 3] {
        [
            format!("SET lock_timeout = {}", lock_wait.as_millis().max(1)),
            format!("VACUUM (FULL, ANALYZE) {}", self.t()),
            "SET lock_timeout = 0".to_owned(),
        ]
    }
}

/// One connection's prepared statements.
pub(crate) struct Statements {
    pub(crate) get: Statement,
    pub(crate) put: Statement,
    pub(crate) del: Statement,
    pub(crate) batch: Statement,
    pub(crate) batch_guarded: Statement,
    pub(crate) count: Statement,
    pub(crate) scan_ge: Statement,
    pub(crate) scan_gt: Statement,
    pub(crate) scan_ge_lt: Statement,
    pub(crate) scan_gt_lt: Statement,
}

impl Statements {
    pub(crate) async fn prepare(c: &Client, sql: &Sql) -> Result<Self, tokio_postgres::Error> {
        let t = sql.t();
        // Durable commits whatever the server's default: a commit returns once it is on disk.
        c.batch_execute("SET synchronous_commit = on").await?;
        Ok(Self {
            get: c
                .prepare(&format!("SELECT v FROM {t} WHERE tree = $1 AND k = $2"))
                .await?,
            put: c
                .prepare(&format!(
                    "INSERT INTO {t} (tree, k, v) VALUES ($1, $2, $3) \
                     ON CONFLICT (tree, k) DO UPDATE SET v = excluded.v"
                ))
                .await?,
            del: c
                .prepare(&format!("DELETE FROM {t} WHERE tree = $1 AND k = $2"))
                .await?,
            // One statement: atomic by itself. The keys deleted and the keys written are
            // disjoint (the engine keeps the last change of each key).
            batch: c
                .prepare(&format!(
                    "WITH gone AS (DELETE FROM {t} WHERE tree = $1 AND k = ANY($4::bytea[])) \
                     INSERT INTO {t} (tree, k, v) \
                     SELECT $1, u.k, u.v FROM unnest($2::bytea[], $3::bytea[]) AS u(k, v) \
                     ON CONFLICT (tree, k) DO UPDATE SET v = excluded.v"
                ))
                .await?,
            // The same, only if the guard's key ($5, $6) holds $7 (NULL: is absent); returns
            // whether it did. The guard's row is locked FOR SHARE until the statement commits,
            // so a transaction that changes it (a key change moving the generation on) waits
            // for every guarded write that read the old value: once that change has committed,
            // no write guarded by the old value can land (as the single-process store's
            // lifecycle lock makes a disable wait for the writes in flight).
            batch_guarded: c
                .prepare(&format!(
                    "WITH ok AS (SELECT CASE WHEN $7::bytea IS NULL                         THEN NOT EXISTS (SELECT 1 FROM {t} WHERE tree = $5 AND k = $6)                         ELSE EXISTS (SELECT 1 FROM {t} WHERE tree = $5 AND k = $6 AND v = $7                             FOR SHARE) END AS ok),                      gone AS (DELETE FROM {t} WHERE tree = $1 AND k = ANY($4::bytea[])                         AND (SELECT ok FROM ok)),                      ins AS (INSERT INTO {t} (tree, k, v)                         SELECT $1, u.k, u.v FROM unnest($2::bytea[], $3::bytea[]) AS u(k, v)                         WHERE (SELECT ok FROM ok)                         ON CONFLICT (tree, k) DO UPDATE SET v = excluded.v)                      SELECT ok FROM ok"
                ))
                .await?,
            count: c
                .prepare(&format!("SELECT count(*) FROM {t} WHERE tree = $1"))
                .await?,
            scan_ge: c
                .prepare(&format!(
                    "SELECT k, v FROM {t} WHERE tree = $1 AND k >= $2 ORDER BY k LIMIT $3"
                ))
                .await?,
            scan_gt: c
                .prepare(&format!(
                    "SELECT k, v FROM {t} WHERE tree = $1 AND k > $2 ORDER BY k LIMIT $3"
                ))
                .await?,
            scan_ge_lt: c
                .prepare(&format!(
                    "SELECT k, v FROM {t} WHERE tree = $1 AND k >= $2 AND k < $3 ORDER BY k LIMIT $4"
                ))
                .await?,
            scan_gt_lt: c
                .prepare(&format!(
                    "SELECT k, v FROM {t} WHERE tree = $1 AND k > $2 AND k < $3 ORDER BY k LIMIT $4"
                ))
                .await?,
        })
    }
}

/// Creates the schema if it is missing, upgrades it if it is older, refuses it if it is newer;
/// under an advisory lock held for the duration, so that processes starting together do not
/// race.
pub(crate) async fn ensure(
    c: &Client,
    sql: &Sql,
) -> Result<Result<(), EngineError>, tokio_postgres::Error> {
    let s = &sql.schema;
    let name = s.trim_matches('"').to_owned();
    let t = sql.t();
    // Two keys: strongroom's, and the schema's name.
    c.execute(
        "SELECT pg_advisory_lock(hashtext('strongroom'), hashtext($1))",
        &[&name],
    )
    .await?;
    let r = async {
        c.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_version (
                 version integer NOT NULL,
                 at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await?;
        let found: Option<i32> = c
            .query_one(sql.schema_version.as_str(), &[])
            .await?
            .try_get(0)?;
        match found {
            None => {
                c.batch_execute(&format!(
                    "BEGIN;
                     CREATE TABLE {t} (
                         tree smallint NOT NULL,
                         k bytea NOT NULL,
                         v bytea NOT NULL,
                         PRIMARY KEY (tree, k)
                     );
                     INSERT INTO {s}.schema_version (version) VALUES ({SCHEMA_VERSION});
                     COMMIT;"
                ))
                .await?;
                Ok(Ok(()))
            }
            Some(v) if v == SCHEMA_VERSION => Ok(Ok(())),
            Some(v) if v > SCHEMA_VERSION => Ok(Err(EngineError::new(
                EngineErrorKind::Refused,
                format!(
                    "the database's strongroom schema {s} is at version {v}, newer than this build's {SCHEMA_VERSION}"
                ),
            )
            .with_hint("; upgrade strongroom on this machine (nothing was changed)"))),
            // Older versions: none exist yet; the upgrades will go here, each in its own
            // transaction that also records the new version.
            Some(v) => Ok(Err(EngineError::new(
                EngineErrorKind::Refused,
                format!("the database's strongroom schema {s} is at an unknown version {v}"),
            ))),
        }
    }
    .await;
    let unlocked = c
        .execute(
            "SELECT pg_advisory_unlock(hashtext('strongroom'), hashtext($1))",
            &[&name],
        )
        .await;
    let r = r?;
    unlocked?;
    Ok(r)
}
