//! What a Redis stall leaves behind, settled when Redis is back: a claim that landed after
//! its request was answered `not_sent` is taken back, and an answer a replica kept to
//! itself reaches the others. Two relays share one redis-server.

use super::*;
use jelou_relay::config::FailureMode;

/// Two relays on one fresh redis-server, both connected.
async fn two_replicas(upstream: &Upstream, mode: FailureMode) -> (TestApp, TestApp) {
    let redis = RedisServer::start();
    let mut settings = settings_for(&upstream.uri);
    settings.store.failure_mode = mode;
    use_redis(&mut settings, &redis);
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
