//! The relay against its own Jelou simulator: credentials, body checks, scripted faults.

use std::time::Duration;

use crate::common::*;
use jelou_relay::jelou::simulator::{self, Scripted, SimulatorOptions};
use serde_json::{Value, json};

async fn start_simulator(options: SimulatorOptions) -> String {
    let (listener, address) = simulator::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(async move { axum::serve(listener, simulator::router(options)).await });
    format!("http://{address}")
}

async fn received(simulator: &str) -> u64 {
    let stats: Value = reqwest::get(format!("{simulator}/_simulator/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["received"].as_u64().unwrap()
}

fn with_credentials() -> SimulatorOptions {
    SimulatorOptions {
        credentials: Some((CLIENT_ID.into(), CLIENT_SECRET.into())),
        failure_status: 500,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_relay_sends_through_the_simulator() {
    let simulator = start_simulator(with_credentials()).await;
    let app = spawn_with(settings_for(&simulator)).await;
    let response = app.send(&seed_message()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["upstream"], json!({}));
    assert_eq!(received(&simulator).await, 1);
}

#[tokio::test]
async fn wrong_credentials_are_refused_as_jelou_does() {
    let simulator = start_simulator(SimulatorOptions {
        credentials: Some((CLIENT_ID.into(), "another-secret".into())),
        ..with_credentials()
    })
    .await;
    let app = spawn_with(settings_for(&simulator)).await;
    let problem =
        assert_problem(app.send(&seed_message()).await, 502, "upstream_auth_failed").await;
    assert_eq!(
        problem["upstream"],
        json!({"status": 401, "code": "unauthorized"})
    );
}

#[tokio::test]
async fn scripted_faults_are_played_in_order() {
    let simulator = start_simulator(SimulatorOptions {
        script: vec![
            Scripted::Status(503),
            Scripted::Status(503),
            Scripted::Status(200),
            Scripted::Reset,
        ],
        ..with_credentials()
    })
    .await;
    let app = spawn_with(settings_for(&simulator)).await;
    let first: Value = app.send(&seed_message()).await.json().await.unwrap();
    assert_eq!(first["status"], "sent");
    assert_eq!(first["attempts"], 3);
    let problem =
        assert_problem(app.send(&seed_message()).await, 502, "upstream_unavailable").await;
    assert_eq!(
        problem["delivery"], "unknown",
        "a reset after the request was read"
    );
    assert_eq!(received(&simulator).await, 4);
}

#[tokio::test]
async fn latency_and_retry_after_are_injected() {
    let simulator = start_simulator(SimulatorOptions {
        delay: Duration::from_millis(200),
        script: vec![Scripted::Status(429)],
        retry_after: Some("30".into()),
        ..with_credentials()
    })
    .await;
    let app = spawn_with(settings_for(&simulator)).await;
    let started = std::time::Instant::now();
    let response = app.send(&seed_message()).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(response.headers()["retry-after"], "30");
    assert_problem(response, 429, "rate_limited").await;
}

#[test]
fn the_simulate_command_serves_until_sigterm() {
    use std::io::BufRead;
    let mut child = relay_command(&["simulate", "--port", "0", "--statuses", "503"], &[])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("listening"))
        .expect("the simulator says where it listens");
    let address = line.rsplit("address=").next().unwrap().trim().to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        // Stopped whatever happens below, so no simulator outlives the test.
        let _stop = KillOnDrop(child.id());
        reqwest::Client::new()
            .post(format!(
                "http://{address}/v1/bots/B/users/593987654321/flow_message"
            ))
            .json(&seed_upstream_body())
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 503);
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new("kill")
                .arg(self.0.to_string())
                .status();
        }
    }
}
