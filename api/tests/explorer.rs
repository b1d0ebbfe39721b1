//! The explorer works offline: a real headless Chromium, refused every request to anything but
//! the server, opens the landing page, follows the link to the explorer, runs a query through
//! the UI and shows its result.

mod common;

use serde_json::Value;

#[tokio::test]
async fn the_explorer_runs_a_query_in_a_browser_with_no_outside_network() {
    let app = common::TestApp::start().await;
    app.add_branch("BER", 52.5251, 13.3694).await;
    let base = format!("http://{}", app.addr);
    let out = common::node(
        "explorer.mjs",
        vec![base, "{ branches { code city } }".to_owned()],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    assert_eq!(
        report["refused"],
        serde_json::json!([]),
        "the page reached outside: {report:#}"
    );
    let shown = report["result"].as_str().unwrap_or_default();
    assert!(
        shown.contains("\"code\": \"BER\""),
        "the result pane shows: {shown}"
    );
    app.shutdown().await;
}
