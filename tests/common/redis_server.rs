//! A real `redis-server` per test, on a free loopback port, without persistence unless
//! asked for (an append-only file that survives a kill); it can
//! be stopped, restarted on the same port, paused (SIGSTOP: it accepts connections but
//! never answers) and resumed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set by `.ci/run`: a missing `redis-server` fails the Redis tests instead of skipping them.
pub const REQUIRED_ENV: &str = "JELOU_RELAY_TEST_REDIS";

pub fn redis_server_installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the Redis tests can run here. When `redis-server` is missing they are skipped
/// with a notice on stderr, unless `JELOU_RELAY_TEST_REDIS=required` (CI), where that panics.
pub fn redis_available() -> bool {
    if redis_server_installed() {
        return true;
    }
    if std::env::var(REQUIRED_ENV).is_ok_and(|v| v == "required") {
        panic!("redis-server is not installed, and {REQUIRED_ENV}=required");
    }
    eprintln!(
        "SKIPPED: redis-server is not installed (apt-get install redis-server); the Redis tests did not run"
    );
    false
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// TLS only: the server's certificate and key, and the CA that signed it.
    tls: Option<TlsFiles>,
    /// With persistence (AOF, fsync always) in this folder: data survives a kill.
    persist: Option<std::path::PathBuf>,
}

#[derive(Clone)]
pub struct TlsFiles {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl TlsFiles {
    /// A CA, and a certificate it signs for `localhost` and 127.0.0.1, made with openssl.
    pub fn generate(dir: &std::path::Path) -> TlsFiles {
        let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
        let files = TlsFiles {
            ca: path("ca.pem"),
            cert: path("server.pem"),
            key: path("server.key"),
        };
        let (ca_key, csr, ext) = (path("ca.key"), path("server.csr"), path("san.ext"));
        std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl runs");
            assert!(status.success(), "openssl {args:?}");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test CA",
            "-keyout",
            &ca_key,
            "-out",
            &files.ca,
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &files.key,
            "-out",
            &csr,
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &files.ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &files.cert,
        ]);
        files
    }
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        let mut server = RedisServer {
            child: None,
            port,
            tls: None,
            persist: None,
        };
        server.spawn();
        server
    }

    /// A server that writes every change to an append-only file in `dir` before
    /// answering, so a killed and restarted server keeps its data.
    pub fn start_persistent(dir: &std::path::Path) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            tls: None,
            persist: Some(dir.to_path_buf()),
        };
        server.spawn();
        server
    }

    /// A server that speaks TLS only, on `port`.
    pub fn start_tls(files: TlsFiles) -> RedisServer {
        let port = free_port();
        let mut server = RedisServer {
            child: None,
            port,
            tls: Some(files),
            persist: None,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(tls) => command.args([
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                &tls.cert,
                "--tls-key-file",
                &tls.key,
                "--tls-ca-cert-file",
                &tls.ca,
                "--tls-auth-clients",
                "no",
            ]),
        };
        match &self.persist {
            // Every write on disk before it is answered, as a queue's Redis runs.
            Some(dir) => command.args([
                "--dir",
                dir.to_str().expect("a UTF-8 path"),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ]),
            None => command.args(["--appendonly", "no"]),
        };
        let child = command
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A raw `PING` gets `+PONG` within 200 ms (through `redis-cli` for TLS).
    pub fn answers(&self) -> bool {
        if self.tls.is_some() {
            return self.cli(&["PING"]) == "PONG";
        }
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// Kills the server (its data is gone, as after a crash of a cache-only Redis).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A fresh server on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGSTOP: connections are accepted by the kernel, nothing is ever answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {signal} works");
    }

    /// Runs a command with `redis-cli` (for assertions on what the relay stored).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if let Some(tls) = &self.tls {
            command.args(["--tls", "--cacert", &tls.ca]);
        }
        let output = command.args(args).output().expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server must be resumed to die promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
