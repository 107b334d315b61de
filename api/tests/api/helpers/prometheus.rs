//! The Prometheus text exposition, read back as samples: a test asserts the value a sample
//! has, not that a metric's name appears somewhere (its `# HELP` line alone would do).

use std::collections::BTreeMap;

/// Every sample of one scrape of `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    /// `(name, labels) → value`; the name as exposed (`documents_total`, `…_count`).
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
    /// The scrape as received, for failure messages.
    text: String,
}

impl Metrics {
    /// Reads the OpenMetrics text exposition (samples as in the Prometheus text format);
    /// panics on a line it cannot read.
    pub fn parse(text: &str) -> Metrics {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, labels, value) =
                parse_sample(line).unwrap_or_else(|| panic!("not a sample line: {line:?}"));
            samples.insert((name, labels), value);
        }
        Metrics {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of the sample `name` whose labels are exactly `labels`, if exposed.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// Like [`Metrics::get`], panicking (with the whole scrape) when the sample is absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }

    /// Whether any label value of any sample contains `needle`.
    pub fn any_label_contains(&self, needle: &str) -> bool {
        self.samples
            .keys()
            .any(|(_, labels)| labels.values().any(|v| v.contains(needle)))
    }
}

/// `name{label="value",…} value [timestamp]` or `name value [timestamp]`.
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let name_end = line.find(['{', ' '])?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = BTreeMap::new();
    if let Some(inside) = rest.strip_prefix('{') {
        (labels, rest) = parse_labels(inside)?;
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name.to_owned(), labels, value))
}

/// `label="value",…}` (a value may hold `,`, `}` and escaped `\"`, `\\`, `\n`); returns
/// the labels and what follows the closing brace.
fn parse_labels(mut rest: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, quoted) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i + 1,
                (_, '\\') => value.push(match chars.next()?.1 {
                    'n' => '\n',
                    other => other,
                }),
                (_, other) => value.push(other),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = &quoted[end..];
    }
}

#[test]
fn reads_names_labels_and_values() {
    let m = Metrics::parse(concat!(
        "# HELP queue_depth Documents waiting in the queue.\n",
        "# TYPE queue_depth gauge\n",
        "queue_depth 3\n",
        "http_requests_total{method=\"GET\",route=\"/api/v1/documents/{id}\",status=\"200\"} 7\n",
        "odd{a=\"x,y}\\\"z\",b=\"\"} 1.5e0\n",
        "latency_bucket{le=\"+Inf\"} 2\n",
        "# EOF\n",
    ));
    assert_eq!(m.get("queue_depth", &[]), Some(3.0));
    assert_eq!(
        m.value(
            "http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/api/v1/documents/{id}"),
                ("status", "200")
            ]
        ),
        7.0
    );
    assert_eq!(m.get("odd", &[("a", "x,y}\"z"), ("b", "")]), Some(1.5));
    assert_eq!(m.get("latency_bucket", &[("le", "+Inf")]), Some(2.0));
    assert_eq!(m.get("http_requests_total", &[("method", "GET")]), None);
    assert!(m.any_label_contains("{id}"));
    assert!(!m.any_label_contains("queue_depth"));
}
