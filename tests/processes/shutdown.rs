//! Graceful shutdown: readiness flips, in-flight requests finish, the process exits 0.

use std::time::{Duration, Instant};

use crate::common::*;
use wiremock::MockServer;

async fn wait_for_upstream_call(jelou: &MockServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while jelou.received_requests().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the request never reached Jelou");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the app, told to stop, stopped cleanly within `within`.
async fn stopped_cleanly_within(app: &mut TestApp, within: Duration) -> bool {
    let finished = app.finished.take().unwrap();
    let result = tokio::time::timeout(within, finished).await;
    matches!(result, Ok(Ok(Ok(()))))
}

#[tokio::test]
async fn readiness_flips_and_an_in_flight_request_finishes() {
    let jelou = accepting_jelou(Duration::from_millis(800)).await;
    let mut settings = settings_for(&jelou.uri());
    settings.server.shutdown_delay_ms = 400;
    let mut app = spawn_with(settings).await;

    let in_flight = tokio::spawn(
        app.client
            .post(app.url("/v1/flow-messages"))
            .json(&seed_message())
            .send(),
    );
    wait_for_upstream_call(&jelou).await;
    app.shutdown();

    // During the shutdown delay the listener still answers, and says it is draining.
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap()["status"],
        "draining"
    );

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["status"],
        "sent"
    );

    assert!(
        stopped_cleanly_within(&mut app, Duration::from_secs(10)).await,
        "server stopped cleanly"
    );
    assert!(
        app.client.get(app.url("/healthz")).send().await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn the_drain_period_bounds_how_long_shutdown_waits() {
    let jelou = accepting_jelou(Duration::from_secs(30)).await;
    let mut settings = settings_for(&jelou.uri());
    settings.server.drain_timeout_ms = 300;
    settings.upstream.request_timeout_ms = 60_000;
    let mut app = spawn_with(settings).await;
    let _in_flight = tokio::spawn(
        app.client
            .post(app.url("/v1/flow-messages"))
            .json(&seed_message())
            .send(),
    );
    wait_for_upstream_call(&jelou).await;
    app.shutdown();
    assert!(
        stopped_cleanly_within(&mut app, Duration::from_secs(10)).await,
        "stopped after the drain period, not after 30 s"
    );
}

#[tokio::test]
async fn a_connection_that_sent_nothing_is_closed_at_shutdown_and_does_not_hold_it() {
    use tokio::io::AsyncReadExt;

    let jelou = accepting_jelou(Duration::ZERO).await;
    let mut settings = settings_for(&jelou.uri());
    // Longer than the test waits: only shutdown can close the silent connection.
    settings.server.header_read_timeout_ms = 60_000;
    settings.server.drain_timeout_ms = 30_000;
    let mut app = spawn_with(settings).await;
    let address = app.address.trim_start_matches("http://").to_string();
    let mut silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    // Let the relay take the connection over; it waits for its first bytes.
    assert_eq!(app.get_status("/healthz").await, 200);
    app.shutdown();
    assert!(
        stopped_cleanly_within(&mut app, Duration::from_secs(5)).await,
        "stopped without waiting for the silent connection"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let jelou = runtime.block_on(accepting_jelou(Duration::from_millis(700)));
    let uri = jelou.uri();
    let mut relay = RelayProcess::start(&[
        ("JELOU_RELAY__UPSTREAM__MODE", "jelou"),
        ("JELOU_RELAY__UPSTREAM__BASE_URL", &uri),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_ID", CLIENT_ID),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_SECRET", CLIENT_SECRET),
    ]);
    let url = relay.url("/v1/flow-messages");
    let in_flight = runtime.spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&seed_message())
            .send()
            .await
    });
    runtime.block_on(wait_for_upstream_call(&jelou));
    let status = relay.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        relay.output()
    );
    let response = runtime.block_on(in_flight).unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let logs = relay.output();
    assert!(logs.contains("shutdown requested"), "{logs}");
    assert!(logs.contains("drained; exiting"), "{logs}");
}

#[test]
fn healthcheck_follows_readiness() {
    let relay = RelayProcess::start(&[]);
    let port = relay.port.to_string();
    let ok = relay_command(&["healthcheck", "--port", &port], &[])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    drop(relay);
    let down = relay_command(&["healthcheck", "--port", &port], &[])
        .output()
        .unwrap();
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach"));
}

#[test]
fn messages_still_queued_in_memory_are_logged_one_per_line_at_exit() {
    // Local defaults: sandbox, the memory store, asynchronous sending on. One message
    // per recipient at a time: the second and third to the same recipient wait.
    let mut relay = RelayProcess::start(&[
        ("JELOU_RELAY__RECIPIENTS__RATE_PER_SECOND", "0.01"),
        ("JELOU_RELAY__RECIPIENTS__BURST", "1"),
    ]);
    let url = relay.url("/v1/flow-messages");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ids: Vec<String> = runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let response = client
                .post(&url)
                .header("prefer", "respond-async")
                .json(&seed_message())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 202);
            let body: serde_json::Value = response.json().await.unwrap();
            ids.push(body["id"].as_str().unwrap().to_string());
        }
        ids
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(relay.terminate(Duration::from_secs(20)).success());
    let logs = relay.output();
    let lost: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| {
            event["fields"]["message"]
                == "queued message not sent: the queue lives in this process, which is exiting"
        })
        .collect();
    let logged: Vec<&str> = lost
        .iter()
        .map(|event| event["fields"]["id"].as_str().unwrap())
        .collect();
    // One of the three was sent (which one is the worker's pick: they were queued within
    // milliseconds); the other two, and only they, are logged, each once.
    let sent: Vec<&str> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["fields"]["status"] == "sent")
        .filter_map(|event| event["fields"]["id"].as_str().map(str::to_owned))
        .map(|id| ids.iter().find(|known| **known == id).unwrap().as_str())
        .collect();
    assert_eq!(sent.len(), 1, "{logs}");
    let mut expected: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| *id != sent[0])
        .collect();
    let mut logged = logged;
    expected.sort_unstable();
    logged.sort_unstable();
    assert_eq!(logged, expected, "{logs}");
    for event in &lost {
        assert_eq!(event["fields"]["bot"], "ventas");
        assert_eq!(event["fields"]["to"], "593******321");
    }
}
