//! What a new user runs into first: minting a key, checking the configuration, the
//! start-up line, a port already taken, the logs of a refusal, a second Ctrl-C, and the
//! simulator's secret kept off the command line.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = relay_command(args, env).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn new_key_prints_a_prefixed_key_and_its_configuration_line() {
    let (ok, stdout, stderr) = run(&["new-key"], &[]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let key = lines[0];
    assert!(key.starts_with("jrk_"), "{key}");
    assert!(!key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    assert_eq!(
        lines[1],
        format!(
            "key_sha256 = \"{}\"",
            jelou_relay::api::auth::hash_key(key.as_bytes())
        )
    );
    let (_, again, _) = run(&["new-key"], &[]);
    assert_ne!(again.lines().next(), Some(key), "a fresh key each time");
}

#[test]
fn check_config_summarises_callers_auth_admin_and_store_without_secrets() {
    let hash = caller_key_sha256();
    let (ok, stdout, stderr) = run(
        &["check-config"],
        &[
            ("APP_ENVIRONMENT", "production"),
            ("JELOU_RELAY__CALLERS__ORDERS__KEY_SHA256", &hash),
            ("JELOU_RELAY__CALLERS__ORDERS__BOTS", "ventas"),
            ("JELOU_RELAY__CALLERS__ORDERS__RATE_PER_SECOND", "10"),
            ("JELOU_RELAY__CALLERS__ORDERS__BURST", "20"),
            ("JELOU_RELAY__BOTS__VENTAS__ID", "BOT_ID"),
            ("JELOU_RELAY__UPSTREAM__CLIENT_ID", "relay-client"),
            ("JELOU_RELAY__UPSTREAM__CLIENT_SECRET", CLIENT_SECRET),
        ],
    );
    assert!(ok, "{stderr}");
    for expected in [
        "auth: bearer (1 caller(s))",
        "caller orders: bots ventas; rate 10/s, burst 20",
        "admin: http://0.0.0.0:9090/metrics",
        "store: memory",
        "async: off (Prefer: respond-async is ignored)",
    ] {
        assert!(stdout.contains(expected), "{expected} in {stdout}");
    }
    assert!(!stdout.contains(&hash), "no key hash: {stdout}");
    assert!(!stdout.contains(CLIENT_SECRET));
}

#[test]
fn the_start_up_line_gives_the_urls_to_open() {
    let mut relay = RelayProcess::start(&[]);
    let started = log_line(&relay.output(), "jelou-relay listening");
    let base = format!("http://127.0.0.1:{}", relay.port);
    assert_eq!(started["fields"]["api"], format!("{base}/v1/flow-messages"));
    assert_eq!(started["fields"]["docs"], format!("{base}/docs/"));
    let metrics = started["fields"]["metrics"].as_str().unwrap().to_string();
    assert!(
        metrics.starts_with("http://127.0.0.1:") && metrics.ends_with("/metrics"),
        "{metrics}"
    );
    let scraped = reqwest::blocking::get(&metrics).unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(relay.terminate(Duration::from_secs(10)).success());
}

#[test]
fn a_taken_admin_port_is_named_once_with_its_settings() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = relay_command(
        &["serve"],
        &[
            ("JELOU_RELAY__SERVER__PORT", "0"),
            ("JELOU_RELAY__ADMIN__HOST", "127.0.0.1"),
            ("JELOU_RELAY__ADMIN__PORT", &port),
        ],
    )
    .output()
    .unwrap();
    assert!(!output.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(all.matches("cannot listen").count(), 1, "{all}");
    for expected in [
        "admin listener",
        &format!("127.0.0.1:{port}"),
        "admin.port",
        "JELOU_RELAY__ADMIN__PORT",
        "admin.enabled",
    ] {
        assert!(all.contains(expected), "{expected} in {all}");
    }
}

#[test]
fn a_refusal_is_logged_with_its_code_and_field_paths_never_the_values() {
    let mut relay = RelayProcess::start(&[]);
    let mut message = seed_message();
    message["title"] = json!("");
    message["flow"]["cta"] = json!("Iniciar 😀 secret-looking-value");
    let status = reqwest::blocking::Client::new()
        .post(relay.url("/v1/flow-messages"))
        .json(&message)
        .send()
        .unwrap()
        .status();
    assert_eq!(status, 422);
    assert!(relay.terminate(Duration::from_secs(10)).success());
    let logs = relay.output();
    let finished = log_line(&logs, "request finished");
    let span = &finished["span"];
    assert_eq!(span["outcome"], "refused", "{finished}");
    assert_eq!(span["code"], "validation_failed", "{finished}");
    assert_eq!(span["fields"], "title, flow.cta", "{finished}");
    assert!(!logs.contains("secret-looking-value"));
    // Whole microseconds: at most three decimals.
    let latency = span["latency_ms"].to_string();
    let decimals = latency.split('.').nth(1).map_or(0, str::len);
    assert!(decimals <= 3, "{latency}");
}

#[test]
fn text_logs_name_the_caller_once_per_line() {
    let hash = caller_key_sha256();
    let port = free_port().to_string();
    let child = relay_command(
        &["serve"],
        &[
            ("JELOU_RELAY__SERVER__PORT", &port),
            ("JELOU_RELAY__ADMIN__ENABLED", "false"),
            ("JELOU_RELAY__CALLERS__ORDERS__KEY_SHA256", &hash),
            ("JELOU_RELAY__LOG__FORMAT", "text"),
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let client = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/flow-messages");
    let started = std::time::Instant::now();
    let status = loop {
        let sent = client
            .post(&url)
            .header("authorization", format!("Bearer {CALLER_KEY}"))
            .json(&seed_message())
            .send();
        match sent {
            Ok(response) => break response.status(),
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(error) => panic!("the relay did not start: {error}"),
        }
    };
    assert_eq!(status, 200);
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&output.stdout);
    let finished = logs
        .lines()
        .find(|line| line.contains("request finished"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert_eq!(finished.matches("caller=").count(), 1, "{finished}");
    assert!(finished.contains("caller=\"orders\""), "{finished}");
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

#[test]
fn a_second_interrupt_exits_at_once_with_130() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Jelou never answers in time: the drain would wait for the send.
    let jelou = runtime.block_on(accepting_jelou(Duration::from_secs(60)));
    let uri = jelou.uri();
    let mut relay = RelayProcess::start(&[
        ("JELOU_RELAY__UPSTREAM__MODE", "jelou"),
        ("JELOU_RELAY__UPSTREAM__BASE_URL", &uri),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_ID", CLIENT_ID),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_SECRET", CLIENT_SECRET),
        ("JELOU_RELAY__UPSTREAM__REQUEST_TIMEOUT_MS", "60000"),
        ("JELOU_RELAY__DELIVERY__DEADLINE_MS", "60000"),
        ("JELOU_RELAY__SERVER__DRAIN_TIMEOUT_MS", "60000"),
    ]);
    let url = relay.url("/v1/flow-messages");
    let _in_flight = std::thread::spawn(move || {
        let _ = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap()
            .post(url)
            .json(&seed_message())
            .send();
    });
    let sent = std::time::Instant::now();
    while runtime
        .block_on(jelou.received_requests())
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "no send reached Jelou"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = relay.child.id().to_string();
    let interrupt = || {
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
    };
    assert!(interrupt().success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "the first interrupt drains"
    );
    assert!(interrupt().success());
    let asked = std::time::Instant::now();
    let status = loop {
        if let Some(status) = relay.child.try_wait().unwrap() {
            break status;
        }
        // Far below the 60 s drain, with room for a loaded machine.
        assert!(asked.elapsed() < Duration::from_secs(20), "still draining");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    // The line is read from the relay's stderr by another thread.
    let exited = std::time::Instant::now();
    while !relay.output().contains("second interrupt") {
        assert!(
            exited.elapsed() < Duration::from_secs(5),
            "{}",
            relay.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_simulator_takes_its_secret_from_a_file_and_never_echoes_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "file-secret-123\n").unwrap();
    let port = free_port();
    let mut child = relay_command(
        &[
            "simulate",
            "--port",
            &port.to_string(),
            "--client-id",
            "demo",
            "--client-secret-file",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/bots/B/users/593987654321/flow_message");
    let client = reqwest::blocking::Client::new();
    let started = std::time::Instant::now();
    let post = |secret: &str| {
        client
            .post(&url)
            .basic_auth("demo", Some(secret))
            .json(&seed_upstream_body())
            .send()
    };
    let accepted = loop {
        match post("file-secret-123") {
            Ok(response) => break response.status(),
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(error) => panic!("the simulator did not start: {error}"),
        }
    };
    assert_eq!(accepted, 200);
    assert_eq!(post("wrong").unwrap().status(), 401);
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!all.contains("file-secret-123"), "{all}");
}
