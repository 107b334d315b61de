//! A webhook receiver for the tests: a real HTTP server on a port of its own that records
//! every request and answers as the test tells it (200, another status, slowly, or with a
//! redirect), and a check of the signatures with the Standard Webhooks project's own
//! Python library (`standardwebhooks`), independent of the server's code.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status, with `body` as the body.
    Status(u16, &'static str),
    /// 200, after this long.
    Slow(Duration),
    /// 302 to this URL.
    Redirect(String),
}

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Lowercased names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Inner {
    received: Mutex<Vec<Received>>,
    /// Answers still to give, in order; 200 once they run out.
    script: Mutex<VecDeque<Answer>>,
    arrived: Notify,
}

/// A running receiver; it stops when dropped.
pub struct Receiver {
    pub port: u16,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = inner.script.lock().unwrap().pop_front();
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    inner.received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        headers,
        body: body.to_vec(),
    });
    inner.arrived.notify_waiters();
    match answer {
        None => (StatusCode::OK, "thanks").into_response(),
        Some(Answer::Status(code, body)) => {
            (StatusCode::from_u16(code).unwrap(), body).into_response()
        }
        Some(Answer::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, "late").into_response()
        }
        Some(Answer::Redirect(to)) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new()
            .fallback(record)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { port, inner, task }
    }

    /// The URL on loopback, at `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The next requests get these answers, in order; later ones get 200.
    pub fn answer(&self, answers: impl IntoIterator<Item = Answer>) {
        self.inner.script.lock().unwrap().extend(answers);
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    /// Waits until `count` requests have arrived (at most `limit`) and returns them all.
    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.inner.arrived.notified();
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "{count} webhook requests expected within {limit:?}, {} arrived: {:#?}",
                    received.len(),
                    received
                        .iter()
                        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

/// The Python interpreter with `standardwebhooks` installed (`scripts/tools --test`
/// installs it): `STANDARDWEBHOOKS_PYTHON`, else the project's venv in `~/.cache`.
fn verifier_python() -> PathBuf {
    if let Ok(python) = std::env::var("STANDARDWEBHOOKS_PYTHON") {
        return PathBuf::from(python);
    }
    let home = std::env::var("HOME").expect("HOME");
    let python = PathBuf::from(home).join(".cache/monassurance-webhooks-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/tools --test (it installs the standardwebhooks library)",
        python.display()
    );
    python
}

/// Checks `request`'s signature with the Standard Webhooks Python library and `secret`
/// (`whsec_…`): `Ok` when it verifies, else the library's complaint.
pub fn verify(secret: &str, request: &Received) -> Result<(), String> {
    let script = r#"
import base64, json, sys
from standardwebhooks.webhooks import Webhook
given = json.load(sys.stdin)
try:
    Webhook(given["secret"]).verify(base64.b64decode(given["body"]), given["headers"])
except Exception as e:
    print(type(e).__name__ + ": " + str(e))
    sys.exit(1)
"#;
    use base64::Engine;
    let input = serde_json::json!({
        "secret": secret,
        "headers": request.headers,
        "body": base64::engine::general_purpose::STANDARD.encode(&request.body),
    });
    let mut child = std::process::Command::new(verifier_python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the verifier starts");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    match output.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&output.stdout).trim().to_owned()),
    }
}
