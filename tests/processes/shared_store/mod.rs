//! The Redis store: what it holds, two replicas sharing one budget and one set of keys,
//! and what each failure mode does while Redis is down, paused, and back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use axum::Router;
use serde_json::{Value, json};

/// A Jelou stand-in that notes when each message arrives, and to whom, and accepts it
/// after `delay`.
#[derive(Clone)]
struct Upstream {
    uri: String,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    async fn start(delay: Duration) -> Upstream {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (noted, noted_paths) = (arrivals.clone(), paths.clone());
        let app = Router::new().fallback(move |uri: axum::http::Uri| {
            let (noted, noted_paths) = (noted.clone(), noted_paths.clone());
            async move {
                noted.lock().unwrap().push(Instant::now());
                noted_paths.lock().unwrap().push(uri.path().to_string());
                tokio::time::sleep(delay).await;
                axum::Json(json!({"id": "wamid.1"}))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream {
            uri,
            arrivals,
            paths,
        }
    }

    /// How many times each path (one per recipient) was called.
    fn per_path(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for path in self.paths.lock().unwrap().iter() {
            *counts.entry(path.clone()).or_insert(0) += 1;
        }
        counts
    }

    fn calls(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    fn arrivals(&self) -> Vec<Instant> {
        let mut arrivals = self.arrivals.lock().unwrap().clone();
        arrivals.sort();
        arrivals
    }
}

fn message_to(i: usize) -> Value {
    let mut message = seed_message();
    message["to"] = json!(format!("+5939876{i:05}"));
    message
}

/// The largest excess, over all windows of arrivals, of the count over what GCRA allows
/// (`burst + rate * window`), with one message of slack for scheduling jitter between
/// admission and arrival. Positive means the limit was broken.
fn worst_window(arrivals: &[Instant], rate: f64, burst: u32) -> f64 {
    let mut worst = f64::MIN;
    for i in 0..arrivals.len() {
        for j in i..arrivals.len() {
            let count = (j - i + 1) as f64;
            let window = arrivals[j].duration_since(arrivals[i]).as_secs_f64();
            worst = worst.max(count - (f64::from(burst) + rate * window + 1.0));
        }
    }
    worst
}

fn relay_env<'a>(upstream: &'a str, redis: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("JELOU_RELAY__UPSTREAM__MODE", "jelou"),
        ("JELOU_RELAY__UPSTREAM__BASE_URL", upstream),
        ("JELOU_RELAY__BOTS__VENTAS__ID", BOT_ID),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_ID", CLIENT_ID),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_SECRET", CLIENT_SECRET),
        ("JELOU_RELAY__STORE__BACKEND", "redis"),
        ("JELOU_RELAY__STORE__REDIS_URL", redis),
    ]
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    message: &Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = client.post(url).json(message);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the relay answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

mod outages;
mod queue;
mod replicas;
mod stalls;
