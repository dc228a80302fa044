//! The `jelou-relay` command: serve (the default), check-config, openapi.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jelou_relay::app::{Application, shutdown_signal};
use jelou_relay::config::{
    self, Callers, Environment, LogFormat, LogSettings, RelayConfig, Settings, StoreConfig,
    UpstreamMode,
};
use jelou_relay::jelou::simulator::{self, Scripted, SimulatorOptions};
use jelou_relay::{api, telemetry};

#[derive(Parser)]
#[command(
    name = "jelou-relay",
    version,
    about = "Send WhatsApp Flow messages through Jelou"
)]
struct Cli {
    /// Folder holding default.toml and {APP_ENVIRONMENT}.toml [default: $JELOU_RELAY_CONFIG_DIR or ./config]
    #[arg(long, global = true)]
    config_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve,
    /// Load and check the configuration, print a summary without secrets, and exit.
    CheckConfig,
    /// Print the OpenAPI document.
    Openapi,
    /// Probe /readyz on this machine; exit 0 when ready (the container's HEALTHCHECK).
    Healthcheck {
        /// Port to probe [default: server.port from the configuration]
        #[arg(long)]
        port: Option<u16>,
    },
    /// Mint a caller key: the key on the first line (give it to the caller), and the
    /// `key_sha256 = "..."` line for callers.<name> in the relay's configuration on the second.
    NewKey,
    /// Read a caller key from stdin and print its SHA-256 for callers.<name>.key_sha256.
    HashKey,
    /// Mint a callback signing secret (Standard Webhooks: `whsec_` + base64) for
    /// callers.<name>.callback_secret; the caller verifies callbacks with the same secret.
    NewCallbackSecret,
    /// Serve a Jelou stand-in (flow_message API) with injected latency and faults.
    Simulate(SimulateArgs),
}

#[derive(clap::Args)]
struct SimulateArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8081)]
    port: u16,
    /// Require these Basic credentials (with a secret); any are accepted otherwise.
    #[arg(long)]
    client_id: Option<String>,
    /// The secret, inline. Prefer --client-secret-file or SIMULATOR_CLIENT_SECRET: a
    /// command line is shown by `ps` and echoed by `cargo run`.
    #[arg(
        long,
        requires = "client_id",
        env = "SIMULATOR_CLIENT_SECRET",
        hide_env_values = true,
        conflicts_with = "client_secret_file"
    )]
    client_secret: Option<String>,
    /// A file holding the secret (a trailing newline is ignored).
    #[arg(long, requires = "client_id")]
    client_secret_file: Option<PathBuf>,
    /// Fixed delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Answers for the first requests, in order, e.g. 503,503,200 or 200,reset,500.
    #[arg(long, value_delimiter = ',')]
    statuses: Vec<Scripted>,
    /// Share of later requests (0.0 to 1.0) answered with --failure-status.
    #[arg(long, default_value_t = 0.0)]
    failure_ratio: f64,
    #[arg(long, default_value_t = 500)]
    failure_status: u16,
    /// Retry-After sent with 429 and 503 answers (seconds or an HTTP date).
    #[arg(long)]
    retry_after: Option<String>,
}

#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = cli.config_dir.unwrap_or_else(config::default_config_dir);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Openapi => {
            println!("{}", api::openapi::document_json());
            ExitCode::SUCCESS
        }
        Command::Simulate(args) => simulate(args),
        Command::HashKey => hash_key(),
        Command::NewCallbackSecret => match jelou_relay::callbacks::new_secret() {
            Ok(secret) => {
                println!("{secret}");
                ExitCode::SUCCESS
            }
            Err(message) => fail(&message),
        },
        Command::NewKey => match api::auth::new_key() {
            Ok(key) => {
                println!("{key}");
                println!("key_sha256 = \"{}\"", api::auth::hash_key(key.as_bytes()));
                ExitCode::SUCCESS
            }
            Err(message) => fail(&message),
        },
        Command::Healthcheck { port } => healthcheck(&dir, port),
        Command::CheckConfig => match load(&dir) {
            Ok((config, _)) => {
                println!("{}", config.summary());
                ExitCode::SUCCESS
            }
            Err(message) => fail(&message),
        },
        Command::Serve => match load(&dir) {
            Ok((config, settings)) => serve(config, settings),
            Err(message) => fail(&message),
        },
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::FAILURE
}

fn load(dir: &std::path::Path) -> Result<(RelayConfig, Settings), String> {
    let environment = Environment::from_env().map_err(|e| e.to_string())?;
    let settings = Settings::load(dir, environment).map_err(|e| e.to_string())?;
    let config = settings.validate(environment).map_err(|e| e.to_string())?;
    telemetry::filter(&settings.log).map_err(|e| format!("config error: log.level: {e}"))?;
    Ok((config, settings))
}

/// The multi-threaded runtime `serve` and `simulate` run on.
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .map_err(|e| fail(&format!("cannot start the async runtime: {e}")))
}

fn serve(config: RelayConfig, settings: Settings) -> ExitCode {
    // Kept until the end of `serve`, so spans still buffered are exported on exit.
    let _telemetry = match telemetry::init(&settings.log, &settings.otlp) {
        Ok(guard) => guard,
        Err(message) => return fail(&message),
    };
    let runtime = match runtime(config.workers) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let application = match Application::build(&config).await {
            Ok(application) => application,
            // Said once, on stderr: the log and the terminal are often the same screen.
            Err(error) => return fail(&error.to_string()),
        };
        let url = |host: &str, port: u16| {
            let host = match host {
                "0.0.0.0" | "::" | "[::]" => "localhost",
                host => host,
            };
            format!("http://{host}:{port}")
        };
        let api = url(&config.listen.0, application.port());
        let metrics = match (&config.admin, application.admin_port()) {
            (Some((host, _)), Some(port)) => format!("{}/metrics", url(host, port)),
            _ => "off".into(),
        };
        tracing::info!(
            port = application.port(),
            environment = config.environment.as_str(),
            sandbox = config.mode == UpstreamMode::Sandbox,
            bots = ?config.bots.aliases().collect::<Vec<_>>(),
            api = %format!("{api}/v1/flow-messages"),
            docs = %format!("{api}/docs/"),
            metrics = %metrics,
            "jelou-relay listening"
        );
        match &config.callers {
            Callers::Open { explicit: true } => tracing::warn!(
                "auth.mode = \"none\": anyone who can reach the relay may send messages"
            ),
            Callers::Open { explicit: false } => tracing::warn!(
                "no callers configured: anyone who can reach the relay may send (refused in production)"
            ),
            Callers::Keys(callers) => tracing::info!(callers = callers.len(), "caller authentication on"),
        }
        match &config.store {
            StoreConfig::Memory => tracing::info!(
                "store: memory; rate limits and Idempotency-Keys are per replica"
            ),
            StoreConfig::Redis(redis) => tracing::info!(
                store = %redis.target,
                failure_mode = redis.failure_mode.as_str(),
                "store: redis, shared by every replica"
            ),
        }
        if config.mode == UpstreamMode::Sandbox {
            tracing::warn!("sandbox mode: messages are validated and logged, never sent to Jelou");
        }
        match application.run_until_stopped(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}

fn simulate(args: SimulateArgs) -> ExitCode {
    let client_secret = match (&args.client_secret, &args.client_secret_file) {
        (Some(secret), _) => Some(secret.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(secret) => Some(secret.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => return fail(&format!("--client-secret-file {}: {e}", path.display())),
        },
        (None, None) => None,
    };
    if args.client_id.is_some() && client_secret.is_none() {
        return fail(
            "--client-id needs a secret: --client-secret-file, SIMULATOR_CLIENT_SECRET or --client-secret",
        );
    }
    if !(0.0..=1.0).contains(&args.failure_ratio) {
        return fail("--failure-ratio must be between 0.0 and 1.0");
    }
    let log = LogSettings {
        level: "info".into(),
        format: LogFormat::Text,
    };
    let off = config::OtlpSettings {
        endpoint: String::new(),
        service_name: String::new(),
    };
    let _telemetry = match telemetry::init(&log, &off) {
        Ok(guard) => guard,
        Err(message) => return fail(&message),
    };
    let options = SimulatorOptions {
        credentials: args.client_id.zip(client_secret),
        delay: std::time::Duration::from_millis(args.delay_ms),
        script: args.statuses,
        failure_ratio: args.failure_ratio,
        failure_status: args.failure_status,
        retry_after: args.retry_after,
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = match runtime(workers) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let (listener, address) =
            match simulator::bind(&format!("{}:{}", args.host, args.port)).await {
                Ok(bound) => bound,
                Err(e) => {
                    return fail(&format!(
                        "cannot listen on {}:{}: {e}",
                        args.host, args.port
                    ));
                }
            };
        tracing::info!(%address, "Jelou simulator listening");
        let served = axum::serve(listener, simulator::router(options))
            .with_graceful_shutdown(shutdown_signal())
            .await;
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("simulator failed: {e}")),
        }
    })
}

fn hash_key() -> ExitCode {
    use std::io::Read;
    let mut key = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut key) {
        return fail(&format!("cannot read the key from stdin: {e}"));
    }
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    if key.len() < 16 {
        return fail("the key must be at least 16 bytes; mint one with `jelou-relay new-key`");
    }
    println!("{}", api::auth::hash_key(&key));
    ExitCode::SUCCESS
}

/// A plain HTTP/1.1 GET of /readyz over loopback: no shell or curl needed in the image.
fn healthcheck(dir: &std::path::Path, port: Option<u16>) -> ExitCode {
    use std::io::{Read, Write};
    use std::time::Duration;
    let port = port.unwrap_or_else(|| {
        Environment::from_env()
            .ok()
            .and_then(|environment| Settings::load(dir, environment).ok())
            .map_or(8080, |settings| settings.server.port)
    });
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let probe = || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    };
    match probe() {
        Ok(answer) if answer.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(answer) => fail(&format!(
            "not ready: {}",
            answer.lines().next().unwrap_or("no answer")
        )),
        Err(e) => fail(&format!("cannot reach 127.0.0.1:{port}: {e}")),
    }
}
