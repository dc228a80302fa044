//! Unit tests of loading and validation.
use super::*;
use secrecy::SecretString;

#[test]
fn scrub_removes_the_secret_and_the_basic_pair_that_carries_it() {
    use base64::Engine;
    let credentials = Credentials::new("relay-client".into(), "s3cr3t".into());
    let pair = base64::engine::general_purpose::STANDARD.encode("relay-client:s3cr3t");
    assert_eq!(
        credentials.authorization().to_str().unwrap(),
        format!("Basic {pair}")
    );
    assert_eq!(
        credentials.scrub(&format!("bad s3cr3t in Basic {pair}.")),
        "bad [REDACTED] in Basic [REDACTED]."
    );
    assert!(!format!("{credentials:?}").contains(&pair));
}

fn settings() -> Settings {
    Settings::load(Path::new("config"), Environment::Local).expect("default config loads")
}

fn keys(errors: ConfigErrors) -> Vec<String> {
    errors.0.into_iter().map(|p| p.key).collect()
}

#[test]
fn local_defaults_are_valid_sandbox() {
    let config = settings().validate(Environment::Local).unwrap();
    assert_eq!(config.mode, UpstreamMode::Sandbox);
    assert!(config.bots.resolve(None).is_ok());
}

#[test]
fn production_rejects_sandbox_missing_credentials_and_plain_http() {
    let mut s = settings();
    s.upstream.base_url = "http://jelou.example".into();
    let problems = keys(s.validate(Environment::Production).unwrap_err());
    assert!(problems.contains(&"upstream.mode".to_string()));
    assert!(problems.contains(&"upstream.base_url".to_string()));
    s.upstream.mode = UpstreamMode::Jelou;
    let problems = keys(s.validate(Environment::Production).unwrap_err());
    assert!(problems.iter().any(|k| k.starts_with("bots.")));
}

#[test]
fn loopback_http_is_allowed_in_production() {
    let mut s = settings();
    s.upstream.mode = UpstreamMode::Jelou;
    s.upstream.base_url = "http://127.0.0.1:9999".into();
    s.upstream.client_id = Some("id".into());
    s.upstream.client_secret = Some(SecretString::from("secret"));
    s.auth.mode = AuthMode::None;
    s.asynchronous.enabled = false;
    assert!(s.validate(Environment::Production).is_ok());
}

#[test]
fn production_refuses_a_queue_in_memory_and_names_both_fixes() {
    let mut s = settings();
    s.upstream.mode = UpstreamMode::Jelou;
    s.upstream.base_url = "http://127.0.0.1:9999".into();
    s.upstream.client_id = Some("id".into());
    s.upstream.client_secret = Some(SecretString::from("secret"));
    s.auth.mode = AuthMode::None;
    s.asynchronous.enabled = true;
    let errors = s.validate(Environment::Production).unwrap_err();
    assert_eq!(keys(errors.clone()), ["async.enabled"]);
    let text = errors.to_string();
    assert!(
        text.contains("store.backend = \"redis\"") && text.contains("async.enabled = false"),
        "{text}"
    );
    // Local mode keeps the queue in the process (logged at exit).
    assert!(s.validate(Environment::Local).is_ok());
}

#[test]
fn the_default_expiry_must_fit_the_longest() {
    let mut s = settings();
    s.asynchronous.ttl_seconds = 90_000;
    assert_eq!(
        keys(s.validate(Environment::Local).unwrap_err()),
        ["async.ttl_seconds"]
    );
}

#[test]
fn alias_resolution_rules() {
    let mut s = settings();
    s.bots.insert(
        "soporte".into(),
        BotSettings {
            id: Some("B2".into()),
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            default: false,
            rate_per_second: None,
            burst: None,
        },
    );
    let registry = s.validate(Environment::Local).unwrap().bots;
    assert!(matches!(
        registry.resolve(None),
        Err(BotLookupError::Missing { .. })
    ));
    assert!(matches!(
        registry.resolve(Some("nope")),
        Err(BotLookupError::Unknown { .. })
    ));
    assert_eq!(registry.resolve(Some("soporte")).unwrap().id, "B2");
}

#[test]
fn hostile_bot_ids_are_refused() {
    let mut s = settings();
    for id in ["a/b", "..", "a?b", "a#b", "a b"] {
        s.bots.get_mut("ventas").unwrap().id = Some(id.into());
        assert_eq!(
            keys(s.validate(Environment::Local).unwrap_err()),
            vec!["bots.ventas.id".to_string()],
            "{id}"
        );
    }
}

#[test]
fn callback_urls_and_secrets_are_checked_and_never_echoed() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let caller = |url: Option<&str>, secret: Option<&str>| CallerSettings {
        key_sha256: Some("ab".repeat(32)),
        callback_url: url.map(str::to_owned),
        callback_secret: secret.map(SecretString::from),
        ..Default::default()
    };
    let mut s = settings();
    s.callers.insert(
        "orders".into(),
        caller(Some("http://127.0.0.1:9/hook"), Some(secret)),
    );
    let config = s.validate(Environment::Local).unwrap();
    assert!(config.callbacks.endpoints.contains_key("orders"));
    assert!(
        !config.summary().contains("MfKQ9r8G"),
        "{}",
        config.summary()
    );
    assert!(!format!("{config:?}").contains("MfKQ9r8G"));

    let cases = [
        (
            caller(Some("http://127.0.0.1:9/hook"), None),
            "callers.orders.callback_secret",
        ),
        (caller(None, Some(secret)), "callers.orders.callback_url"),
        (
            caller(Some("ftp://x/hook"), Some(secret)),
            "callers.orders.callback_url",
        ),
        (
            caller(Some("https://x/hook"), Some("whsec_short")),
            "callers.orders.callback_secret",
        ),
        (
            caller(Some("https://x/hook"), Some("not-whsec")),
            "callers.orders.callback_secret",
        ),
    ];
    for (caller, key) in cases {
        let mut s = settings();
        s.callers.insert("orders".into(), caller);
        assert_eq!(keys(s.validate(Environment::Local).unwrap_err()), [key]);
    }
    // Production: https, or http to a loopback host only.
    let mut s = settings();
    s.upstream.mode = UpstreamMode::Jelou;
    s.upstream.base_url = "http://127.0.0.1:9999".into();
    s.upstream.client_id = Some("id".into());
    s.upstream.client_secret = Some(SecretString::from("secret"));
    s.asynchronous.enabled = true;
    s.store.backend = StoreBackend::Redis;
    s.store.redis_url = Some(SecretString::from("redis://127.0.0.1:6379/0"));
    s.callers.insert(
        "orders".into(),
        caller(Some("http://orders.internal/hook"), Some(secret)),
    );
    assert_eq!(
        keys(s.validate(Environment::Production).unwrap_err()),
        ["callers.orders.callback_url"]
    );
    // Callbacks tell of queued messages: without the queue they are a mistake.
    let mut s = settings();
    s.asynchronous.enabled = false;
    s.callers.insert(
        "orders".into(),
        caller(Some("https://x/hook"), Some(secret)),
    );
    assert_eq!(
        keys(s.validate(Environment::Local).unwrap_err()),
        ["async.enabled"]
    );
}
