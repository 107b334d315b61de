//! The monitoring files of `ops/` against the real tools: `promtool` checks the alert
//! rules and runs their unit tests (each alert firing and quiet), and a real Prometheus
//! scrapes a running API and worker, loads the rules, and has every metric the alerts and
//! the Grafana dashboard name, with the type their queries assume.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::receiver::Receiver;
use crate::helpers::{Backend, free_port, spawn_app_with, wait_for_port};

fn ops_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ops")
}

/// A Prometheus tool from Debian's `prometheus` package (`scripts/tools --test`).
fn tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/tools --test (it installs Debian's prometheus package)",
        path.display()
    );
    path
}

fn promtool(args: &[&str]) -> String {
    let output = std::process::Command::new(tool("promtool"))
        .args(args)
        .current_dir(ops_dir().join("prometheus"))
        .output()
        .expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{said}");
    said
}

#[test]
fn the_alert_rules_are_valid_and_each_fires_and_stays_quiet_as_its_tests_say() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "tests.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a test that sees it fire and one that sees it quiet.
    let tests = std::fs::read_to_string(ops_dir().join("prometheus/tests.yml")).unwrap();
    for alert in alert_names() {
        let cases: Vec<&str> = tests
            .split("alertname: ")
            .skip(1)
            .filter(|case| case.starts_with(&format!("{alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_labels")),
            "{alert}: no test sees it fire"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert}: no test sees it quiet"
        );
    }
}

fn alert_names() -> Vec<String> {
    let rules = std::fs::read_to_string(ops_dir().join("prometheus/alerts.yml")).unwrap();
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

/// The PromQL expressions of the alerts (`expr:`, folded over several lines) and of the
/// dashboard's panels.
fn expressions() -> Vec<String> {
    let rules = std::fs::read_to_string(ops_dir().join("prometheus/alerts.yml")).unwrap();
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        let mut expr = rest.trim().trim_start_matches('>').to_owned();
        while let Some(next) = lines.peek() {
            if next.trim().is_empty()
                || next.trim_start().contains(": ")
                || next.trim_end().ends_with(':')
            {
                break;
            }
            expr.push(' ');
            expr.push_str(next.trim());
            lines.next();
        }
        exprs.push(expr);
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(ops_dir().join("grafana/monassurance.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    exprs
}

/// The metric names an expression reads: its identifiers once strings, label matchers,
/// ranges and grouping label lists (`by (…)`, `on (…)`…) are taken out, less functions,
/// operators and numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut cleaned = String::new();
    let (mut braces, mut brackets, mut in_string) = (0, 0, false);
    for c in expr.chars() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '{' => braces += 1,
            '}' => braces -= 1,
            '[' => brackets += 1,
            ']' => brackets -= 1,
            _ if braces > 0 || brackets > 0 => {}
            _ => cleaned.push(c),
        }
        if matches!(c, '{' | '}' | '[' | ']' | '"') {
            cleaned.push(' ');
        }
    }
    let tokens = tokenize(&cleaned);
    let mut names = BTreeSet::new();
    let mut in_group = false;
    for (end, token) in &tokens {
        let rest = cleaned[*end..].trim_start();
        if in_group {
            in_group = !rest.starts_with(')');
            continue;
        }
        if GROUPING.contains(&token.as_str()) {
            // A label list follows, unless it is empty: `on()`.
            in_group = rest.starts_with('(') && !rest[1..].trim_start().starts_with(')');
            continue;
        }
        // A function, or an aggregation written `sum by (…) (…)`.
        let aggregation = ["by", "without"].iter().any(|k| {
            rest.strip_prefix(k)
                .is_some_and(|r| r.trim_start().starts_with('('))
        });
        if rest.starts_with('(') || aggregation || OPERATORS.contains(&token.as_str()) {
            continue;
        }
        names.insert(token.clone());
    }
    names
}

const GROUPING: &[&str] = &[
    "by",
    "on",
    "without",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATORS: &[&str] = &["and", "or", "unless", "bool", "offset"];

/// Identifiers with the position just after each; numbers left out.
fn tokenize(text: &str) -> Vec<(usize, String)> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    for (i, c) in text.char_indices() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
        } else if !current.is_empty() {
            tokens.push((i, std::mem::take(&mut current)));
        }
    }
    if !current.is_empty() {
        tokens.push((text.len(), current));
    }
    tokens.retain(|(_, t)| !t.starts_with(|c: char| c.is_ascii_digit()));
    tokens
}

#[test]
fn metric_names_are_read_out_of_expressions() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le, lane) (rate(document_queue_wait_seconds_bucket{lane=\"bulk\"}[5m]))) > 30 \
         and on() (max(workers_live) == 0)",
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "document_queue_wait_seconds_bucket".to_owned(),
            "workers_live".to_owned()
        ])
    );
}

/// The type a query assumes of a metric, and the family it belongs to.
fn family_of(name: &str) -> (&str, &'static str) {
    for (suffix, kind) in [
        ("_bucket", "histogram"),
        ("_sum", "histogram"),
        ("_count", "histogram"),
    ] {
        if let Some(family) = name.strip_suffix(suffix) {
            return (family, kind);
        }
    }
    match name.strip_suffix("_total") {
        Some(family) => (family, "counter"),
        None => (name, "gauge"),
    }
}

/// A Prometheus API answer; `null` while it is not ready to answer (503 in plain text).
async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    match client.get(url).send().await {
        Ok(res) => res.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_every_metric_the_alerts_and_dashboard_name() {
    if crate::helpers::services_skipped() {
        return;
    }
    let prometheus_bin = tool("prometheus");
    // The API and a worker process whose metrics port is known.
    let app = spawn_app_with(
        Backend::PostgresRedis,
        &[
            ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true"),
            ("WEBHOOK_POLL_MS", "50"),
        ],
        false,
    )
    .await;
    let worker_port = free_port();
    let _worker = app.start_worker(&[("WORKER_HTTP_ADDR", &format!("127.0.0.1:{worker_port}"))]);
    wait_for_port(worker_port).await;

    // Work that makes every labelled family show samples: documents (HTML and PDF), a
    // batch, a webhook delivery.
    let admin = app.admin().await.access_token;
    let receiver = Receiver::start().await;
    let res = app
        .post_json(
            "/api/v1/webhooks",
            Some(&admin),
            &json!({"url": receiver.url("/in"), "events": ["*"]}),
        )
        .await;
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    for format in ["html", "pdf"] {
        let doc = app
            .generate(
                &admin,
                &json!({"document_type": "quote", "output_format": format}),
            )
            .await;
        app.wait_for_document(&admin, doc["id"].as_str().unwrap())
            .await;
    }
    let res = app
        .post_json(
            "/api/v1/document-batches",
            Some(&admin),
            &json!({"document_type": "quote", "items": [{"inline_context": {}}]}),
        )
        .await;
    assert_eq!(res.status(), reqwest::StatusCode::ACCEPTED);
    receiver.wait_for(2, Duration::from_secs(30)).await;

    // A real Prometheus, scraping both every second, with the alert rules.
    let dir = tempfile::tempdir().unwrap();
    let api = app.address.trim_start_matches("http://").to_owned();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
         scrape_configs:\n  - job_name: monassurance-api\n    static_configs:\n      - targets: [\"{api}\"]\n\
         \x20 - job_name: monassurance-worker\n    static_configs:\n      - targets: [\"127.0.0.1:{worker_port}\"]\n",
        rules = ops_dir().join("prometheus/alerts.yml").display(),
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let mut prometheus = tokio::process::Command::new(prometheus_bin)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");
    wait_for_port(port).await;
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let client = reqwest::Client::new();

    // Both targets up, scraped at least twice.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let targets = get_json(&client, &format!("{base}/targets")).await;
        let active = targets["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let up = active.iter().filter(|t| t["health"] == "up").count();
        let scraped = get_json(&client, &format!("{base}/query?query=count(up%3D%3D1)")).await;
        if up == 2 && scraped["data"]["result"][0]["value"][1] == "2" {
            let samples = get_json(
                &client,
                &format!("{base}/query?query=count_over_time(up%5B10s%5D)"),
            )
            .await;
            let enough = samples["data"]["result"].as_array().is_some_and(|r| {
                r.len() == 2
                    && r.iter()
                        .all(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap() >= 2.0)
            });
            if enough {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "targets never all up: {active:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The rules are loaded and evaluate without error.
    let rules = get_json(&client, &format!("{base}/rules")).await;
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), alert_names().len(), "{rules:#}");
    for rule in &loaded {
        assert_eq!(rule["health"], "ok", "{rule:#}");
    }

    // Every metric named exists, with the type the query assumes.
    let metadata = get_json(&client, &format!("{base}/metadata")).await;
    let known: BTreeMap<String, String> = metadata["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, entries)| {
            (
                name.clone(),
                entries[0]["type"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let mut named = BTreeSet::new();
    for expr in expressions() {
        named.extend(metric_names(&expr));
    }
    assert!(
        named.len() >= 15,
        "too few metrics found in the files: {named:?}"
    );
    for name in &named {
        if name == "up" {
            continue;
        }
        let (family, kind) = family_of(name);
        let found = known.get(family).or_else(|| known.get(name.as_str()));
        assert_eq!(
            found.map(String::as_str),
            Some(kind),
            "{name}: the files read it as a {kind} of family {family}; Prometheus knows {known:#?}"
        );
        let series = get_json(&client, &format!("{base}/series?match[]={name}")).await;
        assert!(
            !series["data"].as_array().unwrap().is_empty(),
            "{name}: no series scraped"
        );
    }
    prometheus.kill().await.unwrap();
    app.stop().await;
}
