//! A TCP proxy a test can cut and restore: an outage of the server behind it (Postgres,
//! Redis) for the processes that connect through it, without touching the server that the
//! machine's other tests and suites share.
//!
//! While cut, every relayed connection is closed and new ones are accepted and closed at
//! once (what a client sees of a server that went away); restored, connections are relayed
//! again.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpProxy {
    /// The port the proxy listens on (127.0.0.1).
    pub port: u16,
    /// `true` while cut; every relayed connection watches it.
    cut: Arc<watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and relays each connection to `target`
    /// (`host:port`).
    pub async fn start(target: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(watch::channel(false).0);
        let target = target.to_owned();
        let accept = {
            let cut = cut.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *cut.borrow() {
                        drop(client);
                        continue;
                    }
                    tokio::spawn(relay(client, target.clone(), cut.subscribe()));
                }
            })
        };
        TcpProxy { port, cut, accept }
    }

    /// Closes every relayed connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// `url` with its `host:port` replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let mut parsed = reqwest::Url::parse(url).expect("a URL");
        parsed.set_host(Some("127.0.0.1")).unwrap();
        parsed.set_port(Some(self.port)).unwrap();
        parsed.to_string()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut.send_replace(true);
    }
}

/// The `host:port` of `url` (for [`TcpProxy::start`]).
pub fn authority(url: &str) -> String {
    let parsed = reqwest::Url::parse(url).expect("a URL");
    format!(
        "{}:{}",
        parsed.host_str().unwrap_or("127.0.0.1"),
        parsed.port_or_known_default().expect("a port")
    )
}

/// Copies bytes both ways until either side closes or the proxy is cut.
async fn relay(mut client: TcpStream, target: String, mut cut: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(&target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.wait_for(|cut| *cut) => {}
    }
}
