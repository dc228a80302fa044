//! Start-up: production refuses each unsafe configuration with one clear line per
//! problem; local starts in sandbox mode with no credentials at all.

use crate::common::*;

fn check_config(env: &[(&str, &str)]) -> (bool, String, String) {
    let output = relay_command(&["check-config"], env).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// sha256("orders-key-0123456789abcdef"), the tests' caller key.
const CALLER_HASH: &str = "57b48040a156ef658f64101c91bbc2929d63f1349283cb6c9e3b2b079363a7d2";

const PRODUCTION_OK: &[(&str, &str)] = &[
    ("APP_ENVIRONMENT", "production"),
    ("JELOU_RELAY__CALLERS__ORDERS__KEY_SHA256", CALLER_HASH),
    ("JELOU_RELAY__BOTS__VENTAS__ID", "BOT_ID"),
    ("JELOU_RELAY__UPSTREAM__CLIENT_ID", "relay-client"),
    ("JELOU_RELAY__UPSTREAM__CLIENT_SECRET", CLIENT_SECRET),
];

fn production_with(
    overrides: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    let mut env: Vec<_> = PRODUCTION_OK
        .iter()
        .filter(|(key, _)| !overrides.iter().any(|(k, _)| k == key))
        .copied()
        .collect();
    env.extend(overrides.iter().filter(|(_, v)| !v.is_empty()).copied());
    env
}

#[test]
fn production_with_credentials_is_accepted() {
    let (ok, stdout, stderr) = check_config(PRODUCTION_OK);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("bot ventas: id BOT_ID, credentials client_id relay-client"));
    assert!(!stdout.contains(CLIENT_SECRET));
}

#[test]
fn production_refuses_each_unsafe_configuration() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("JELOU_RELAY__UPSTREAM__MODE", "sandbox")],
            "config error: upstream.mode: is 'sandbox' in production",
        ),
        (
            &[("JELOU_RELAY__UPSTREAM__CLIENT_SECRET", "")],
            "config error: bots.ventas: no client_secret",
        ),
        (
            &[("JELOU_RELAY__UPSTREAM__CLIENT_ID", "")],
            "config error: bots.ventas: no client_id",
        ),
        (
            &[(
                "JELOU_RELAY__UPSTREAM__BASE_URL",
                "http://api.jelou.example",
            )],
            "config error: upstream.base_url: 'http://api.jelou.example' is not https",
        ),
        (
            &[("JELOU_RELAY__BOTS__VENTAS__ID", "")],
            "config error: bots: no bot configured",
        ),
        (
            &[(
                "JELOU_RELAY__UPSTREAM__CLIENT_SECRET_FILE",
                "/nonexistent/secret",
            )],
            "config error: upstream.client_secret_file: set either",
        ),
        (
            &[("JELOU_RELAY__SERVER__PROT", "8080")],
            "unknown field `prot`",
        ),
        (
            &[("JELOU_RELAY__SERVER__PORT", "eighty")],
            "config error: configuration:",
        ),
        (
            &[("APP_ENVIRONMENT", "staging")],
            "config error: APP_ENVIRONMENT: unknown environment 'staging'",
        ),
        (
            &[("JELOU_RELAY__LOG__LEVEL", "[[[")],
            "config error: log.level",
        ),
        (
            &[("JELOU_RELAY__STORE__BACKEND", "redis")],
            "config error: store.redis_url: missing for store.backend = \"redis\"",
        ),
        (
            &[
                ("JELOU_RELAY__STORE__BACKEND", "redis"),
                ("JELOU_RELAY__STORE__REDIS_URL", "http://:pw-Zq9@redis:6379"),
            ],
            "config error: store.redis_url: is not a redis://host:port[/db] or rediss:// URL",
        ),
        (
            &[
                ("JELOU_RELAY__STORE__BACKEND", "redis"),
                ("JELOU_RELAY__STORE__REDIS_URL", "redis://redis:6379"),
                ("JELOU_RELAY__STORE__TIMEOUT_MS", "0"),
            ],
            "config error: store.timeout_ms: must be 1 to 10000 milliseconds",
        ),
        (
            &[
                ("JELOU_RELAY__STORE__BACKEND", "redis"),
                ("JELOU_RELAY__STORE__REDIS_URL", "redis://redis:6379"),
                ("JELOU_RELAY__STORE__EXPECTED_REPLICAS", "0"),
            ],
            "config error: store.expected_replicas: must be at least 1",
        ),
        (
            &[("JELOU_RELAY__STORE__BACKEND", "mongodb")],
            "mongodb for key `store.backend`",
        ),
        (
            &[("JELOU_RELAY__STORE__FAILURE_MODE", "maybe")],
            "maybe for key `store.failure_mode`",
        ),
    ];
    for (overrides, expected) in cases {
        let env = production_with(overrides);
        let (ok, _, stderr) = check_config(&env);
        assert!(!ok, "{overrides:?} was accepted");
        assert!(
            stderr.contains(expected),
            "{overrides:?}: expected {expected:?} in:\n{stderr}"
        );
        assert!(!stderr.contains(CLIENT_SECRET), "{stderr}");
        assert!(
            !stderr.contains("pw-Zq9"),
            "the Redis password is never shown: {stderr}"
        );
    }
}

#[test]
fn a_redis_url_is_a_secret_shown_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis_url");
    std::fs::write(&file, "redis://:pw-Zq9-secret@redis.internal:6380/2\n").unwrap();
    let path = file.to_str().unwrap();
    let mut env = production_with(&[]);
    env.extend([
        ("JELOU_RELAY__STORE__BACKEND", "redis"),
        ("JELOU_RELAY__STORE__REDIS_URL_FILE", path),
        ("JELOU_RELAY__STORE__FAILURE_MODE", "fail_closed"),
        ("JELOU_RELAY__STORE__EXPECTED_REPLICAS", "3"),
    ]);
    let (ok, stdout, stderr) = check_config(&env);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(
            "store: redis redis://redis.internal:6380/2 (fail_closed, expected replicas 3, timeout 200 ms, key prefix \"jelou-relay:\")"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("pw-Zq9"), "{stdout}");

    // Both forms at once is a mistake, reported without the value.
    env.push((
        "JELOU_RELAY__STORE__REDIS_URL",
        "redis://:pw-Zq9-other@redis:6379",
    ));
    let (ok, _, stderr) = check_config(&env);
    assert!(!ok);
    assert!(
        stderr.contains("config error: store.redis_url_file: set either store.redis_url or store.redis_url_file, not both"),
        "{stderr}"
    );
    assert!(!stderr.contains("pw-Zq9"), "{stderr}");
}

#[test]
fn a_relay_starts_with_redis_unreachable_and_says_so() {
    // Nothing listens on port 1: the relay still starts, and /readyz reports the store.
    let relay = RelayProcess::start(&[
        ("JELOU_RELAY__STORE__BACKEND", "redis"),
        (
            "JELOU_RELAY__STORE__REDIS_URL",
            "redis://:pw-Zq9-secret@127.0.0.1:1/0",
        ),
        ("RUST_LOG", "debug"),
    ]);
    let url = relay.url("/readyz");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let readiness: serde_json::Value = runtime.block_on(async {
        let started = std::time::Instant::now();
        loop {
            let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
            if body["store"]["state"] == "down" || started.elapsed().as_secs() > 10 {
                return body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    assert_eq!(readiness["status"], "ready");
    assert_eq!(
        readiness["store"],
        serde_json::json!({"backend": "redis", "state": "down", "failure_mode": "fail_open", "target": "redis://127.0.0.1:1/0"})
    );
    let (status, body) = post_seed(&relay.url("/v1/flow-messages"));
    assert_eq!(status, 200, "fail_open: sandbox send goes on: {body}");
    let output = relay.output();
    assert!(output.contains("shared store unreachable"), "{output}");
    assert!(
        !output.contains("pw-Zq9"),
        "the password never reaches a log"
    );
}

#[test]
fn plain_http_to_loopback_is_allowed_in_production() {
    let env = production_with(&[("JELOU_RELAY__UPSTREAM__BASE_URL", "http://127.0.0.1:9000")]);
    let (ok, _, stderr) = check_config(&env);
    assert!(ok, "{stderr}");
}

#[test]
fn worker_threads_are_configurable_and_bounded() {
    let (ok, stdout, stderr) = check_config(&[("JELOU_RELAY__SERVER__WORKERS", "3")]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("workers: 3"), "{stdout}");
    let cpus = std::thread::available_parallelism().unwrap().get();
    let (ok, stdout, stderr) = check_config(&[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("workers: {cpus}")), "{stdout}");
    let (ok, _, stderr) = check_config(&[("JELOU_RELAY__SERVER__WORKERS", "257")]);
    assert!(!ok);
    assert!(stderr.contains("server.workers"), "{stderr}");

    // One worker and several serve alike.
    for workers in ["1", "3"] {
        let mut relay = RelayProcess::start(&[("JELOU_RELAY__SERVER__WORKERS", workers)]);
        for _ in 0..4 {
            let (status, body) = post_seed(&relay.url("/v1/flow-messages"));
            assert_eq!(status, 200, "{workers} workers: {body}");
        }
        assert!(
            relay
                .terminate(std::time::Duration::from_secs(10))
                .success()
        );
    }
}

#[test]
fn every_problem_is_reported_at_once_one_per_line() {
    let env = [
        ("APP_ENVIRONMENT", "production"),
        ("JELOU_RELAY__UPSTREAM__MODE", "sandbox"),
        ("JELOU_RELAY__UPSTREAM__BASE_URL", "http://jelou.example"),
    ];
    let (ok, _, stderr) = check_config(&env);
    assert!(!ok);
    let lines: Vec<&str> = stderr.lines().collect();
    // Sandbox mode, plain http, no bot, no caller.
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        lines.iter().all(|l| l.starts_with("config error: ")),
        "{stderr}"
    );
}

#[test]
fn secret_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{CLIENT_SECRET}\n")).unwrap();
    let path = file.to_str().unwrap();
    let env = [
        ("APP_ENVIRONMENT", "production"),
        ("JELOU_RELAY__CALLERS__ORDERS__KEY_SHA256", CALLER_HASH),
        ("JELOU_RELAY__BOTS__VENTAS__ID", "BOT_ID"),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_ID", "relay-client"),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_SECRET_FILE", path),
    ];
    let (ok, stdout, stderr) = check_config(&env);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("secret set"));
    std::fs::write(&file, "").unwrap();
    let (ok, _, stderr) = check_config(&env);
    assert!(!ok);
    assert!(
        stderr.contains("config error: bots.ventas.client_secret_file:"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_to_start_in_production_without_credentials() {
    let env = production_with(&[("JELOU_RELAY__UPSTREAM__CLIENT_SECRET", "")]);
    let output = relay_command(&["serve"], &env).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("config error: bots.ventas: no client_secret"),
        "{stderr}"
    );
}

#[test]
fn local_starts_in_sandbox_without_any_credentials() {
    let (ok, stdout, stderr) = check_config(&[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("environment: local"), "{stdout}");
    assert!(stdout.contains("upstream: sandbox"), "{stdout}");

    let mut relay = RelayProcess::start(&[]);
    let response = post_seed(&relay.url("/v1/flow-messages"));
    assert_eq!(response.0, 200, "{}", response.1);
    assert!(response.1.contains("\"sandbox\":true"), "{}", response.1);
    assert!(
        relay
            .terminate(std::time::Duration::from_secs(10))
            .success()
    );
    // At `info` no attempt span is made: the sandbox's line carries the request's, so it
    // names the request and its bot.
    let accepted = log_line(&relay.output(), "sandbox: message accepted, not sent");
    assert_eq!(accepted["span"]["name"], "request", "{accepted}");
    assert_eq!(accepted["span"]["bot"], "ventas", "{accepted}");
    assert!(accepted["span"]["request_id"].is_string(), "{accepted}");
}

/// POSTs the seed example from a synchronous test.
fn post_seed(url: &str) -> (u16, String) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(url)
            .json(&seed_message())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

#[test]
fn production_may_run_without_callers_only_when_auth_is_explicitly_off() {
    let env = production_with(&[
        ("JELOU_RELAY__CALLERS__ORDERS__KEY_SHA256", ""),
        ("JELOU_RELAY__AUTH__MODE", "none"),
    ]);
    let (ok, _, stderr) = check_config(&env);
    assert!(ok, "{stderr}");
}

#[test]
fn hash_key_prints_the_sha256_of_stdin() {
    use std::io::Write;
    let mut child = relay_command(&["hash-key"], &[])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{CALLER_KEY}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        CALLER_HASH
    );
}
