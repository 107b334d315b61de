//! A `redis-server` of the test's own, for what must not touch the Redis the other tests
//! share: a FLUSHALL, a server stopped and started again empty.

use super::{free_port, tool, wait_for_port};

pub struct PrivateRedis {
    /// Its `REDIS_URL`.
    pub url: String,
    port: u16,
    server: Option<tokio::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let port = free_port();
        let mut redis = PrivateRedis {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            server: None,
        };
        redis.start_server().await;
        redis
    }

    async fn start_server(&mut self) {
        let server = tokio::process::Command::new(tool("redis-server"))
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.server = Some(server);
        wait_for_port(self.port).await;
    }

    /// Stops the server at once (SIGKILL): it keeps nothing.
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.kill().await.expect("redis-server stops");
        }
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_server().await;
    }

    /// Freezes the server (SIGSTOP): connections stay open and calls get no answer, as
    /// with a Redis stalled by a long command or a frozen host.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server answer again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .server
            .as_ref()
            .and_then(|s| s.id())
            .expect("redis-server runs");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Runs `redis-cli` against this server and returns what it printed.
    pub async fn cli(&self, args: &[&str]) -> String {
        let out = tokio::process::Command::new(tool("redis-cli"))
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "redis-cli {args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub async fn flushall(&self) {
        assert_eq!(self.cli(&["FLUSHALL"]).await, "OK");
    }
}
