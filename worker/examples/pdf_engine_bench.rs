//! Baselines for `scripts/bench-pipeline`: the work of a document without the pipeline
//! around it (no HTTP, no database, no queue). Not a test: a program a person (or the
//! bench script) runs, which prints one JSON object on stdout.
//!
//! ```text
//! pdf_engine_bench pdf --html FILE [--count N] [--pool P] [--max-jobs M]
//!                      [--wkhtmltopdf PATH] [--timeout-seconds S]
//!     The warm engine's own time: `count` renders of the same HTML through a `PdfEngine`
//!     of `pool` warm wkhtmltopdf processes, all submitted at once (the pool bounds how
//!     many run together), after one warm-up render per process.
//!     {"mode":"pdf","count":N,"pool":P,"seconds":S,"per_second":R,"restarts":0,...}
//!
//! pdf_engine_bench html-loop --template FILE --context FILE --out DIR [--count N]
//!                            [--fuel F] [--max-bytes B]
//!     The synchronous cost of an HTML document on one thread: render the template with
//!     the same context shape the pipeline gives it, hash it and write it to a file
//!     (temporary name, then rename, as the local object store does), `count` times in a
//!     loop.
//!     {"mode":"html-loop","count":N,"seconds":S,"per_second":R,"bytes":B}
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use monassurance_worker::pdf::{PdfConfig, PdfEngine};
use serde_json::json;
use sha2::{Digest, Sha256};
use template::layout::PageLayout;

const USAGE: &str = "usage: pdf_engine_bench pdf --html FILE [--count N] [--pool P] \
                     [--max-jobs M] [--wkhtmltopdf PATH] [--timeout-seconds S]\n       \
                     pdf_engine_bench html-loop --template FILE --context FILE --out DIR \
                     [--count N] [--fuel F] [--max-bytes B]";

/// `--name value` pairs after the mode.
struct Args(Vec<(String, String)>);

impl Args {
    fn parse(raw: &[String]) -> anyhow::Result<Self> {
        let mut pairs = Vec::new();
        let mut rest = raw.iter();
        while let Some(flag) = rest.next() {
            let Some(name) = flag.strip_prefix("--") else {
                bail!("unexpected argument {flag:?}\n{USAGE}");
            };
            let value = rest
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
            pairs.push((name.to_owned(), value.clone()));
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> anyhow::Result<&str> {
        self.get(name)
            .with_context(|| format!("--{name} is required\n{USAGE}"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| anyhow::anyhow!("--{name} {raw:?}: {e}")),
        }
    }

    fn check_known(&self, known: &[&str]) -> anyhow::Result<()> {
        for (name, _) in &self.0 {
            if !known.contains(&name.as_str()) {
                bail!("unknown option --{name}\n{USAGE}");
            }
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = raw.split_first() else {
        bail!("{USAGE}");
    };
    let args = Args::parse(rest)?;
    let report = match mode.as_str() {
        "pdf" => pdf(&args).await?,
        "html-loop" => html_loop(&args)?,
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return Ok(());
        }
        other => bail!("unknown mode {other:?}\n{USAGE}"),
    };
    println!("{report}");
    Ok(())
}

async fn pdf(args: &Args) -> anyhow::Result<serde_json::Value> {
    args.check_known(&[
        "html",
        "count",
        "pool",
        "max-jobs",
        "wkhtmltopdf",
        "timeout-seconds",
    ])?;
    let html_path = args.required("html")?;
    let html =
        std::fs::read_to_string(html_path).with_context(|| format!("cannot read {html_path}"))?;
    let count: usize = args.number("count", 100)?;
    let pool: usize = args.number::<usize>("pool", 2)?.max(1);
    let max_jobs: u32 = args.number("max-jobs", 500)?;
    let timeout = Duration::from_secs(args.number("timeout-seconds", 30)?);
    let binary = PathBuf::from(args.get("wkhtmltopdf").unwrap_or("wkhtmltopdf"));

    let engine = PdfEngine::new(PdfConfig {
        binary,
        pool_size: pool,
        max_jobs_per_process: max_jobs,
        timeout,
    });
    let options = PageLayout::default();

    // One render per process first, so the timed part measures warm processes only (the
    // pipeline's figure is taken after the same kind of warm-up).
    let warm_up = Instant::now();
    render_all(&engine, &html, &options, pool).await?;
    let warm_up = warm_up.elapsed();

    let started = Instant::now();
    let bytes = render_all(&engine, &html, &options, count).await?;
    let seconds = started.elapsed().as_secs_f64();
    let report = json!({
        "mode": "pdf",
        "count": count,
        "pool": pool,
        "seconds": seconds,
        "per_second": count as f64 / seconds,
        "mean_ms_per_pdf_per_process": seconds * 1000.0 * pool as f64 / count.max(1) as f64,
        "warm_up_seconds": warm_up.as_secs_f64(),
        "pdf_bytes": bytes / count.max(1),
        "restarts": engine.restarts(),
        "recycled": engine.recycled(),
    });
    engine.shutdown().await;
    Ok(report)
}

/// Renders `count` copies at once; returns the total size. Any failure fails the run.
async fn render_all(
    engine: &PdfEngine,
    html: &str,
    options: &PageLayout,
    count: usize,
) -> anyhow::Result<usize> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (engine, html, options) = (engine.clone(), html.to_owned(), options.clone());
        tasks.spawn(async move { engine.render(&html, &options).await });
    }
    let mut total = 0;
    while let Some(joined) = tasks.join_next().await {
        let pdf = joined.context("a render task panicked")??;
        if !pdf.starts_with(b"%PDF-") {
            bail!("the engine returned something that is not a PDF");
        }
        total += pdf.len();
    }
    Ok(total)
}

fn html_loop(args: &Args) -> anyhow::Result<serde_json::Value> {
    args.check_known(&["template", "context", "out", "count", "fuel", "max-bytes"])?;
    let template_path = args.required("template")?;
    let source = std::fs::read_to_string(template_path)
        .with_context(|| format!("cannot read {template_path}"))?;
    let context_path = args.required("context")?;
    let inline_context: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(context_path)
            .with_context(|| format!("cannot read {context_path}"))?,
    )
    .with_context(|| format!("{context_path} is not JSON"))?;
    let out = PathBuf::from(args.required("out")?);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let count: usize = args.number("count", 1000)?;
    let fuel: u64 = args.number("fuel", 5_000_000)?;
    let max_bytes: usize = args.number("max-bytes", 52_428_800)?;

    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..count {
        let id = uuid::Uuid::new_v4();
        let now = chrono::Utc::now();
        // The shape of `pipeline::render_context`.
        let context = json!({
            "inline_context": inline_context,
            "policy": null,
            "client": null,
            "company": null,
            "document": {
                "id": id,
                "document_type": "attestation",
                "output_format": "html",
                "created_at": now,
            },
            "now": now,
        });
        let html = template::render_html(&source, &context, fuel, max_bytes)?;
        let checksum = hex::encode(Sha256::digest(html.as_bytes()));
        let staged = out.join(format!("{id}.html#{}", &checksum[..8]));
        std::fs::write(&staged, html.as_bytes())?;
        std::fs::rename(&staged, out.join(format!("{id}.html")))?;
        bytes += html.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({
        "mode": "html-loop",
        "count": count,
        "seconds": seconds,
        "per_second": count as f64 / seconds,
        "bytes": bytes / count.max(1),
    }))
}
