//! The role table (README, "Who may do what") on the embedded default, in open and in required mode.
//! The same walk runs on Kafka + CQL in `e2e_backends.rs`.

use crate::common::TestApp;
use crate::common::authz;
use orderflow::AuthModeArg;

async fn walk(mode: AuthModeArg) {
    let keys = tempfile::tempdir().unwrap();
    let mut tokens = None;
    let app = TestApp::start_with(|s| tokens = Some(authz::with_jwt(s, keys.path(), mode))).await;
    let tokens = tokens.unwrap();
    let prepared = authz::prepare(&app, &tokens).await;
    authz::walk(&app, &tokens, mode, &prepared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_table_holds_in_open_mode() {
    walk(AuthModeArg::Open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_table_holds_when_sign_in_is_required() {
    walk(AuthModeArg::Required).await;
}
