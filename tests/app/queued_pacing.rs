//! Asynchronous sends on both stores, continued: cancellation, pacing by the bot and
//! recipient limits without head-of-line blocking, the queue's bound, and what the
//! queue does with Redis (refused acceptance while it is down, its keys).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::queued::{ASYNC, calls, message_to, queue, settings, settled, status};
use jelou_relay::config::{FailureMode, Settings};
use serde_json::Value;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// One message per recipient and per six seconds, none at once: a second message to the
/// same recipient waits, queued.
fn one_per_recipient(settings: &mut Settings) {
    settings.recipients.rate_per_second = 0.01;
    settings.recipients.burst = 1;
}

async fn a_queued_message_is_canceled_and_never_sent(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let mut settings = settings(&jelou);
    one_per_recipient(&mut settings);
    let app = spawn_on(backend, settings).await;
    let first = queue(&app, &seed_message(), &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    settled(&app, &first, "sent").await;
    let second = queue(&app, &seed_message(), &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&app, &second).await.1["status"], "queued");

    let url = app.url(&format!("/v1/flow-messages/{second}"));
    let response = app.client.delete(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let canceled: Value = response.json().await.unwrap();
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(canceled["delivery"], "not_sent");
    assert!(canceled.get("error").is_none(), "{canceled}");
    assert_eq!(status(&app, &second).await.1["status"], "canceled");

    // Final now, and so is a sent one: 409.
    for id in [&second, &first] {
        let url = app.url(&format!("/v1/flow-messages/{id}"));
        let response = app.client.delete(&url).send().await.unwrap();
        assert_problem(response, 409, "not_cancelable").await;
    }
    assert_eq!(calls(&jelou).await, 1);
}

async fn a_backlog_for_one_recipient_never_delays_another(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let mut settings = settings(&jelou);
    one_per_recipient(&mut settings);
    let app = spawn_on(backend, settings).await;
    let mut backlog = Vec::new();
    for _ in 0..200 {
        backlog.push(
            queue(&app, &seed_message(), &[]).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let other = queue(&app, &message_to("+593 99 000 1111"), &[]).await;
    let sent = settled(&app, other["id"].as_str().unwrap(), "sent").await;
    assert_eq!(sent["attempts"], 1);
    // The backlog is still there: one of it was sent, the rest wait for the pair limit.
    let mut queued = 0;
    for id in &backlog {
        if status(&app, id).await.1["status"] == "queued" {
            queued += 1;
        }
    }
    assert_eq!(queued, 199);
    assert_eq!(calls(&jelou).await, 2);
}

/// Stamps the moment each request reaches the Jelou stand-in.
struct Arrivals(Arc<Mutex<Vec<Instant>>>);

impl Respond for Arrivals {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.0.lock().unwrap().push(Instant::now());
        ResponseTemplate::new(200).set_body_json(serde_json::json!({}))
    }
}

/// A Jelou that records when each message arrives, and the relay in front of it with its
/// bot at 20 messages a second and a burst of 1.
async fn app_with_bot_at_20_per_second(
    backend: Backend,
) -> (MockServer, TestApp, Arc<Mutex<Vec<Instant>>>) {
    let jelou = MockServer::start().await;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    Mock::given(any())
        .respond_with(Arrivals(arrivals.clone()))
        .mount(&jelou)
        .await;
    let mut settings = settings(&jelou);
    let bot = settings.bots.get_mut("ventas").unwrap();
    bot.rate_per_second = Some(20.0);
    bot.burst = Some(1);
    let app = spawn_on(backend, settings).await;
    (jelou, app, arrivals)
}

/// 10 messages at 20/s with a burst of 1 leave at least 9 intervals of 50 ms apart
/// (450 ms); unpaced they would all arrive within a few milliseconds. The bound leaves
/// room for one late first arrival on a loaded machine.
fn assert_paced_at_20_per_second(arrivals: &Mutex<Vec<Instant>>) {
    let mut arrivals = arrivals.lock().unwrap().clone();
    arrivals.sort_unstable();
    assert_eq!(arrivals.len(), 10);
    let span = arrivals[9].duration_since(arrivals[0]);
    assert!(span >= Duration::from_millis(350), "sent over {span:?}");
}

async fn the_bot_limit_paces_the_queue_instead_of_refusing(backend: Backend) {
    let (_jelou, app, arrivals) = app_with_bot_at_20_per_second(backend).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let to = format!("+59399000{i:04}");
        ids.push(
            queue(&app, &message_to(&to), &[]).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids {
        settled(&app, id, "sent").await;
    }
    assert_paced_at_20_per_second(&arrivals);
}

/// Acceptances that arrive together reserve their cells together, one after another:
/// the bot's schedule is the same as for acceptances made in turn.
async fn concurrent_acceptances_share_one_schedule(backend: Backend) {
    let (_jelou, app, arrivals) = app_with_bot_at_20_per_second(backend).await;
    let messages: Vec<Value> = (0..10)
        .map(|i| message_to(&format!("+59399001{i:04}")))
        .collect();
    let queued = futures_util::future::join_all(messages.iter().map(|m| queue(&app, m, &[]))).await;
    for answer in &queued {
        settled(&app, answer["id"].as_str().unwrap(), "sent").await;
    }
    assert_paced_at_20_per_second(&arrivals);
}

async fn a_message_that_cannot_leave_before_it_expires_spends_no_recipient_cell(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let mut settings = settings(&jelou);
    one_per_recipient(&mut settings);
    let bot = settings.bots.get_mut("ventas").unwrap();
    bot.rate_per_second = Some(0.5);
    bot.burst = Some(1);
    let app = spawn_on(backend, settings).await;
    let first = queue(&app, &message_to("+593 99 000 1111"), &[]).await;
    settled(&app, first["id"].as_str().unwrap(), "sent").await;
    // The bot's next cell is two seconds away, after this message's expiry.
    let short = [("x-message-ttl-seconds", "1")];
    let late = queue(&app, &message_to("+593 99 000 2222"), &short).await;
    let expired = settled(&app, late["id"].as_str().unwrap(), "expired").await;
    assert_eq!(expired["delivery"], "not_sent");
    // Its recipient's one cell (the next comes in 100 s) was not spent on it: the next
    // message to that recipient leaves with the bot's next cell.
    let next = queue(&app, &message_to("+593 99 000 2222"), &[]).await;
    settled(&app, next["id"].as_str().unwrap(), "sent").await;
    assert_eq!(calls(&jelou).await, 2);
}

async fn a_full_queue_is_503_overloaded_with_retry_after(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let mut settings = settings(&jelou);
    one_per_recipient(&mut settings);
    settings.asynchronous.max_queued = 2;
    let app = spawn_on(backend, settings).await;
    let first = queue(&app, &seed_message(), &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    settled(&app, &first, "sent").await;
    queue(&app, &seed_message(), &[]).await;
    queue(&app, &seed_message(), &[]).await;
    let response = app.send_with(&seed_message(), &[ASYNC]).await;
    assert_eq!(response.headers().get("retry-after").unwrap(), "1");
    let problem = assert_problem(response, 503, "overloaded").await;
    assert_eq!(problem["delivery"], "not_sent");
}

/// Acceptances that arrive together are written together, yet each is judged alone:
/// exactly the room left is taken, and every one refused is told nothing was queued.
async fn concurrent_acceptances_past_max_queued_take_exactly_the_room_left(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let mut settings = settings(&jelou);
    one_per_recipient(&mut settings);
    settings.asynchronous.max_queued = 5;
    let app = spawn_on(backend, settings).await;
    let first = queue(&app, &seed_message(), &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    settled(&app, &first, "sent").await;
    // The recipient's next cell is minutes away: every message accepted now waits.
    let message = seed_message();
    let sends = (0..20).map(|_| app.send_with(&message, &[ASYNC]));
    let mut accepted = Vec::new();
    let mut refused = 0;
    for response in futures_util::future::join_all(sends).await {
        match response.status().as_u16() {
            202 => {
                let body: Value = response.json().await.unwrap();
                accepted.push(body["id"].as_str().unwrap().to_string());
            }
            _ => {
                let problem = assert_problem(response, 503, "overloaded").await;
                assert_eq!(problem["delivery"], "not_sent");
                refused += 1;
            }
        }
    }
    assert_eq!((accepted.len(), refused), (5, 15));
    for id in &accepted {
        assert_eq!(status(&app, id).await.1["status"], "queued", "{id}");
    }
    assert_eq!(calls(&jelou).await, 1);
}

#[tokio::test]
async fn an_unreachable_store_refuses_acceptance_in_both_failure_modes() {
    if !redis_available() {
        return;
    }
    for mode in [FailureMode::FailOpen, FailureMode::FailClosed] {
        let jelou = MockServer::start().await;
        accept_all(&jelou).await;
        let mut settings = settings(&jelou);
        settings.store.failure_mode = mode;
        let mut app = spawn_on(Backend::Redis, settings).await;
        app.redis.as_mut().unwrap().stop();
        let response = app.send_with(&seed_message(), &[ASYNC]).await;
        assert_eq!(response.headers().get("retry-after").unwrap(), "1");
        let problem = assert_problem(response, 503, "overloaded").await;
        assert_eq!(problem["delivery"], "not_sent", "{mode:?}");
        assert_eq!(calls(&jelou).await, 0, "{mode:?}");
    }
}

#[tokio::test]
async fn in_redis_the_queue_lives_under_the_prefix_and_a_final_status_expires() {
    if !redis_available() {
        return;
    }
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let mut settings = settings(&jelou);
    settings.store.key_prefix = "q-test:".into();
    settings.asynchronous.retention_seconds = 120;
    let app = spawn_on(Backend::Redis, settings).await;
    let id = queue(&app, &seed_message(), &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    settled(&app, &id, "sent").await;
    let redis = app.redis.as_ref().unwrap();
    let keys: Vec<String> = redis
        .cli(&["--scan", "--pattern", "*"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(keys.iter().all(|k| k.starts_with("q-test:")), "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains("987654321")), "{keys:?}");
    let record = format!("q-test:msg:{id}");
    assert!(keys.contains(&record), "{keys:?}");
    let ttl: i64 = redis.cli(&["TTL", &record]).parse().unwrap();
    assert!((100..=120).contains(&ttl), "TTL {ttl}");
    // Nothing open is left behind: the sets are empty, and the next sweeps trim the
    // finished entries off the streams.
    let until = Instant::now() + Duration::from_secs(20);
    for stream in ["stream", "due"] {
        let key = format!("q-test:queue:{stream}");
        while redis.cli(&["XLEN", &key]) != "0" {
            assert!(Instant::now() < until, "{key} keeps finished entries");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for set in ["open", "waiting", "leases"] {
        assert_eq!(
            redis.cli(&["ZCARD", &format!("q-test:queue:{set}")]),
            "0",
            "{set}"
        );
    }
}

on_both_backends!(
    a_queued_message_is_canceled_and_never_sent,
    a_backlog_for_one_recipient_never_delays_another,
    the_bot_limit_paces_the_queue_instead_of_refusing,
    concurrent_acceptances_share_one_schedule,
    a_message_that_cannot_leave_before_it_expires_spends_no_recipient_cell,
    a_full_queue_is_503_overloaded_with_retry_after,
    concurrent_acceptances_past_max_queued_take_exactly_the_room_left,
);
