//! What a Redis stall leaves behind, settled when Redis is back: a claim that landed after
//! its request was answered `not_sent` is taken back, and an answer a replica kept to
//! itself reaches the others. Two relays share one redis-server. An acceptance whose
//! enqueue went out unanswered is `unknown` and sent once; one stalled before its write
//! is `not_sent` and queues nothing.

use super::*;
use jelou_relay::config::{FailureMode, Settings};

/// A relay's settings on `redis`, in failure `mode`, sending to `upstream`.
fn on_redis(upstream: &Upstream, redis: &RedisServer, mode: FailureMode) -> Settings {
    let mut settings = settings_for(&upstream.uri);
    settings.store.failure_mode = mode;
    use_redis(&mut settings, redis);
    settings
}

/// Two relays on one fresh redis-server, both connected.
async fn two_replicas(upstream: &Upstream, mode: FailureMode) -> (TestApp, TestApp) {
    let redis = RedisServer::start();
    let settings = on_redis(upstream, &redis, mode);
    let first = spawn_with(settings.clone()).await;
    let mut second = spawn_with(settings).await;
    // Keyed, so that both have loaded the claim script: a claim sent during the stall is
    // then carried out when Redis resumes, after its caller gave up.
    for (app, i) in [(&first, 0), (&second, 1)] {
        let key = format!("warm-{i}");
        let response = app
            .send_with(&message_to(i), &[("idempotency-key", &key)])
            .await;
        assert_eq!(response.status(), 200);
    }
    second.redis = Some(redis);
    (first, second)
}

/// Stalls Redis for longer than `store.timeout_ms` while `during` runs, then resumes it.
async fn stalled<T>(redis: &RedisServer, during: impl std::future::Future<Output = T>) -> T {
    redis.pause();
    let result = during.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.resume();
    result
}

/// Waits until `app` sees the store up again (its pinger runs every 500 ms).
async fn until_store_up(app: &TestApp) {
    let started = Instant::now();
    loop {
        let ready: Value = app
            .client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["store"]["state"] == "up" {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Retries `key` on `app` until it is answered other than 409 (the claim still being
/// settled), for at most 10 s: far less than the claim's 12 s lease.
async fn retry_until_settled(app: &TestApp, message: &Value, key: &str) -> reqwest::Response {
    let started = Instant::now();
    loop {
        let response = app.send_with(message, &[("idempotency-key", key)]).await;
        if response.status() != 409 {
            return response;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the key is still held by a claim"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn fail_closed_a_stalled_claim_answered_not_sent_leaves_its_key_free() {
    if !redis_available() {
        return;
    }
    let upstream = Upstream::start(Duration::ZERO).await;
    let (first, second) = two_replicas(&upstream, FailureMode::FailClosed).await;
    let redis = second.redis.as_ref().unwrap();
    let message = message_to(2);

    let refused = stalled(
        redis,
        first.send_with(&message, &[("idempotency-key", "stalled-1")]),
    )
    .await;
    let problem = assert_problem(refused, 503, "overloaded").await;
    assert_eq!(problem["delivery"], "not_sent");

    // Once Redis is back, the retry on the other replica sends once: never 409 for
    // long, never send_interrupted for a message that was not sent.
    until_store_up(&second).await;
    let retried = retry_until_settled(&second, &message, "stalled-1").await;
    assert_eq!(retried.status(), 200);
    assert!(retried.headers().get("idempotent-replayed").is_none());
    let body: Value = retried.json().await.unwrap();
    assert_eq!(body["status"], "sent");
    assert_eq!(upstream.calls(), 3, "the two warm-up sends and this one");

    let replayed = first
        .send_with(&message, &[("idempotency-key", "stalled-1")])
        .await;
    assert_eq!(replayed.status(), 200);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test]
async fn fail_open_an_answer_kept_during_a_stall_reaches_the_other_replicas() {
    if !redis_available() {
        return;
    }
    let upstream = Upstream::start(Duration::ZERO).await;
    let (first, second) = two_replicas(&upstream, FailureMode::FailOpen).await;
    let redis = second.redis.as_ref().unwrap();
    let message = message_to(2);

    let sent = stalled(
        redis,
        first.send_with(&message, &[("idempotency-key", "stalled-2")]),
    )
    .await;
    assert_eq!(sent.status(), 200, "fail_open sends while Redis stalls");
    assert_eq!(upstream.calls(), 3);

    // Once Redis is back, the other replica replays the answer.
    until_store_up(&second).await;
    let replayed = retry_until_settled(&second, &message, "stalled-2").await;
    assert_eq!(replayed.status(), 200, "never send_interrupted");
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    let body: Value = replayed.json().await.unwrap();
    assert_eq!(body["status"], "sent");
    assert_eq!(upstream.calls(), 3, "Jelou is not called again");
}

#[tokio::test]
async fn a_batch_a_stalled_queue_took_is_answered_unknown_and_sent_once() {
    if !redis_available() {
        return;
    }
    let upstream = Upstream::start(Duration::ZERO).await;
    let redis = RedisServer::start();
    let settings = on_redis(&upstream, &redis, FailureMode::FailClosed);
    let app = spawn_with(settings).await;
    let url = app.url("/v1/flow-messages/batch");
    let batch = |messages: Vec<Value>| json!({ "messages": messages });
    // Warm: the queue's scripts are loaded, so the stalled call is the enqueue itself.
    let (status, _, warm) = post(&app.client, &url, &batch(vec![message_to(0)]), &[]).await;
    assert_eq!(status, 202, "{warm}");
    settled(&app, warm["items"][0]["id"].as_str().unwrap(), "sent").await;

    // Without a key and paced by the worker, a batch's first call to Redis is the
    // enqueue: it goes out, and Redis, stopped, does not answer within store.timeout_ms.
    let messages = batch(vec![message_to(1), message_to(2)]);
    let (status, _, problem) = stalled(&redis, post(&app.client, &url, &messages, &[])).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "overloaded");
    assert_eq!(
        problem["delivery"], "unknown",
        "the batch may be queued: {problem}"
    );
    assert_eq!(problem["retryable"], false);
    let items = problem["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items.iter().all(|item| item["status"] == "unknown"),
        "{problem}"
    );

    // Redis carries the enqueue out when it resumes: each message is sent, once.
    until_store_up(&app).await;
    for item in items {
        settled(&app, item["id"].as_str().unwrap(), "sent").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.per_path().len(), 3, "{:?}", upstream.per_path());
    assert_eq!(upstream.calls(), 3, "nothing is sent twice");
}

/// A TCP proxy in front of Redis that loses one answer: once a request carrying
/// `marker` has passed on to Redis (which carries it out), nothing more comes back on
/// that connection. Later connections pass everything.
async fn answer_losing_proxy(redis_port: u16, marker: &'static [u8]) -> u16 {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let armed = Arc::new(AtomicBool::new(true));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
                .await
                .unwrap();
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            let losing = Arc::new(AtomicBool::new(false));
            let (armed, lose) = (armed.clone(), losing.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(n) = from_client.read(&mut buffer).await {
                    let chunk = &buffer[..n];
                    if n == 0 {
                        break;
                    }
                    if chunk.windows(marker.len()).any(|w| w == marker)
                        && armed.swap(false, Ordering::SeqCst)
                    {
                        lose.store(true, Ordering::SeqCst);
                    }
                    if to_server.write_all(chunk).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(n) = from_server.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    if !losing.load(Ordering::SeqCst)
                        && to_client.write_all(&buffer[..n]).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_message_whose_enqueue_answer_was_lost_is_unknown_and_its_key_used_up() {
    if !redis_available() {
        return;
    }
    let upstream = Upstream::start(Duration::ZERO).await;
    let redis = RedisServer::start();
    let mut settings = on_redis(&upstream, &redis, FailureMode::FailClosed);
    // The recipient's digits travel only in the queued record: the enqueue is the call
    // whose answer is lost.
    let proxy = answer_losing_proxy(redis.port, b"593987600001").await;
    settings.store.redis_url = Some(format!("redis://127.0.0.1:{proxy}/0").into());
    let app = spawn_with(settings).await;
    let queue = |i: usize, key: &'static str| {
        let (client, url) = (app.client.clone(), app.url("/v1/flow-messages"));
        async move {
            let headers = [("prefer", "respond-async"), ("idempotency-key", key)];
            post(&client, &url, &message_to(i), &headers).await
        }
    };
    let (status, _, warm) = queue(0, "warm").await;
    assert_eq!(status, 202, "{warm}");
    settled(&app, warm["id"].as_str().unwrap(), "sent").await;

    let (status, headers, problem) = queue(1, "lost").await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "overloaded");
    assert_eq!(problem["delivery"], "unknown", "{problem}");
    assert!(headers.get("retry-after").is_none());
    let id = problem["id"]
        .as_str()
        .expect("the message's id")
        .to_string();
    assert!(problem["detail"].as_str().unwrap().contains(&id));

    // Redis queued it: it is sent, once.
    until_store_up(&app).await;
    settled(&app, &id, "sent").await;

    // The key is used up: a retry gets the same answer and queues nothing.
    let (status, headers, replayed) = queue(1, "lost").await;
    assert_eq!(status, 503, "{replayed}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replayed["id"], id.as_str());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.calls(), 2, "nothing is sent twice");
}

/// The queue's stream group is made before the first enqueue. When that call goes out
/// and is not answered, the messages never went: not_sent, and truly nothing queued.
#[tokio::test]
async fn a_batch_stalled_before_its_write_is_not_sent_and_nothing_is_queued() {
    if !redis_available() {
        return;
    }
    let upstream = Upstream::start(Duration::ZERO).await;
    let redis = RedisServer::start();
    let settings = on_redis(&upstream, &redis, FailureMode::FailClosed);
    // Writes wait and reads are answered: the store stays up, but the queue's stream
    // group (a write, made once before the first enqueue) cannot be made.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "30000", "WRITE"]), "OK");
    let app = spawn_with(settings).await;
    // A batch is paced by the worker, not at acceptance: its first call is the enqueue.
    let url = app.url("/v1/flow-messages/batch");
    let batch = json!({ "messages": [message_to(1)] });

    // The worker's own attempts at the group time out too and mark the store down for
    // a moment, when an acceptance is refused at once: try until the acceptance's own
    // call went out and waited out store.timeout_ms (200 ms).
    let started = Instant::now();
    let (status, headers, problem) = loop {
        until_store_up(&app).await;
        // A call refused at once returns well within 200 ms; a slow one on a loaded
        // machine only ends the loop early, and then the answer is not_sent all the same.
        let sent = Instant::now();
        let answer = post(&app.client, &url, &batch, &[]).await;
        if answer.0 != 503 || sent.elapsed() >= Duration::from_millis(200) {
            break answer;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{}", answer.2);
    };
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "overloaded");
    assert_eq!(
        problem["delivery"], "not_sent",
        "the group went out, the message did not: {problem}"
    );
    assert_eq!(problem["retryable"], true, "{problem}");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    assert!(problem.get("id").is_none(), "{problem}");

    // Redis makes the group when the pause ends; nothing was queued, so nothing is sent
    // until the message is sent again.
    assert_eq!(redis.cli(&["CLIENT", "UNPAUSE"]), "OK");
    until_store_up(&app).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.calls(), 0, "the refused acceptance queued nothing");
    let (status, _, accepted) = post(&app.client, &url, &batch, &[]).await;
    assert_eq!(status, 202, "{accepted}");
    settled(&app, accepted["items"][0]["id"].as_str().unwrap(), "sent").await;
    assert_eq!(upstream.calls(), 1);
}
