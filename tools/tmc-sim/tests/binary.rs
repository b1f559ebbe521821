//! The `tmc-sim` binary: it prints its gateway URL first, serves signed requests, stops on
//! SIGTERM, never prints the secret, and refuses bad flags before binding anything.

use std::time::{Duration, SystemTime};

use serde_json::Value;
use tmc_sim::signature::{self, Algorithm};
use tmc_sim::wire::{method, wire_timestamp};
use tokio::io::AsyncBufReadExt;

/// A signed, simplified `consume` of `quantity` messages, posted as a form.
async fn consume(url: &str, app_key: &str, secret: &str, quantity: u32) -> Value {
    let mut pairs: Vec<(String, String)> = [
        ("method", method::CONSUME.to_owned()),
        ("app_key", app_key.to_owned()),
        ("timestamp", wire_timestamp(SystemTime::now())),
        ("format", "json".to_owned()),
        ("v", "2.0".to_owned()),
        ("sign_method", "hmac-sha256".to_owned()),
        ("simplify", "true".to_owned()),
        ("quantity", quantity.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let sign = signature::expected(&pairs, secret, Algorithm::HmacSha256);
    pairs.push(("sign".into(), sign));
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&pairs)
        .finish();
    let answer = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&answer).unwrap()
}

/// The binary prints its gateway URL as the first stdout line, serves it, stops on SIGTERM
/// with status 0, and never prints the secret.
#[tokio::test]
async fn prints_its_url_first_and_serves() {
    let secret = "bin-secret-3f9c";
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tmc-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--app-key",
            "bin-app",
            "--preload",
            "25",
        ])
        .env("TMC_SIM_APP_SECRET", secret)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/router/rest"),
        "{url}"
    );
    let answer = consume(&url, "bin-app", secret, 10).await;
    let messages = answer["messages"].as_array();
    assert_eq!(messages.map(Vec::len), Some(10), "{answer}");
    // A wrong secret is refused with the platform's code 25.
    let refused = consume(&url, "bin-app", "not-the-secret", 10).await;
    assert_eq!(refused["error_response"]["code"], 25, "{refused}");

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(secret), "the secret leaked into the logs");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
}

/// Bad flags make tmc-sim exit non-zero with a message, without binding anything.
#[tokio::test]
async fn refuses_bad_flags() {
    for args in [
        vec!["--listen", "not-an-address"],
        vec!["--lease-secs", "-1"],
        vec!["--app-key", ""],
        vec!["--no-such-flag"],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tmc-sim"))
            .args(&args)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}
