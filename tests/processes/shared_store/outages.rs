//! What Redis holds, and what each failure mode does while Redis is down, paused, and back.

use super::*;
use jelou_relay::config::{FailureMode, Settings};

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
    // The synchronous path's keys only (the queue's are in tests/app/queued.rs).
    settings.asynchronous.enabled = false;
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
        // Well before the 10 s deadline, with room for a loaded machine.
        assert!(started.elapsed() < Duration::from_secs(6));
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
            // The store's timeout is 5 s; the room above 800 ms is for a loaded machine.
            elapsed < Duration::from_millis(4000),
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
        // store is marked down, later requests do not wait for it at all. Well before
        // the 10 s deadline, with room for a loaded machine.
        assert!(started.elapsed() < Duration::from_secs(6));
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
            // The deadline is 1.5 s; the room above it is for a loaded machine.
            *elapsed < Duration::from_millis(4000),
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
