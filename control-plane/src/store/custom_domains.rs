//! Custom domains' rows and the HTTP-01 challenges answered for them. The data planes'
//! share of them (each issued certificate with its key, each pending challenge) goes into
//! the control plane's data plane document ([`tls_entities`]); the API shows the rest.

use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde_json::{json, Value};

use super::StoreError;

/// `initializing`: its certificate is being issued; `ready`: issued and pushed; `error`:
/// not issued (`reason` says why), or its certificate expired while renewal kept failing.
pub const INITIALIZING: &str = "initializing";
pub const READY: &str = "ready";
pub const ERROR: &str = "error";

/// One custom domain as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRow {
    pub id: String,
    pub control_plane_id: String,
    pub control_plane_geo: String,
    pub domain: String,
    /// The certificate's id in the data plane document (Envoy's secret name follows it):
    /// chosen at creation and kept across renewals.
    pub certificate_id: String,
    pub sni_id: String,
    pub state: String,
    pub reported_status: Option<String>,
    pub reason: Option<String>,
    /// PEM chain and PKCS#8 key, once issued.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    /// When the renewal loop takes it next: two thirds into the lifetime, or the next retry.
    pub renew_at: Option<i64>,
    /// Failed renewals in a row (the retry's backoff).
    pub renew_failures: i64,
    /// Who issued the certificate: `acme` or `control-plane-ca`.
    pub authority: Option<String>,
    pub acme_directory: Option<String>,
    pub entity_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl DomainRow {
    /// A domain just posted: `initializing`, no certificate yet. `ids` are the domain's, its
    /// certificate's and its SNI's.
    pub fn initializing(
        (id, certificate_id, sni_id): (String, String, String),
        control_plane_id: &str,
        control_plane_geo: &str,
        domain: &str,
        now: i64,
    ) -> DomainRow {
        DomainRow {
            id,
            control_plane_id: control_plane_id.to_owned(),
            control_plane_geo: control_plane_geo.to_owned(),
            domain: domain.to_owned(),
            certificate_id,
            sni_id,
            state: INITIALIZING.into(),
            reported_status: None,
            reason: None,
            cert: None,
            key: None,
            not_after: None,
            renew_at: None,
            renew_failures: 0,
            authority: None,
            acme_directory: None,
            entity_version: 1,
            created_at: now,
            updated_at: now,
        }
    }
}

const COLUMNS: &str = "id, control_plane_id, control_plane_geo, domain, certificate_id, sni_id,
    state, reported_status, reason, cert, key, not_after, renew_at, renew_failures, authority,
    acme_directory, entity_version, created_at, updated_at";

fn read(r: &Row<'_>) -> rusqlite::Result<DomainRow> {
    Ok(DomainRow {
        id: r.get(0)?,
        control_plane_id: r.get(1)?,
        control_plane_geo: r.get(2)?,
        domain: r.get(3)?,
        certificate_id: r.get(4)?,
        sni_id: r.get(5)?,
        state: r.get(6)?,
        reported_status: r.get(7)?,
        reason: r.get(8)?,
        cert: r.get(9)?,
        key: r.get(10)?,
        not_after: r.get(11)?,
        renew_at: r.get(12)?,
        renew_failures: r.get(13)?,
        authority: r.get(14)?,
        acme_directory: r.get(15)?,
        entity_version: r.get(16)?,
        created_at: r.get(17)?,
        updated_at: r.get(18)?,
    })
}

fn select(
    tx: &Transaction<'_>,
    sql_where: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<DomainRow>, StoreError> {
    let mut statement = tx.prepare(&format!(
        "SELECT {COLUMNS} FROM custom_domains {sql_where} ORDER BY created_at, rowid"
    ))?;
    let rows = statement
        .query_map(args, read)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn insert(tx: &Transaction<'_>, row: &DomainRow) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO custom_domains ({COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     ?18, ?19)"
        ),
        params![
            row.id,
            row.control_plane_id,
            row.control_plane_geo,
            row.domain,
            row.certificate_id,
            row.sni_id,
            row.state,
            row.reported_status,
            row.reason,
            row.cert,
            row.key,
            row.not_after,
            row.renew_at,
            row.renew_failures,
            row.authority,
            row.acme_directory,
            row.entity_version,
            row.created_at,
            row.updated_at,
        ],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Unique(format!("{{domain=\"{}\"}}", row.domain))
        }
        other => other.into(),
    })?;
    Ok(())
}

pub fn get(tx: &Transaction<'_>, id: &str) -> Result<Option<DomainRow>, StoreError> {
    Ok(select(tx, "WHERE id = ?1", [id])?.into_iter().next())
}

pub fn by_domain(tx: &Transaction<'_>, domain: &str) -> Result<Option<DomainRow>, StoreError> {
    Ok(select(tx, "WHERE domain = ?1", [domain])?
        .into_iter()
        .next())
}

/// Every domain, oldest first.
pub fn all(tx: &Transaction<'_>) -> Result<Vec<DomainRow>, StoreError> {
    select(tx, "", [])
}

pub fn in_state(tx: &Transaction<'_>, state: &str) -> Result<Vec<DomainRow>, StoreError> {
    select(tx, "WHERE state = ?1", [state])
}

/// Domains with a certificate due for renewal at `now`.
pub fn due(tx: &Transaction<'_>, now: i64) -> Result<Vec<DomainRow>, StoreError> {
    select(
        tx,
        "WHERE cert IS NOT NULL AND renew_at IS NOT NULL AND renew_at <= ?1",
        [now],
    )
}

/// The earliest renewal of any certificate.
pub fn next_renewal(tx: &Transaction<'_>) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT MIN(renew_at) FROM custom_domains WHERE cert IS NOT NULL",
            [],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten())
}

/// Removes the domain (its challenges go with it); whether it was there.
pub fn delete(tx: &Transaction<'_>, id: &str) -> Result<bool, StoreError> {
    Ok(tx.execute("DELETE FROM custom_domains WHERE id = ?1", [id])? > 0)
}

/// A certificate issued for the domain (first issuance or renewal): `ready`, with it. False
/// when the domain is gone meanwhile (deleted while its certificate was being issued).
#[allow(clippy::too_many_arguments)]
pub fn set_certificate(
    tx: &Transaction<'_>,
    id: &str,
    cert: &str,
    key: &str,
    not_after: i64,
    renew_at: i64,
    authority: &str,
    acme_directory: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    // A first certificate leaves its domain `initializing` until the data planes run it
    // ([`set_ready`]); a renewed one leaves it (or puts it back) `ready`.
    Ok(tx.execute(
        "UPDATE custom_domains SET
             state = CASE state WHEN 'initializing' THEN 'initializing' ELSE 'ready' END,
             reported_status = NULL,
             reason = CASE state WHEN 'initializing'
                 THEN 'certificate issued; waiting for the data planes to serve it' END,
             cert = ?2, key = ?3, not_after = ?4, renew_at = ?5, renew_failures = 0,
             authority = ?6, acme_directory = ?7, entity_version = entity_version + 1,
             updated_at = ?8
         WHERE id = ?1",
        params![
            id,
            cert,
            key,
            not_after,
            renew_at,
            authority,
            acme_directory,
            now
        ],
    )? > 0)
}

/// A first certificate is on the data planes: `ready`. `reason` says when some did not
/// confirm it in time (it is in their configuration all the same).
pub fn set_ready(
    tx: &Transaction<'_>,
    id: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "UPDATE custom_domains SET state = 'ready', reported_status = NULL, reason = ?2,
             entity_version = entity_version + 1, updated_at = ?3
         WHERE id = ?1 AND state = 'initializing' AND cert IS NOT NULL",
        params![id, reason, now],
    )? > 0)
}

/// The first issuance failed: `error` with why, and no certificate.
pub fn set_failed(
    tx: &Transaction<'_>,
    id: &str,
    reported_status: &str,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "UPDATE custom_domains SET state = 'error', reported_status = ?2, reason = ?3,
             cert = NULL, key = NULL, not_after = NULL, renew_at = NULL,
             entity_version = entity_version + 1, updated_at = ?4
         WHERE id = ?1",
        params![id, reported_status, reason, now],
    )? > 0)
}

/// A first issuance failed and is tried again: still `initializing`, with why.
pub fn set_retrying(
    tx: &Transaction<'_>,
    id: &str,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "UPDATE custom_domains SET reported_status = 'ERROR', reason = ?2,
             entity_version = entity_version + 1, updated_at = ?3
         WHERE id = ?1 AND state = 'initializing'",
        params![id, reason, now],
    )? > 0)
}

/// A renewal failed: the certificate stays, the next attempt is at `retry_at`; `state` is
/// `ready` while the certificate is valid, `error` once it expired.
pub fn set_renewal_failed(
    tx: &Transaction<'_>,
    id: &str,
    state: &str,
    reason: &str,
    retry_at: i64,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "UPDATE custom_domains SET state = ?2, reported_status = 'RENEWAL_FAILED', reason = ?3,
             renew_at = ?4, renew_failures = renew_failures + 1,
             entity_version = entity_version + 1, updated_at = ?5
         WHERE id = ?1",
        params![id, state, reason, retry_at, now],
    )? > 0)
}

/// A challenge to answer for domain `custom_domain_id` of control plane `control_plane_id`.
pub fn add_challenge(
    tx: &Transaction<'_>,
    custom_domain_id: &str,
    control_plane_id: &str,
    token: &str,
    key_authorization: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO acme_challenges
             (token, custom_domain_id, control_plane_id, key_authorization, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (token) DO UPDATE SET key_authorization = excluded.key_authorization",
        params![
            token,
            custom_domain_id,
            control_plane_id,
            key_authorization,
            now
        ],
    )?;
    Ok(())
}

/// Whether the challenge was there.
pub fn remove_challenge(tx: &Transaction<'_>, token: &str) -> Result<bool, StoreError> {
    Ok(tx.execute("DELETE FROM acme_challenges WHERE token = ?1", [token])? > 0)
}

/// Removes every challenge of a domain; how many there were.
pub fn remove_challenges_of(
    tx: &Transaction<'_>,
    custom_domain_id: &str,
) -> Result<usize, StoreError> {
    Ok(tx.execute(
        "DELETE FROM acme_challenges WHERE custom_domain_id = ?1",
        [custom_domain_id],
    )?)
}

/// Removes every challenge (left by a control plane that stopped mid-validation; the
/// validation itself died with it); returns the control planes that had some.
pub fn clear_challenges(tx: &Transaction<'_>) -> Result<Vec<String>, StoreError> {
    let mut statement = tx.prepare("SELECT DISTINCT control_plane_id FROM acme_challenges")?;
    let ids = statement
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    tx.execute("DELETE FROM acme_challenges", [])?;
    Ok(ids)
}

/// The control plane's `certificates` (Kong's entity: its issued custom domains' certificates
/// with their keys and their domain as SNI) and `acme_challenges` (wasmgate's) for the
/// document its data planes get, in a stable order: the text is hashed and compared.
pub fn tls_entities(
    tx: &Transaction<'_>,
    control_plane_id: &str,
) -> Result<(Vec<Value>, Vec<Value>), StoreError> {
    let certificates = select(
        tx,
        "WHERE control_plane_id = ?1 AND cert IS NOT NULL AND key IS NOT NULL",
        [control_plane_id],
    )?
    .into_iter()
    .map(|row| {
        json!({
            "id": row.certificate_id,
            "cert": row.cert,
            "key": row.key,
            "snis": [row.domain],
        })
    })
    .collect();
    let mut statement = tx.prepare(
        "SELECT token, key_authorization FROM acme_challenges WHERE control_plane_id = ?1
         ORDER BY created_at, token",
    )?;
    let challenges = statement
        .query_map([control_plane_id], |r| {
            Ok(json!({
                "token": r.get::<_, String>(0)?,
                "key_authorization": r.get::<_, String>(1)?,
            }))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((certificates, challenges))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn row(id: &str, control_plane_id: &str, domain: &str) -> DomainRow {
        let ids = (id.to_owned(), format!("cert-{id}"), format!("sni-{id}"));
        DomainRow::initializing(ids, control_plane_id, "us", domain, 1)
    }

    /// A domain is one control plane's; only an issued one's certificate (and key) reaches
    /// its data planes, with its challenges; deleting it takes its challenges along.
    #[test]
    fn only_issued_certificates_and_pending_challenges_reach_the_data_planes() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        store.insert_test_control_plane("cp");
        store.insert_test_control_plane("other");
        store
            .transaction(|tx| {
                insert(tx, &row("d1", "cp", "api.example.test"))?;
                insert(tx, &row("d2", "cp", "www.example.test"))?;
                let taken = insert(tx, &row("d3", "other", "api.example.test"));
                assert!(
                    matches!(taken, Err(StoreError::Unique(ref what)) if what.contains("api.example.test")),
                    "{taken:?}"
                );
                assert!(set_certificate(tx, "d1", "CERT", "KEY", 90, 60, "acme", Some("dir"), 2)?);
                add_challenge(tx, "d2", "cp", "tok", "tok.thumb", 3)?;
                assert!(!set_certificate(tx, "gone", "C", "K", 1, 1, "acme", None, 2)?);
                Ok::<_, StoreError>(())
            })
            .expect("rows");
        let (certificates, challenges) = store
            .transaction(|tx| tls_entities(tx, "cp"))
            .expect("entities");
        assert_eq!(
            certificates,
            [json!({ "id": "cert-d1", "cert": "CERT", "key": "KEY",
                     "snis": ["api.example.test"] })]
        );
        assert_eq!(
            challenges,
            [json!({ "token": "tok", "key_authorization": "tok.thumb" })]
        );
        let state = |id: &str| {
            let row = store.transaction(|tx| get(tx, id)).expect("get").expect(id);
            (row.state, row.entity_version, row.renew_at)
        };
        // Issued, on its way to the data planes: ready once they confirm it.
        assert_eq!(state("d1"), (INITIALIZING.to_owned(), 2, Some(60)));
        assert!(!store
            .transaction(|tx| set_ready(tx, "d2", None, 4))
            .expect("set_ready"));
        assert!(store
            .transaction(|tx| set_ready(tx, "d1", None, 4))
            .expect("set_ready"));
        assert_eq!(state("d1"), (READY.to_owned(), 3, Some(60)));
        // A renewal keeps it ready.
        assert!(store
            .transaction(|tx| set_certificate(tx, "d1", "CERT2", "KEY2", 90, 60, "acme", None, 5))
            .expect("renewal"));
        assert_eq!(state("d1"), (READY.to_owned(), 4, Some(60)));
        assert_eq!(store.transaction(|tx| due(tx, 59)).expect("due").len(), 0);
        assert_eq!(store.transaction(|tx| due(tx, 60)).expect("due").len(), 1);
        assert_eq!(store.transaction(next_renewal).expect("next"), Some(60));
        store.transaction(|tx| delete(tx, "d2")).expect("delete");
        let (_, challenges) = store
            .transaction(|tx| tls_entities(tx, "cp"))
            .expect("entities");
        assert!(challenges.is_empty(), "{challenges:?}");
        let removed = store
            .transaction(|tx| {
                add_challenge(tx, "d1", "cp", "t1", "t1.k", 4)?;
                add_challenge(tx, "d1", "cp", "t2", "t2.k", 4)?;
                remove_challenges_of(tx, "d1")
            })
            .expect("challenges");
        assert_eq!(removed, 2);
        let (certificates, _) = store
            .transaction(|tx| tls_entities(tx, "other"))
            .expect("entities");
        assert!(certificates.is_empty());
    }
}
