//! Two replicas sharing one Redis: one budget, one set of keys.

use super::*;

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
