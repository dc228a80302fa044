//! Micro-benchmarks of the relay's own work on a message, without any I/O: strict JSON
//! parsing, validation, and building the exact request Jelou receives.
//!
//!     cargo bench --bench pipeline

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jelou_relay::config::{Environment, Settings};
use jelou_relay::domain::FlowMessage;
use jelou_relay::domain::strict_json::parse_object;
use jelou_relay::jelou::{FlowRequest, JelouUrls};
use url::Url;

const SEED: &[u8] = br#"{"bot":"ventas","to":"+593 98 765 4321","title":"Hola","text":"Completa este flujo para comenzar","caption":"Jelou","flow":{"name":"flujo_de_bienvenida","cta":"Iniciar Flujo","screen":"RECOMMEND"}}"#;

/// A message with every optional member and some nesting in `data` and `context`.
const FULL: &[u8] = br#"{"bot":"ventas","to":"+593 98 765 4321","title":"Hola Ana","text":"Completa este flujo para comenzar tu solicitud de credito. Te tomara menos de dos minutos.","caption":"Jelou","type":"flow","flow":{"name":"flujo_de_bienvenida","cta":"Iniciar Flujo","screen":"RECOMMEND","token":"tok-7f3a9c","mode":"published","action":"navigate","data":{"customer":{"name":"Ana","segment":"gold","limits":[100,250,500]},"offer_id":"OF-2291"}},"context":{"order_id":"A-1029","channel":"web","tags":["credit","priority"]}}"#;

fn pipeline(c: &mut Criterion) {
    let settings = Settings::load(Path::new("config"), Environment::Local).expect("config loads");
    let config = settings
        .validate(Environment::Local)
        .expect("config is valid");
    let urls = JelouUrls::new(
        Url::parse("https://api.jelou.ai").unwrap(),
        config.bots.bots().map(|bot| bot.id.as_str()),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();

    let mut group = c.benchmark_group("message");
    for (name, body) in [("seed", SEED), ("full", FULL)] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| parse_object(black_box(body), 32).unwrap())
        });
        group.bench_function(format!("parse+validate/{name}"), |b| {
            b.iter(|| {
                let object = parse_object(black_box(body), 32).unwrap();
                FlowMessage::parse(object).unwrap()
            })
        });
        group.bench_function(format!("parse+validate+build/{name}"), |b| {
            b.iter(|| {
                let object = parse_object(black_box(body), 32).unwrap();
                let alias = object
                    .get("bot")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                let message = FlowMessage::parse(object).unwrap();
                let bot = config.bots.resolve(alias.as_deref()).unwrap();
                FlowRequest::build(&urls, bot, &message, "req-1".into(), None)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
