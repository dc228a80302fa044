//! The stack's floor: what axum, hyper and reqwest cost on their own.
//!
//! A pass-through proxy built from the relay's required libraries and nothing else: it does
//! what the benchmark's nginx does (forward the request to the upstream with the
//! `Authorization` header injected, hand back status and body) and none of what the relay
//! adds (no validation, no caller key, no rate limits, no logs, no metrics, no request ids).
//! It runs the way the relay runs: one single-threaded tokio runtime per CPU, each with its
//! own listener (`SO_REUSEPORT`) and its own reqwest client, so no task is woken across
//! threads; the same allocator (jemalloc) and the same release profile.
//!
//! `benches/bench.py` measures it beside direct, nginx and the relay: the gap between the
//! floor and nginx is what the libraries cost, the gap between the relay and the floor is
//! what the relay's own work costs.
//!
//! ```text
//! cargo build --release --example floor
//! target/release/examples/floor --port 19086 --upstream http://127.0.0.1:19081 \
//!     --authorization "Basic ..."
//! target/release/examples/floor --port 19087 --local
//! ```
//!
//! With `--local` it answers `{}` itself instead of calling an upstream (so it needs neither
//! `--upstream` nor `--authorization`): what axum and hyper spend and hold per connection,
//! with reqwest's client built but unused (a relay cannot do without one).

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The largest request body read (the relay's own limit is far below it).
const MAX_BODY: usize = 1 << 20;

#[derive(Clone)]
struct Upstream {
    client: reqwest::Client,
    base: String,
    authorization: HeaderValue,
}

async fn forward(State(upstream): State<Upstream>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outbound = upstream
        .client
        .request(parts.method.clone(), format!("{}{path}", upstream.base))
        .header(header::AUTHORIZATION, upstream.authorization.clone())
        .body(body);
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        outbound = outbound.header(header::CONTENT_TYPE, content_type.clone());
    }
    match outbound.send().await {
        Ok(answer) => {
            let status = answer.status();
            let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
            let body: Bytes = answer.bytes().await.unwrap_or_default();
            let mut response = (status, body).into_response();
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type);
            }
            response
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

struct Args {
    port: u16,
    /// The upstream's base URL and the `Authorization` value to inject; `None` with `--local`.
    upstream: Option<(String, String)>,
    threads: usize,
}

fn args() -> Result<Args, String> {
    let mut port = None;
    let mut upstream = None;
    let mut authorization = None;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut local = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--local" {
            local = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => port = Some(value.parse().map_err(|_| "--port: not a port")?),
            "--upstream" => upstream = Some(value.trim_end_matches('/').to_owned()),
            "--authorization" => authorization = Some(value),
            "--threads" => threads = value.parse().map_err(|_| "--threads: not a number")?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let upstream = if local {
        None
    } else {
        Some((
            upstream.ok_or("--upstream is required (or --local)")?,
            authorization.ok_or("--authorization is required (or --local)")?,
        ))
    };
    Ok(Args {
        port: port.ok_or("--port is required")?,
        upstream,
        threads: threads.max(1),
    })
}

/// `--local`: reads the request and answers at once, as the simulator would, with no
/// upstream call.
async fn answer(request: Request) -> Response {
    match axum::body::to_bytes(request.into_body(), MAX_BODY).await {
        Ok(_) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            "{}",
        )
            .into_response(),
        Err(_) => StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    }
}

fn serve(address: SocketAddr, app: Router) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.set_nodelay(true)?;
        socket.bind(address)?;
        let listener = socket.listen(4096)?;
        axum::serve(listener, app).await
    })
}

fn main() {
    let args = match args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("floor: {message}");
            std::process::exit(2);
        }
    };
    let upstream = match args.upstream {
        None => None,
        Some((base, authorization)) => match HeaderValue::from_str(&authorization) {
            Ok(mut value) => {
                value.set_sensitive(true);
                Some((base, value))
            }
            Err(_) => {
                eprintln!("floor: --authorization is not a valid header value");
                std::process::exit(2);
            }
        },
    };
    let address = SocketAddr::from(([127, 0, 0, 1], args.port));
    let threads: Vec<_> = (0..args.threads)
        .map(|_| {
            // Each thread its own client, so its pool of upstream connections stays on it.
            // With `--local` the client is built all the same and kept unused: no relay runs
            // without one, so the memory floor includes it.
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client with the default TLS roots");
            let (app, unused) = match &upstream {
                None => (Router::new().fallback(answer), Some(client)),
                Some((base, authorization)) => (
                    Router::new().fallback(forward).with_state(Upstream {
                        client,
                        base: base.clone(),
                        authorization: authorization.clone(),
                    }),
                    None,
                ),
            };
            std::thread::spawn(move || {
                let _client = unused;
                serve(address, app)
            })
        })
        .collect();
    for thread in threads {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!("floor: {error}");
                std::process::exit(1);
            }
            Err(_) => std::process::exit(1),
        }
    }
}
