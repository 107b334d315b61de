//! HTML → PDF with a pool of warm wkhtmltopdf processes.
//!
//! Starting wkhtmltopdf costs more than rendering a one-page document with it, so each
//! process of the pool runs `wkhtmltopdf --read-args-from-stdin`: it renders one document
//! per line of arguments written to its stdin and prints `Done` on stderr after each. A
//! process serves one job at a time; the pool holds at most `pool_size` of them.
//!
//! Templates are written by people, so every job line turns JavaScript and local file
//! access off and sends every HTTP(S) fetch to a closed proxy port: a template can neither
//! make the worker call internal addresses (SSRF) nor print the worker's files.
//!
//! A job succeeded when wkhtmltopdf printed `Done` for it *and* left a complete PDF. Its
//! exit code cannot tell: the process keeps running between jobs, and wkhtmltopdf exits 1
//! with a good PDF whenever it blocked a resource. A process that overruns its timeout,
//! dies, or loses track of which job it is on is killed; one that served
//! `max_jobs_per_process` documents is retired so memory cannot creep. Either way the next
//! render that needs a process starts a new one.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, Command};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use template::layout::PageLayout;

/// On every job line. `--proxy` to a closed port is what stops network fetches:
/// `--disable-local-file-access` alone let an `<img src="http://…">` connect (measured).
/// wkhtmltopdf still reads its own input file under `--disable-local-file-access` while
/// blocking its neighbours (measured), so no `--allow` is needed and none is given.
/// `--log-level info` is the default, spelled out because `Done` is printed at that level
/// only: `--quiet`, `none`, `error` and `warn` all drop it (measured), and the pool would
/// then wait for every job until its timeout.
const HARDENING: &str = "--javascript-delay 0 --disable-javascript --disable-local-file-access \
                         --proxy http://127.0.0.1:1 --encoding utf-8 --log-level info";

/// How long a retired process may take to exit on its own before it is killed.
const RETIRE_GRACE: Duration = Duration::from_secs(5);
/// How many of a job's last stderr lines an error message quotes.
const TAIL_LINES: usize = 8;
/// A stderr line is cut here: a template with huge URLs must not grow our memory.
const MAX_LINE_BYTES: usize = 4096;

/// How to run the pool.
pub struct PdfConfig {
    /// The wkhtmltopdf executable.
    pub binary: PathBuf,
    /// Processes kept, which is also how many documents render at once (0 counts as 1).
    pub pool_size: usize,
    /// Documents one process renders before it is replaced (0 counts as 1).
    pub max_jobs_per_process: u32,
    /// Longest time one document may take once it has a process.
    pub timeout: Duration,
}

/// Why a PDF could not be made. Each is worth a retry: the input was already accepted as
/// HTML, and the process at fault has been replaced.
#[derive(Debug, thiserror::Error)]
pub enum PdfError {
    #[error("wkhtmltopdf took longer than {0:?}; its process was killed")]
    Timeout(Duration),
    #[error("wkhtmltopdf failed: {0}")]
    Engine(String),
    #[error("PDF rendering I/O error: {0}")]
    Io(#[from] io::Error),
}

/// A pool of warm `wkhtmltopdf --read-args-from-stdin` processes. Clones share the pool.
#[derive(Clone)]
pub struct PdfEngine {
    inner: Arc<Inner>,
}

struct Inner {
    binary: PathBuf,
    timeout: Duration,
    max_jobs: u32,
    pool_size: u32,
    /// One permit per process: a render holds one for as long as it owns a process, so
    /// processes idle plus processes at work never exceed `pool_size`.
    permits: Semaphore,
    idle: Mutex<Vec<Process>>,
    /// Recycled processes still exiting, so that `shutdown` can wait for them.
    retiring: Mutex<JoinSet<()>>,
    /// Set once by `shutdown`; a render that owns a process kills it when this turns true.
    stopping: watch::Sender<bool>,
    restarts: AtomicU64,
    recycled: AtomicU64,
}

impl PdfEngine {
    /// No process starts here: the first renders start them, so an engine that is never
    /// used (a worker that only makes HTML) costs nothing.
    pub fn new(config: PdfConfig) -> Self {
        let pool_size = u32::try_from(config.pool_size.max(1)).unwrap_or(u32::MAX);
        Self {
            inner: Arc::new(Inner {
                binary: config.binary,
                timeout: config.timeout,
                max_jobs: config.max_jobs_per_process.max(1),
                pool_size,
                permits: Semaphore::new(pool_size as usize),
                idle: Mutex::new(Vec::new()),
                retiring: Mutex::new(JoinSet::new()),
                stopping: watch::channel(false).0,
                restarts: AtomicU64::new(0),
                recycled: AtomicU64::new(0),
            }),
        }
    }

    /// Renders one HTML document, waiting for a free process first. The document gets a
    /// private directory, removed when this returns.
    pub async fn render(&self, html: &str, options: &PageLayout) -> Result<Vec<u8>, PdfError> {
        let inner = &*self.inner;
        let _permit = inner.permits.acquire().await.map_err(|_| stopped())?;
        if *inner.stopping.borrow() {
            return Err(stopped());
        }

        let dir = tempfile::Builder::new()
            .prefix("monassurance-pdf-")
            .tempdir_in(std::env::temp_dir())?;
        let input = dir.path().join("in.html");
        let output = dir.path().join("out.pdf");
        let line = job_line(options, &input, &output)?;
        tokio::fs::write(&input, html).await?;

        let mut process = match inner.take_idle() {
            Some(process) => process,
            None => Process::spawn(&inner.binary)?,
        };
        let mut stopping = inner.stopping.subscribe();
        let outcome = tokio::select! {
            finished = tokio::time::timeout(inner.timeout, process.run(&line)) => Some(finished),
            _ = stopping.wait_for(|stop| *stop) => None,
        };
        let tail = match outcome {
            None => {
                process.kill().await;
                return Err(stopped());
            }
            Some(Err(_elapsed)) => {
                let pid = process.pid;
                process.kill().await;
                inner.restarts.fetch_add(1, Ordering::Relaxed);
                warn!(?pid, timeout = ?inner.timeout, "wkhtmltopdf overran its job timeout; killed it");
                return Err(PdfError::Timeout(inner.timeout));
            }
            Some(Ok(Err(failure))) => {
                let pid = process.pid;
                let ended = describe_exit(process.kill().await);
                inner.restarts.fetch_add(1, Ordering::Relaxed);
                warn!(?pid, %ended, %failure, "wkhtmltopdf failed mid-job; killed it");
                return Err(PdfError::Engine(format!(
                    "{} ({ended}); last output: {}",
                    failure.what, failure.tail
                )));
            }
            Some(Ok(Ok(tail))) => tail,
        };
        process.jobs += 1;
        inner.put_back(process);
        read_pdf(&output, &tail).await
    }

    /// Processes killed and replaced after a timeout, a crash or losing step with their jobs.
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::Relaxed)
    }

    /// Processes retired after `max_jobs_per_process` documents.
    pub fn recycled(&self) -> u64 {
        self.inner.recycled.load(Ordering::Relaxed)
    }

    /// Kills every process, including those in the middle of a document (their renders
    /// fail with [`PdfError::Engine`]), and makes later renders fail at once. Idempotent.
    pub async fn shutdown(&self) {
        let inner = &*self.inner;
        inner.stopping.send_replace(true);
        // Every permit back means no render owns a process any more: each has seen the
        // signal and killed its process, or finished and returned it to `idle`.
        if let Ok(all) = inner.permits.acquire_many(inner.pool_size).await {
            inner.permits.close();
            drop(all);
            info!("PDF engine shutting down");
        }
        let idle = std::mem::take(&mut *inner.idle());
        for process in idle {
            debug!(pid = ?process.pid, "killing idle wkhtmltopdf at shutdown");
            process.kill().await;
        }
        let mut retiring = std::mem::take(&mut *inner.retiring());
        while retiring.join_next().await.is_some() {}
    }

    #[cfg(test)]
    fn idle_pids(&self) -> Vec<u32> {
        self.inner.idle().iter().filter_map(|p| p.pid).collect()
    }
}

impl Inner {
    fn idle(&self) -> MutexGuard<'_, Vec<Process>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn retiring(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.retiring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A warm process, passing over those that died while idle (the OOM killer, an
    /// operator): their death is noticed here instead of failing the next document.
    fn take_idle(&self) -> Option<Process> {
        let mut idle = self.idle();
        while let Some(mut process) = idle.pop() {
            match process.child.try_wait() {
                Ok(None) => return Some(process),
                Ok(Some(status)) => {
                    self.restarts.fetch_add(1, Ordering::Relaxed);
                    warn!(pid = ?process.pid, %status, "idle wkhtmltopdf had exited; replacing it");
                }
                Err(error) => {
                    self.restarts.fetch_add(1, Ordering::Relaxed);
                    warn!(pid = ?process.pid, %error, "cannot check an idle wkhtmltopdf; replacing it");
                }
            }
        }
        None
    }

    fn put_back(&self, process: Process) {
        if process.jobs < self.max_jobs {
            self.idle().push(process);
            return;
        }
        self.recycled.fetch_add(1, Ordering::Relaxed);
        info!(pid = ?process.pid, jobs = process.jobs, "recycling wkhtmltopdf after its job quota");
        let mut retiring = self.retiring();
        // A JoinSet keeps finished tasks until they are joined: drop those first.
        while retiring.try_join_next().is_some() {}
        retiring.spawn(process.retire());
    }
}

fn stopped() -> PdfError {
    PdfError::Engine("the PDF engine is shut down".to_owned())
}

fn describe_exit(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "exit status unknown".to_owned(), |s| s.to_string())
}

/// One document's arguments, newline-terminated.
/// The layout part of a job line.
fn layout_args(layout: &PageLayout) -> String {
    let orientation = if layout.landscape() {
        "Landscape"
    } else {
        "Portrait"
    };
    let [top, right, bottom, left] = layout.margins_mm();
    format!(
        "-s {} -O {orientation} -T {top}mm -R {right}mm -B {bottom}mm -L {left}mm",
        layout.page_size()
    )
}

fn job_line(options: &PageLayout, input: &Path, output: &Path) -> Result<String, PdfError> {
    Ok(format!(
        "{HARDENING} {} --no-outline {} {}\n",
        layout_args(options),
        line_safe(input)?,
        line_safe(output)?
    ))
}

/// wkhtmltopdf splits a job line on spaces and gives quotes and backslashes a meaning of
/// its own, with no escaping we could rely on: a path holding any of them would be read
/// as other arguments. A relative path could start with `-` and read as an option.
fn line_safe(path: &Path) -> Result<&str, PdfError> {
    path.to_str()
        .filter(|s| {
            path.is_absolute()
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'))
        })
        .ok_or_else(|| {
            PdfError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} cannot go on a wkhtmltopdf argument line; point TMPDIR at an absolute \
                     path without spaces, quotes or backslashes",
                    path.display()
                ),
            ))
        })
}

async fn read_pdf(path: &Path, tail: &Tail) -> Result<Vec<u8>, PdfError> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    if is_complete_pdf(&bytes) {
        return Ok(bytes);
    }
    warn!(bytes = bytes.len(), %tail, "wkhtmltopdf reported Done without a complete PDF");
    Err(PdfError::Engine(format!(
        "it reported Done but left no complete PDF ({} bytes); last output: {tail}",
        bytes.len()
    )))
}

/// `%PDF-` says it is a PDF; `%%EOF` in the last kilobyte says it was written to the end.
fn is_complete_pdf(bytes: &[u8]) -> bool {
    let end = &bytes[bytes.len().saturating_sub(1024)..];
    bytes.starts_with(b"%PDF-") && end.windows(5).any(|w| w == b"%%EOF")
}

/// Why a process can no longer be trusted with jobs.
struct JobFailure {
    what: String,
    tail: Tail,
}

impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; last output: {}", self.what, self.tail)
    }
}

/// The last meaningful stderr lines of a job, for error messages.
#[derive(Default)]
struct Tail(VecDeque<String>);

impl Tail {
    fn push(&mut self, line: &str) {
        // Progress bars (`[====>   ] 50%`) say nothing about a failure.
        if line.is_empty() || line.starts_with('[') {
            return;
        }
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0.push_back(line.to_owned());
    }
}

impl fmt::Display for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        for (i, line) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            f.write_str(line)?;
        }
        Ok(())
    }
}

/// One `wkhtmltopdf --read-args-from-stdin`.
struct Process {
    /// Spawned with `kill_on_drop`, so a render cancelled by its caller, or an engine
    /// dropped without `shutdown`, leaves no wkhtmltopdf behind.
    child: Child,
    pid: Option<u32>,
    stdin: ChildStdin,
    stderr: StderrLines,
    jobs: u32,
}

impl Process {
    fn spawn(binary: &Path) -> Result<Self, PdfError> {
        let mut child = Command::new(binary)
            .arg("--read-args-from-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id();
        let (Some(stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(PdfError::Engine("started without its pipes".to_owned()));
        };
        // wkhtmltopdf writes little or nothing on stdout here, but a full pipe would stall
        // it mid-job. The copy stops when the process dies, which the job sees on stderr.
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await;
        });
        debug!(?pid, binary = %binary.display(), "started wkhtmltopdf");
        Ok(Self {
            child,
            pid,
            stdin,
            stderr: StderrLines::new(stderr),
            jobs: 0,
        })
    }

    /// Sends one job and reads stderr up to its `Done`, returning the job's last lines.
    async fn run(&mut self, line: &str) -> Result<Tail, JobFailure> {
        let mut tail = Tail::default();
        if let Err(error) = self.send(line).await {
            return Err(JobFailure {
                what: format!("could not be sent the job: {error}"),
                tail,
            });
        }
        // Every job starts with this line, so a `Done` before it belongs to an earlier
        // job: the process is out of step, and trusting it would hand the next document
        // another's unfinished file.
        let mut started = false;
        loop {
            let segment = match self.stderr.next().await {
                Ok(Some(segment)) => segment,
                Ok(None) => {
                    return Err(JobFailure {
                        what: "stopped mid-job".to_owned(),
                        tail,
                    });
                }
                Err(error) => {
                    return Err(JobFailure {
                        what: format!("its stderr could not be read: {error}"),
                        tail,
                    });
                }
            };
            let text = segment.trim();
            if text == "Done" {
                if started {
                    return Ok(tail);
                }
                return Err(JobFailure {
                    what: "reported Done for a job it had not started".to_owned(),
                    tail,
                });
            }
            // Anywhere in the line: some warnings (an ignored switch) end without a newline
            // and run into this marker.
            started |= text.contains("Loading page");
            if !text.is_empty() && !text.starts_with('[') {
                debug!(pid = ?self.pid, "wkhtmltopdf: {text}");
            }
            tail.push(text);
        }
    }

    async fn send(&mut self, line: &str) -> io::Result<()> {
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await
    }

    /// Kills and reaps the process; returns how it ended when that is known.
    async fn kill(mut self) -> Option<ExitStatus> {
        // Fails only for a process already reaped, whose status `wait` still returns.
        let _ = self.child.start_kill();
        self.child.wait().await.ok()
    }

    /// Closes stdin, which ends wkhtmltopdf's job loop, and kills it only if it lingers.
    async fn retire(self) {
        let Process {
            mut child,
            pid,
            stdin,
            // Kept open until the process is gone, so its last words cannot hit a broken pipe.
            stderr: _stderr,
            ..
        } = self;
        drop(stdin);
        match tokio::time::timeout(RETIRE_GRACE, child.wait()).await {
            Ok(Ok(status)) => debug!(?pid, %status, "retired wkhtmltopdf exited"),
            Ok(Err(error)) => warn!(?pid, %error, "cannot reap a retired wkhtmltopdf"),
            Err(_) => {
                warn!(?pid, grace = ?RETIRE_GRACE, "retired wkhtmltopdf lingered; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// wkhtmltopdf's stderr cut at `\n` and at `\r`: it redraws its progress bars with
/// carriage returns, and `Done` arrives after one of them, on the same line.
struct StderrLines {
    reader: BufReader<ChildStderr>,
    partial: Vec<u8>,
}

impl StderrLines {
    fn new(stderr: ChildStderr) -> Self {
        Self {
            reader: BufReader::new(stderr),
            partial: Vec::new(),
        }
    }

    /// The next line, or `None` once stderr is closed (the process has gone).
    async fn next(&mut self) -> io::Result<Option<String>> {
        loop {
            let buffer = self.reader.fill_buf().await?;
            if buffer.is_empty() {
                if self.partial.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(self.take_line()));
            }
            let end = buffer.iter().position(|&b| b == b'\n' || b == b'\r');
            let chunk = &buffer[..end.unwrap_or(buffer.len())];
            let room = MAX_LINE_BYTES.saturating_sub(self.partial.len());
            self.partial
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = chunk.len() + usize::from(end.is_some());
            self.reader.consume(used);
            if end.is_some() {
                return Ok(Some(self.take_line()));
            }
        }
    }

    fn take_line(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        line
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use serde_json::json;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    const INVOICE: &str = r#"<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>Facture</title>
<style>body { font-family: sans-serif } td, th { border: 1px solid #999; padding: 4px }</style>
</head><body>
<h1>Invoice INV-2024-0042</h1>
<p>Client: Ada Lovelace</p>
<table>
<tr><th>Item</th><th>Amount</th></tr>
<tr><td>Home insurance premium</td><td>1 234,56 €</td></tr>
<tr><td>Broker fee</td><td>25,00 €</td></tr>
</table>
<p>Total due: 1 259,56 €</p>
</body></html>"#;

    /// A 7×5 red PNG: dimensions no placeholder icon has, to find it in the PDF.
    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAcAAAAFCAIAAAAG+GGPAAAAEUlEQVR4nGM4ISeHiRhoJAoAuykjjT2f0dIAAAAASUVORK5CYII=";

    fn config(pool_size: usize) -> PdfConfig {
        PdfConfig {
            binary: PathBuf::from("/usr/bin/wkhtmltopdf"),
            pool_size,
            max_jobs_per_process: 1000,
            timeout: Duration::from_secs(60),
        }
    }

    fn options(value: serde_json::Value) -> Result<PageLayout, template::RenderError> {
        let serde_json::Value::Object(map) = value else {
            panic!("not an object: {value}")
        };
        PageLayout::from_template_options(&map)
    }

    /// Runs a poppler tool on the PDF and returns its stdout.
    fn poppler(tool: &str, pdf: &[u8], extra: &[&str]) -> String {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), pdf).unwrap();
        let out = std::process::Command::new(tool)
            .args(extra)
            .arg(file.path())
            .args(if tool == "pdftotext" {
                &["-"][..]
            } else {
                &[][..]
            })
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn assert_invoice(pdf: &[u8]) {
        assert!(pdf.starts_with(b"%PDF-"), "not a PDF");
        let text = poppler("pdftotext", pdf, &[]);
        assert!(text.contains("Invoice INV-2024-0042"), "{text}");
        assert!(text.contains("Total due: 1 259,56 €"), "{text}");
    }

    /// Thousands of blurred text shadows: tens of seconds of work from a small file.
    fn slow_html() -> String {
        let paragraph =
            "<p style=\"text-shadow: 0 0 25px red\">slow paragraph lorem ipsum dolor sit amet</p>";
        format!("<html><body>{}</body></html>", paragraph.repeat(20_000))
    }

    fn kill_9(pid: u32) {
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits until `pid` is dead (a zombie nobody reaped yet, or gone).
    async fn wait_dead(pid: u32) {
        for _ in 0..500 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return,
                // A zombie leader whose other threads are still exiting cannot be reaped
                // yet: wait for the last thread too.
                Ok(stat)
                    if stat
                        .rsplit(')')
                        .next()
                        .is_some_and(|rest| rest.trim_start().starts_with('Z'))
                        && std::fs::read_dir(format!("/proc/{pid}/task"))
                            .map_or(0, |tasks| tasks.count())
                            <= 1 =>
                {
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        panic!("process {pid} did not die");
    }

    #[test]
    fn options_default_to_a4_portrait_with_15_mm_margins() {
        let parsed = options(json!({"format": "pdf", "compress": true})).unwrap();
        assert_eq!(parsed, PageLayout::default());
        assert_eq!(
            layout_args(&parsed),
            "-s A4 -O Portrait -T 15mm -R 15mm -B 15mm -L 15mm"
        );
    }

    #[test]
    fn options_read_size_orientation_and_margins() {
        let parsed = options(json!({
            "page_size": "letter", "orientation": "Landscape",
            "margin_mm": 10, "margin_top": 22.5, "margin_left": null
        }))
        .unwrap();
        assert_eq!(
            layout_args(&parsed),
            "-s Letter -O Landscape -T 22.5mm -R 10mm -B 10mm -L 10mm"
        );
        assert_eq!(
            layout_args(&options(json!({"page_size": "A5", "margin_right": 0})).unwrap()),
            "-s A5 -O Portrait -T 15mm -R 0mm -B 15mm -L 15mm"
        );
    }

    #[test]
    fn the_job_line_carries_the_hardening_and_the_layout() {
        let line = job_line(
            &PageLayout::default(),
            Path::new("/tmp/monassurance-pdf-x/in.html"),
            Path::new("/tmp/monassurance-pdf-x/out.pdf"),
        )
        .unwrap();
        assert_eq!(
            line,
            "--javascript-delay 0 --disable-javascript --disable-local-file-access \
             --proxy http://127.0.0.1:1 --encoding utf-8 --log-level info \
             -s A4 -O Portrait -T 15mm -R 15mm -B 15mm -L 15mm --no-outline \
             /tmp/monassurance-pdf-x/in.html /tmp/monassurance-pdf-x/out.pdf\n"
        );
    }

    #[test]
    fn paths_that_would_split_the_job_line_are_refused() {
        for path in [
            "/tmp/my dir/in.html",
            "/tmp/a\"b/in.html",
            "/tmp/a\\b/in.html",
            "tmp/in.html",
            "/tmp/a\nb",
        ] {
            let error = job_line(
                &PageLayout::default(),
                Path::new(path),
                Path::new("/tmp/out.pdf"),
            )
            .unwrap_err();
            assert!(
                matches!(&error, PdfError::Io(e) if e.kind() == io::ErrorKind::InvalidInput),
                "{path}: {error}"
            );
        }
    }

    #[test]
    fn only_a_complete_pdf_counts() {
        assert!(is_complete_pdf(b"%PDF-1.4\n...\n%%EOF\n"));
        assert!(!is_complete_pdf(b""));
        assert!(!is_complete_pdf(b"%PDF-1.4\n...half written"));
        assert!(!is_complete_pdf(b"<html>%%EOF"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn renders_a_one_page_invoice() {
        let engine = PdfEngine::new(config(1));
        let pdf = engine
            .render(INVOICE, &PageLayout::default())
            .await
            .unwrap();
        assert_invoice(&pdf);
        assert!(poppler("pdfinfo", &pdf, &[]).contains("Pages:           1\n"));
        engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn landscape_and_portrait_a4_differ_in_page_size() {
        let engine = PdfEngine::new(config(1));
        let portrait = engine
            .render(INVOICE, &PageLayout::default())
            .await
            .unwrap();
        let landscape = engine
            .render(
                INVOICE,
                &options(json!({"orientation": "landscape"})).unwrap(),
            )
            .await
            .unwrap();
        let letter = engine
            .render(INVOICE, &options(json!({"page_size": "Letter"})).unwrap())
            .await
            .unwrap();
        // Qt writes the MediaBox in whole points (595 x 842), not ISO's 595.28 x 841.89.
        let portrait = poppler("pdfinfo", &portrait, &[]);
        let landscape = poppler("pdfinfo", &landscape, &[]);
        assert!(
            portrait.contains("Page size:       595 x 842 pts (A4)"),
            "{portrait}"
        );
        assert!(
            landscape.contains("Page size:       842 x 595 pts (A4)"),
            "{landscape}"
        );
        let letter = poppler("pdfinfo", &letter, &[]);
        assert!(
            letter.contains("Page size:       612 x 792 pts (letter)"),
            "{letter}"
        );
        engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn templates_reach_neither_the_network_nor_local_files() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = std::thread::spawn({
            let (connections, stop) = (connections.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok(_) => {
                            connections.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            }
        });

        // QtWebKit will not display /etc/passwd (no type it shows), hardened or not, so a
        // local text file it would display stands in for the worker's secrets.
        let secrets = tempfile::tempdir().unwrap();
        let secret = secrets.path().join("secret.txt");
        std::fs::write(&secret, "LOCAL-SECRET-42").unwrap();
        let secret = secret.display();
        let html = format!(
            r#"<html><head><link rel=stylesheet href="http://127.0.0.1:{port}/s.css"></head><body>
<p>ssrf probe</p>
<img src="http://127.0.0.1:{port}/a.png">
<iframe src="http://127.0.0.1:{port}/"></iframe>
<img src="http://169.254.169.254/latest/meta-data/">
<iframe src="file:///etc/passwd"></iframe>
<img src="file:///etc/passwd">
<iframe src="file://{secret}"></iframe>
<img src="data:image/png;base64,{PNG}" width="70" height="50">
</body></html>"#
        );
        let engine = PdfEngine::new(config(1));
        let pdf = engine.render(&html, &PageLayout::default()).await.unwrap();

        // Fetches are asynchronous inside wkhtmltopdf: give a late one a moment to land.
        for _ in 0..50 {
            if connections.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::SeqCst);
        watcher.join().unwrap();
        assert_eq!(
            connections.load(Ordering::SeqCst),
            0,
            "the template reached the listener"
        );

        let text = poppler("pdftotext", &pdf, &[]);
        assert!(text.contains("ssrf probe"), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("root:")), "{text}");
        assert!(!text.contains("LOCAL-SECRET-42"), "{text}");
        // Blocked images print as small placeholder icons; the data: one is there itself.
        let images = poppler("pdfimages", &pdf, &["-list"]);
        let data_images = images
            .lines()
            .filter(|line| {
                line.split_whitespace()
                    .skip(2)
                    .take(3)
                    .eq(["image", "7", "5"])
            })
            .count();
        assert_eq!(data_images, 1, "{images}");
        engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn twenty_renders_are_served_by_one_warm_process() {
        let engine = PdfEngine::new(config(1));
        engine
            .render(INVOICE, &PageLayout::default())
            .await
            .unwrap();
        let first = engine.idle_pids();
        assert_eq!(first.len(), 1);
        for _ in 1..20 {
            assert_invoice(
                &engine
                    .render(INVOICE, &PageLayout::default())
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(engine.idle_pids(), first);
        assert_eq!((engine.restarts(), engine.recycled()), (0, 0));
        engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_process_is_recycled_after_its_job_quota() {
        let engine = PdfEngine::new(PdfConfig {
            max_jobs_per_process: 3,
            ..config(1)
        });
        let mut pids = Vec::new();
        for _ in 0..7 {
            assert_invoice(
                &engine
                    .render(INVOICE, &PageLayout::default())
                    .await
                    .unwrap(),
            );
            pids.extend(engine.idle_pids());
        }
        assert_eq!(engine.recycled(), 2);
        assert_eq!(engine.restarts(), 0);
        // Jobs 1-2 and 4-5 leave their process idle; 3 and 6 retire it; 7 is on the third.
        pids.dedup();
        assert_eq!(pids.len(), 3, "{pids:?}");
        engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_render_past_its_timeout_kills_the_process_and_the_next_one_works() {
        let engine = PdfEngine::new(PdfConfig {
            timeout: Duration::from_secs(3),
            ..config(1)
        });
        engine
            .render(INVOICE, &PageLayout::default())
            .await
            .unwrap();
        let [slow_pid] = engine.idle_pids()[..] else {
            panic!("one idle process expected")
        };
        let error = engine
            .render(&slow_html(), &PageLayout::default())
            .await
            .unwrap_err();
        assert!(
            matches!(error, PdfError::Timeout(t) if t == Duration::from_secs(3)),
            "{error}"
        );
        assert_eq!(engine.restarts(), 1);
        assert!(
            !std::path::Path::new(&format!("/proc/{slow_pid}")).exists(),
            "not reaped"
        );

        assert_invoice(
            &engine
                .render(INVOICE, &PageLayout::default())
                .await
                .unwrap(),
        );
        assert_ne!(engine.idle_pids(), [slow_pid]);
        assert_eq!(engine.restarts(), 1);
        engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_one_millisecond_timeout_times_out() {
        let engine = PdfEngine::new(PdfConfig {
            timeout: Duration::from_millis(1),
            ..config(1)
        });
        let error = engine
            .render(INVOICE, &PageLayout::default())
            .await
            .unwrap_err();
        assert!(matches!(error, PdfError::Timeout(_)), "{error}");
        assert_eq!(engine.restarts(), 1);
        assert!(engine.idle_pids().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn two_processes_serve_six_concurrent_renders() {
        let engine = PdfEngine::new(config(2));
        let renders = (0..6).map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.render(INVOICE, &PageLayout::default()).await })
        });
        for result in futures::future::join_all(renders).await {
            assert_invoice(&result.unwrap().unwrap());
        }
        let pids = engine.idle_pids();
        assert!((1..=2).contains(&pids.len()), "{pids:?}");
        assert_eq!(engine.restarts(), 0);
        engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_process_killed_mid_job_is_an_engine_error_and_is_replaced() {
        let engine = PdfEngine::new(config(1));
        engine
            .render(INVOICE, &PageLayout::default())
            .await
            .unwrap();
        let [pid] = engine.idle_pids()[..] else {
            panic!("one idle process expected")
        };
        let busy = tokio::spawn({
            let engine = engine.clone();
            async move { engine.render(&slow_html(), &PageLayout::default()).await }
        });
        for _ in 0..500 {
            if engine.idle_pids().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            engine.idle_pids().is_empty(),
            "the slow render never took the process"
        );
        kill_9(pid);

        let error = busy.await.unwrap().unwrap_err();
        assert!(
            matches!(&error, PdfError::Engine(m) if m.contains("SIGKILL")),
            "{error}"
        );
        assert_eq!(engine.restarts(), 1);
        assert_invoice(
            &engine
                .render(INVOICE, &PageLayout::default())
                .await
                .unwrap(),
        );
        assert_eq!(engine.restarts(), 1);
        engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_idle_process_that_died_is_replaced_before_use() {
        let engine = PdfEngine::new(config(1));
        engine
            .render(INVOICE, &PageLayout::default())
            .await
            .unwrap();
        let [pid] = engine.idle_pids()[..] else {
            panic!("one idle process expected")
        };
        kill_9(pid);
        wait_dead(pid).await;

        assert_invoice(
            &engine
                .render(INVOICE, &PageLayout::default())
                .await
                .unwrap(),
        );
        assert_eq!(engine.restarts(), 1);
        assert_ne!(engine.idle_pids(), [pid]);
        engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_engine_that_exits_is_reported_with_its_last_words() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-wkhtmltopdf");
        std::fs::write(&script, "#!/bin/sh\nread job\necho 'Loading page (1/2)' >&2\necho 'simulated crash' >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let engine = PdfEngine::new(PdfConfig {
            binary: script,
            ..config(1)
        });
        for attempt in 1..=2 {
            let error = engine
                .render(INVOICE, &PageLayout::default())
                .await
                .unwrap_err();
            let PdfError::Engine(message) = &error else {
                panic!("{error}")
            };
            assert!(
                message.contains("simulated crash") && message.contains("exit status: 3"),
                "{message}"
            );
            assert_eq!(engine.restarts(), attempt);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn shutdown_kills_every_process_and_refuses_later_renders() {
        let engine = PdfEngine::new(config(2));
        let layout = PageLayout::default();
        let (a, b) = tokio::join!(
            engine.render(INVOICE, &layout),
            engine.render(INVOICE, &layout)
        );
        a.unwrap();
        b.unwrap();
        let pids = engine.idle_pids();
        assert!(!pids.is_empty());
        engine.shutdown().await;
        for pid in pids {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "{pid} still there"
            );
        }
        let error = engine
            .render(INVOICE, &PageLayout::default())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("shut down"), "{error}");
        engine.shutdown().await;
    }

    #[test]
    fn the_engine_can_be_shared_across_tasks() {
        fn shared<T: Send + Sync + Clone + 'static>(_: &T) {}
        fn sendable<T: Send>(_: &T) {}
        let engine = PdfEngine::new(config(1));
        shared(&engine);
        sendable(&engine.render("", &PageLayout::default()));
    }
}
