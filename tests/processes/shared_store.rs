//! The Redis store: what it holds, two replicas sharing one budget and one set of keys,
//! and what each failure mode does while Redis is down, paused, and back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use axum::Router;
use jelou_relay::config::{FailureMode, Settings};
use serde_json::{Value, json};

/// A Jelou stand-in that notes when each message arrives and accepts it after `delay`.
#[derive(Clone)]
struct Upstream {
    uri: String,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Upstream {
    async fn start(delay: Duration) -> Upstream {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let noted = arrivals.clone();
        let app = Router::new().fallback(move || {
            let noted = noted.clone();
            async move {
                noted.lock().unwrap().push(Instant::now());
                tokio::time::sleep(delay).await;
                axum::Json(json!({"id": "wamid.1"}))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream { uri, arrivals }
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

#[test]
fn two_replicas_share_one_bot_budget() {
    if !redis_available() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(Upstream::start(Duration::ZERO));
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let mut env = relay_env(&upstream.uri, &redis_url);
    env.extend([
        ("JELOU_RELAY__BOTS__VENTAS__RATE_PER_SECOND", "10"),
        ("JELOU_RELAY__BOTS__VENTAS__BURST", "2"),
        ("JELOU_RELAY__DELIVERY__RATE_LIMIT_MAX_WAIT_MS", "8000"),
        ("JELOU_RELAY__DELIVERY__DEADLINE_MS", "15000"),
    ]);
    let replicas = [RelayProcess::start(&env), RelayProcess::start(&env)];
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| r.url("/v1/flow-messages"))
        .collect();

    // 40 messages at once, to 40 recipients, half through each replica.
    let statuses = runtime.block_on(async {
        let client = reqwest::Client::new();
        let sends = (0..40).map(|i| {
            let (client, url) = (client.clone(), urls[i % 2].clone());
            tokio::spawn(async move { post(&client, &url, &message_to(i), &[]).await.0 })
        });
        let mut statuses = Vec::new();
        for send in sends {
            statuses.push(send.await.unwrap());
        }
        statuses
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let arrivals = upstream.arrivals();
    assert_eq!(arrivals.len(), 40);
    let worst = worst_window(&arrivals, 10.0, 2);
    assert!(
        worst <= 0.0,
        "Jelou saw more than 10/s (burst 2) over some window, by {worst:.1} messages"
    );
    // Per-process limits would let both replicas send 10/s each: 40 messages in ~1.9 s.
    let span = arrivals[39].duration_since(arrivals[0]);
    assert!(
        span >= Duration::from_millis(3500),
        "40 messages at 10/s with a burst of 2 span at least 3.8 s, took {span:?}"
    );
}

#[test]
fn the_same_key_at_both_replicas_at_once_sends_once() {
    if !redis_available() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(Upstream::start(Duration::from_millis(300)));
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let env = relay_env(&upstream.uri, &redis_url);
    let replicas = [RelayProcess::start(&env), RelayProcess::start(&env)];
    let (a, b) = (
        replicas[0].url("/v1/flow-messages"),
        replicas[1].url("/v1/flow-messages"),
    );

    runtime.block_on(async {
        let client = reqwest::Client::new();
        for round in 0..5 {
            let key = format!("order-{round}");
            let message = message_to(round);
            let headers = [("idempotency-key", key.as_str())];
            let (first, second) = tokio::join!(
                post(&client, &a, &message, &headers),
                post(&client, &b, &message, &headers)
            );
            let answers = [&first, &second];
            let sent: Vec<_> = answers
                .iter()
                .filter(|(status, headers, _)| {
                    *status == 200 && !headers.contains_key("idempotent-replayed")
                })
                .collect();
            assert_eq!(sent.len(), 1, "exactly one replica sent: {answers:?}");
            for (status, headers, body) in answers {
                match status {
                    200 => assert_eq!(body["status"], "sent"),
                    409 => {
                        assert_eq!(body["code"], "idempotency_key_in_flight");
                        assert_eq!(body["delivery"], "not_sent");
                    }
                    other => panic!("unexpected {other}: {headers:?} {body}"),
                }
            }
            // Afterwards either replica replays the one answer.
            let original = &sent[0].2;
            for url in [&a, &b] {
                let (status, headers, body) = post(&client, url, &message, &headers).await;
                assert_eq!(status, 200);
                assert_eq!(headers["idempotent-replayed"], "true");
                assert_eq!(&body, original);
            }
        }
    });
    assert_eq!(upstream.calls(), 5, "one upstream call per key");
}

#[test]
fn a_replica_that_dies_mid_send_leaves_an_unknown_outcome_not_a_second_send() {
    if !redis_available() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(Upstream::start(Duration::from_secs(30)));
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let env = relay_env(&upstream.uri, &redis_url);
    let mut dying = RelayProcess::start(&env);
    let survivor = RelayProcess::start(&env);
    let headers = [
        ("idempotency-key", "order-77"),
        ("x-request-timeout-ms", "1000"),
    ];

    let dying_url = dying.url("/v1/flow-messages");
    let client = reqwest::Client::new();
    let in_flight = {
        let client = client.clone();
        runtime.spawn(async move {
            client
                .post(dying_url)
                .header("idempotency-key", "order-77")
                .header("x-request-timeout-ms", "1000")
                .json(&seed_message())
                .send()
                .await
        })
    };
    while upstream.calls() == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    dying.child.kill().unwrap();
    dying.child.wait().unwrap();
    assert!(
        runtime.block_on(in_flight).unwrap().is_err(),
        "the caller lost its connection: for it, the outcome is unknown"
    );

    let url = survivor.url("/v1/flow-messages");
    runtime.block_on(async {
        // While the dead replica's claim lasts (its deadline and a margin): in flight.
        let (status, _, body) = post(&client, &url, &seed_message(), &headers).await;
        assert_eq!(status, 409, "{body}");
        // Then: the outcome is unknown, and the relay does not guess by sending again.
        let started = Instant::now();
        let (status, body) = loop {
            let (status, _, body) = post(&client, &url, &seed_message(), &headers).await;
            if status != 409 || started.elapsed() > Duration::from_secs(10) {
                break (status, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["code"], "send_interrupted");
        assert_eq!(body["delivery"], "unknown");
        assert_eq!(body["retryable"], false);
    });
    assert_eq!(upstream.calls(), 1, "never sent a second time");
}

fn redis_settings(upstream: &str, mode: FailureMode) -> Settings {
    let mut settings = settings_for(upstream);
    settings.store.failure_mode = mode;
    settings
}

async fn spawn_on_redis(settings: Settings) -> TestApp {
    let redis = RedisServer::start();
    let mut settings = settings;
    use_redis(&mut settings, &redis);
    let mut app = spawn_with(settings).await;
    app.redis = Some(redis);
    app
}

async fn readiness(app: &TestApp) -> Value {
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "a down store does not make the relay unready"
    );
    response.json().await.unwrap()
}

async fn wait_for_store(app: &TestApp, state: &str) {
    let started = Instant::now();
    while readiness(app).await["store"]["state"] != state {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the store never became {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .get(format!("{}/metrics", app.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Sends `count` messages to distinct recipients at once; their statuses.
async fn burst(app: &TestApp, from: usize, count: usize) -> Vec<u16> {
    let sends: Vec<_> = (from..from + count)
        .map(|i| {
            let request = app
                .client
                .post(app.url("/v1/flow-messages"))
                .json(&message_to(i));
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for send in sends {
        statuses.push(send.await.unwrap());
    }
    statuses.sort();
    statuses
}

#[tokio::test]
async fn redis_holds_the_state_under_the_prefix_without_phone_numbers() {
    if !redis_available() {
        return;
    }
    let upstream = Upstream::start(Duration::ZERO).await;
    let mut settings = settings_for(&upstream.uri);
    settings.store.key_prefix = "relay-test:".into();
    // A slow bot, so its rate state outlives the test's look at it.
    let bot = settings.bots.get_mut("ventas").unwrap();
    bot.rate_per_second = Some(1.0);
    bot.burst = Some(1);
    let app = spawn_on_redis(settings).await;
    let readiness = readiness(&app).await;
    assert_eq!(readiness["store"]["backend"], "redis");
    assert_eq!(readiness["store"]["failure_mode"], "fail_open");
    let redis = app.redis.as_ref().unwrap();
    assert_eq!(
        readiness["store"]["target"],
        format!("redis://127.0.0.1:{}/0", redis.port)
    );

    let response = app
        .send_with(&seed_message(), &[("idempotency-key", "order-1")])
        .await;
    assert_eq!(response.status(), 200);

    let mut keys: Vec<String> = redis
        .cli(&["--scan", "--pattern", "*"])
        .lines()
        .map(str::to_owned)
        .collect();
    keys.sort();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("relay-test:")),
        "{keys:?}"
    );
    assert!(keys.contains(&"relay-test:rate:bot:ventas".to_string()));
    assert!(
        keys.iter()
            .any(|k| k.starts_with("relay-test:rate:to:ventas:"))
    );
    assert!(
        keys.iter().all(|k| !k.contains("987654321")),
        "no phone number in a key: {keys:?}"
    );
    let idem = keys
        .iter()
        .find(|k| k.starts_with("relay-test:idem:"))
        .unwrap();
    // Every key expires by itself: the answer after the retention (one day by default),
    // rate state once its bucket is full again.
    let ttl: i64 = redis.cli(&["TTL", idem]).parse().unwrap();
    assert!((86_000..=86_400).contains(&ttl), "TTL {ttl}");
    // Bot: 1/s with a burst of 1, full again within 1 s. Recipient: one every 6 s.
    let pttl = |key: &str| -> i64 { redis.cli(&["PTTL", key]).parse().unwrap() };
    let bot_pttl = pttl("relay-test:rate:bot:ventas");
    assert!((1..=1001).contains(&bot_pttl), "{bot_pttl}");
    let recipient = keys.iter().find(|k| k.contains(":rate:to:")).unwrap();
    let recipient_pttl = pttl(recipient);
    assert!((1..=6001).contains(&recipient_pttl), "{recipient_pttl}");
    let stored: Value = serde_json::from_str(&redis.cli(&["GET", idem])).unwrap();
    assert_eq!(stored["state"], "done");
    assert_eq!(stored["status"], 200);
    assert_eq!(stored["fp"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn fail_closed_refuses_while_redis_is_down_and_recovers_by_itself() {
    if !redis_available() {
        return;
    }
    let upstream = Upstream::start(Duration::ZERO).await;
    let mut app = spawn_on_redis(redis_settings(&upstream.uri, FailureMode::FailClosed)).await;
    assert_eq!(app.send(&message_to(0)).await.status(), 200);

    app.redis.as_mut().unwrap().stop();
    for (i, headers) in [vec![], vec![("idempotency-key", "k-down")]]
        .into_iter()
        .enumerate()
    {
        let started = Instant::now();
        let response = app.send_with(&message_to(1 + i), &headers).await;
        assert_eq!(response.headers()["retry-after"], "1");
        let problem = assert_problem(response, 503, "overloaded").await;
        assert_eq!(problem["delivery"], "not_sent");
        assert_eq!(problem["retryable"], true);
        assert!(
            !problem.to_string().contains("127.0.0.1:"),
            "no store address for callers: {problem}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert_eq!(readiness(&app).await["store"]["state"], "down");
    assert_eq!(upstream.calls(), 1, "nothing sent while Redis is down");
    let metrics = metrics(&app).await;
    assert!(
        metrics
            .contains(r#"jelou_relay_store_unavailable_total{what="rate_limit",action="refused"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("jelou_relay_store_errors_total"));

    // Redis comes back (empty): the relay reconnects by itself.
    app.redis.as_mut().unwrap().restart();
    wait_for_store(&app, "up").await;
    assert_eq!(app.send(&message_to(3)).await.status(), 200);
    let keyed = app
        .send_with(&message_to(4), &[("idempotency-key", "k-down")])
        .await;
    assert_eq!(keyed.status(), 200, "the refused key was never used up");
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test]
async fn fail_open_keeps_sending_within_a_local_share_and_recovers_by_itself() {
    if !redis_available() {
        return;
    }
    let upstream = Upstream::start(Duration::ZERO).await;
    let mut settings = redis_settings(&upstream.uri, FailureMode::FailOpen);
    let bot = settings.bots.get_mut("ventas").unwrap();
    bot.rate_per_second = Some(4.0);
    bot.burst = Some(4);
    settings.store.expected_replicas = 2;
    settings.delivery.rate_limit_max_wait_ms = 0;
    let mut app = spawn_on_redis(settings).await;

    app.redis.as_mut().unwrap().stop();
    // Each replica now allows half the bot's budget: a burst of 2, not 4.
    let statuses = burst(&app, 0, 6).await;
    assert_eq!(statuses, vec![200, 200, 429, 429, 429, 429]);
    assert_eq!(readiness(&app).await["store"]["state"], "down");

    // Idempotency is kept by this replica meanwhile.
    let key = [("idempotency-key", "k-open")];
    tokio::time::sleep(Duration::from_millis(600)).await;
    let first = app.send_with(&message_to(10), &key).await;
    assert_eq!(first.status(), 200);
    let again = app.send_with(&message_to(10), &key).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let metrics = metrics(&app).await;
    assert!(
        metrics.contains(
            r#"jelou_relay_store_unavailable_total{what="rate_limit",action="fallback"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"jelou_relay_store_unavailable_total{what="idempotency",action="fallback"}"#
        )
    );

    app.redis.as_mut().unwrap().restart();
    wait_for_store(&app, "up").await;
    // The shared budget again: the full burst of 4 (the local share holds at most 2).
    let statuses = burst(&app, 20, 4).await;
    assert_eq!(statuses, vec![200, 200, 200, 200]);
    // The key this replica handled alone is still answered from here.
    let replay = app.send_with(&message_to(10), &key).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(upstream.calls(), 2 + 1 + 4);
}

#[tokio::test]
async fn a_redis_that_never_answers_holds_no_request_past_its_deadline() {
    if !redis_available() {
        return;
    }
    let upstream = Upstream::start(Duration::ZERO).await;
    // A store timeout longer than the request's deadline: the deadline still wins.
    let mut settings = redis_settings(&upstream.uri, FailureMode::FailClosed);
    let redis = RedisServer::start();
    use_redis(&mut settings, &redis);
    settings.store.timeout_ms = 5000;
    let mut app = spawn_with(settings).await;
    assert_eq!(app.send(&message_to(0)).await.status(), 200);

    redis.pause();
    for (i, key) in [None, Some("k-paused")].into_iter().enumerate() {
        let mut headers = vec![("x-request-timeout-ms", "800")];
        headers.extend(key.map(|k| ("idempotency-key", k)));
        let started = Instant::now();
        let response = app.send_with(&message_to(1 + i), &headers).await;
        let elapsed = started.elapsed();
        let problem = assert_problem(response, 504, "deadline_exceeded").await;
        assert_eq!(problem["delivery"], "not_sent");
        assert!(
            elapsed < Duration::from_millis(2500),
            "answered at its deadline, not the store's timeout: {elapsed:?}"
        );
    }
    assert_eq!(upstream.calls(), 1);

    redis.resume();
    let started = Instant::now();
    loop {
        let status = app.send(&message_to(5)).await.status();
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.redis = Some(redis);
}

#[tokio::test]
async fn fail_open_with_a_silent_redis_answers_promptly() {
    if !redis_available() {
        return;
    }
    let upstream = Upstream::start(Duration::ZERO).await;
    let app = spawn_on_redis(redis_settings(&upstream.uri, FailureMode::FailOpen)).await;
    assert_eq!(app.send(&message_to(0)).await.status(), 200);
    app.redis.as_ref().unwrap().pause();
    for i in 1..4 {
        let started = Instant::now();
        let response = app
            .send_with(&message_to(i), &[("idempotency-key", &format!("k-{i}"))])
            .await;
        assert_eq!(response.status(), 200);
        // Each store call gives up after store.timeout_ms (200 ms here); once the
        // store is marked down, later requests do not wait for it at all.
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert_eq!(upstream.calls(), 4);
    app.redis.as_ref().unwrap().resume();
    wait_for_store(&app, "up").await;
}

#[tokio::test]
async fn the_redis_host_is_resolved_by_name() {
    if !redis_available() {
        return;
    }
    let upstream = Upstream::start(Duration::ZERO).await;
    let redis = RedisServer::start();
    let mut settings = settings_for(&upstream.uri);
    use_redis(&mut settings, &redis);
    // Resolved by the relay's own resolver (/etc/hosts here), as in the scratch image.
    settings.store.redis_url = Some(format!("redis://localhost:{}/0", redis.port).into());
    settings.store.failure_mode = FailureMode::FailClosed;
    let mut app = spawn_with(settings).await;
    let response = app
        .send_with(&seed_message(), &[("idempotency-key", "by-name")])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        redis.cli(&["EXISTS", "jelou-relay:idem:anonymous\u{1f}by-name"]),
        "1"
    );
    app.redis = Some(redis);
}

#[test]
fn redis_over_tls_is_verified_against_the_trusted_roots() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tls = crate::common::redis_server::TlsFiles::generate(dir.path());
    let redis = RedisServer::start_tls(tls.clone());
    let url = format!("rediss://localhost:{}/0", redis.port);
    let base = [
        ("JELOU_RELAY__STORE__BACKEND", "redis"),
        ("JELOU_RELAY__STORE__REDIS_URL", url.as_str()),
        ("JELOU_RELAY__STORE__FAILURE_MODE", "fail_closed"),
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let send = |relay: &RelayProcess, key: &str| {
        let url = relay.url("/v1/flow-messages");
        runtime.block_on(post(
            &client,
            &url,
            &seed_message(),
            &[("idempotency-key", key)],
        ))
    };

    // Trusting the CA that signed Redis's certificate: the store works over TLS.
    let mut trusting = base.to_vec();
    trusting.push(("SSL_CERT_FILE", tls.ca.as_str()));
    let relay = RelayProcess::start(&trusting);
    let (status, _, body) = send(&relay, "over-tls");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        redis.cli(&["EXISTS", "jelou-relay:idem:anonymous\u{1f}over-tls"]),
        "1"
    );

    // Not trusting it: the certificate is refused, Redis counts as unreachable.
    let mut untrusting = base.to_vec();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    untrusting.push(("SSL_CERT_FILE", empty.to_str().unwrap()));
    let relay = RelayProcess::start(&untrusting);
    let (status, _, body) = send(&relay, "untrusted");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "overloaded");
    assert_eq!(
        redis.cli(&["EXISTS", "jelou-relay:idem:anonymous\u{1f}untrusted"]),
        "0"
    );
}

/// Four senders keep sending while Redis is stopped, then restarted. Every answer comes
/// within the request's deadline and is what the failure mode promises; Jelou receives
/// exactly the messages answered as sent; sending recovers without a restart.
async fn redis_stopped_in_the_middle_of_traffic(mode: FailureMode) {
    let upstream = Upstream::start(Duration::ZERO).await;
    let mut app = spawn_on_redis(redis_settings(&upstream.uri, mode)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (client, url) = (app.client.clone(), app.url("/v1/flow-messages"));
            let (stop, answers) = (stop.clone(), answers.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("s{sender}-{i}");
                    let started = Instant::now();
                    let (status, _, body) = post(
                        &client,
                        &url,
                        &message_to(sender * 10_000 + i),
                        &[("idempotency-key", &key), ("x-request-timeout-ms", "1500")],
                    )
                    .await;
                    answers
                        .lock()
                        .unwrap()
                        .push((Instant::now(), started.elapsed(), status, body));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(700)).await;
    app.redis.as_mut().unwrap().stop();
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    app.redis.as_mut().unwrap().restart();
    let restarted_at = Instant::now();
    wait_for_store(&app, "up").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }

    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let sent = answers
        .iter()
        .filter(|(_, _, status, _)| *status == 200)
        .count();
    for (_, elapsed, status, body) in answers.iter() {
        assert!(
            *elapsed < Duration::from_millis(2500),
            "answered within its deadline: {elapsed:?} {status} {body}"
        );
        match (mode, status) {
            (_, 200) => assert_eq!(body["status"], "sent"),
            (FailureMode::FailClosed, 503) => {
                assert_eq!(body["code"], "overloaded");
                assert_eq!(body["delivery"], "not_sent");
            }
            _ => panic!("{mode:?}: unexpected {status} {body}"),
        }
    }
    let during = |from: Instant, to: Instant| {
        answers
            .iter()
            .filter(move |(at, ..)| *at > from && *at < to)
            .map(|(_, _, status, _)| *status)
            .collect::<Vec<_>>()
    };
    // Well inside the outage: fail_open sends, fail_closed refuses.
    let outage = during(
        stopped_at + Duration::from_millis(300),
        restarted_at - Duration::from_millis(100),
    );
    assert!(!outage.is_empty());
    let expected = match mode {
        FailureMode::FailOpen => 200,
        FailureMode::FailClosed => 503,
    };
    assert!(
        outage.iter().all(|s| *s == expected),
        "{mode:?}: {outage:?}"
    );
    // After Redis is back: sending again, on Redis.
    let after = during(restarted_at + Duration::from_millis(600), Instant::now());
    assert!(
        !after.is_empty() && after.iter().all(|s| *s == 200),
        "{after:?}"
    );
    assert_eq!(readiness(&app).await["store"]["state"], "up");
    assert_eq!(
        upstream.calls(),
        sent,
        "Jelou got exactly the messages answered as sent"
    );
}

#[tokio::test]
async fn fail_open_through_a_redis_restart_under_traffic() {
    if redis_available() {
        redis_stopped_in_the_middle_of_traffic(FailureMode::FailOpen).await;
    }
}

#[tokio::test]
async fn fail_closed_through_a_redis_restart_under_traffic() {
    if redis_available() {
        redis_stopped_in_the_middle_of_traffic(FailureMode::FailClosed).await;
    }
}
