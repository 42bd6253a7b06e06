//! A control plane started on the data of an earlier release: its configurations are assembled
//! again from their entities, so a stored version that a stricter model refuses, or that an
//! older assembly wrote, does not leave its data planes without a configuration.

use serde_json::Value;
use wasmgate_tests::control_plane::TestControlPlane;

async fn expected(cp: &TestControlPlane, id: &str) -> (u16, Value) {
    let response = cp
        .call(
            "GET",
            &format!("/v2/control-planes/{id}/expected-config-hash"),
            None,
        )
        .await;
    (response.status, response.json().unwrap_or_default())
}

/// What an earlier release left as the latest version's text.
fn rewrite_latest(data_dir: &std::path::Path, id: &str, text: &str) {
    let db = rusqlite::Connection::open(data_dir.join("control-plane.db")).expect("database");
    let changed = db
        .execute(
            "UPDATE config_versions SET document = ?2 WHERE control_plane_id = ?1
             AND version = (SELECT MAX(version) FROM config_versions WHERE control_plane_id = ?1)",
            [id, text],
        )
        .expect("update");
    assert_eq!(changed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_versions_an_upgrade_no_longer_makes_are_assembled_again_from_the_entities() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cp = TestControlPlane::start(dir.path());
    let created = cp
        .expect(
            201,
            "POST",
            "/v2/control-planes",
            Some(&serde_json::json!({ "name": "upgraded" })),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    cp.route_all_paths_to(&id, "echo", "all", "127.0.0.1:9".parse().expect("addr"))
        .await;
    let (status, before) = expected(&cp, &id).await;
    assert_eq!(status, 200, "{before}");
    let version = before["config_version"].as_u64().expect("version");

    for (stored, why) in [
        (
            r#"{"_format_version":"3.0","services":[{"name":"no-url"}]}"#,
            "a text the model now refuses",
        ),
        (
            r#"{"_format_version":"3.0"}"#,
            "a valid text the entities do not make",
        ),
    ] {
        cp.stop();
        rewrite_latest(dir.path(), &id, stored);
        cp.start_again();
        let (status, after) = expected(&cp, &id).await;
        assert_eq!(status, 200, "{why}: {after}");
        assert_eq!(
            after["expected_hash"], before["expected_hash"],
            "{why}: the entities' configuration again"
        );
        let now = after["config_version"].as_u64().expect("version");
        assert!(
            now > version,
            "{why}: a new version ({now} after {version})"
        );
    }
    // Nothing changed since: a restart makes no version.
    let (_, settled) = expected(&cp, &id).await;
    cp.stop();
    cp.start_again();
    assert_eq!(expected(&cp, &id).await.1, settled);
}
