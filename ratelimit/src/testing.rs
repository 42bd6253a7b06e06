//! For tests: a real Redis (Debian's `redis-server`) on 127.0.0.1, on a free port, in a
//! temporary folder of its own, without persistence, in cleartext or TLS only; stopped when
//! dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// TLS only, with the certificate and key in `dir`.
    tls: bool,
}

/// A port free at the time of asking.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Starts `redis-server` (`WASMGATE_REDIS_SERVER` or the one on `PATH`) and waits until it
    /// answers PING.
    pub fn start() -> Result<RedisServer, String> {
        let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
        let dir =
            std::env::temp_dir().join(format!("wasmgate-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut server = RedisServer {
            port,
            dir,
            child: None,
            tls: false,
        };
        server.restart()?;
        Ok(server)
    }

    /// [`RedisServer::start`] with TLS only (no cleartext port), presenting `cert_pem` (with
    /// `key_pem`); clients need no certificate.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Result<RedisServer, String> {
        let mut server = RedisServer::start()?;
        server.kill();
        std::fs::write(server.dir.join("redis.crt"), cert_pem).map_err(|e| e.to_string())?;
        std::fs::write(server.dir.join("redis.key"), key_pem).map_err(|e| e.to_string())?;
        server.tls = true;
        server.restart()?;
        Ok(server)
    }

    /// Starts it again on the same port (after [`RedisServer::kill`]), empty.
    pub fn restart(&mut self) -> Result<(), String> {
        let program =
            std::env::var("WASMGATE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let port = self.port.to_string();
        let mut command = Command::new(&program);
        command.args(["--bind", "127.0.0.1"]);
        if self.tls {
            command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(self.dir.join("redis.crt"))
                .arg("--tls-key-file")
                .arg(self.dir.join("redis.key"));
        } else {
            command.args(["--port", &port]);
        }
        let child = command
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {program} (apt-get install redis-server): {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // A TLS port is ready when it accepts connections (this client speaks no TLS).
            let ready = if self.tls {
                TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            } else {
                self.command(&["PING"]).is_ok_and(|r| r == "+PONG")
            };
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server on port {} did not answer", self.port))
    }

    /// One command in RESP, its first reply line (cleartext servers only).
    pub fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(out.as_bytes())?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe {
                libc_kill(child.id() as i32, signal);
            }
        }
    }

    /// SIGSTOP: Redis stops answering, its connections stay open (a slow Redis).
    pub fn pause(&self) {
        self.signal(19);
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal(18);
    }

    /// Kills it (SIGKILL) and waits for it: its counters are gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
