//! The bare cost of a password check, for `scripts/bench-api`: the baseline that the
//! login benchmark's "time per login above the argon2 cost" is measured against.
//!
//! Hashes one password with the application's own function (argon2id, the parameters the
//! app uses), then verifies it with the application's own blocking verifier:
//! `--count` times one after another on one thread (latency), then on `--threads` threads
//! at once for `--seconds` (throughput of the whole machine). Prints one JSON object.
//!
//! ```text
//! cargo run --release -p monassurance-common --example argon2_bench -- --count 50 --threads 2 --seconds 5
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use monassurance_common::auth::{hash_password_blocking, verify_password_blocking};

fn main() -> anyhow::Result<()> {
    let mut count = 50usize;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut seconds = 5.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--count" => count = value.parse()?,
            "--threads" => threads = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            other => anyhow::bail!("unknown option {other:?}"),
        }
    }
    let password = "bench-password-0123456789";
    let hash = hash_password_blocking(password)?;
    anyhow::ensure!(verify_password_blocking(password, &hash), "verify failed");

    // One thread, one verify after another.
    let mut ms = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        anyhow::ensure!(verify_password_blocking(password, &hash), "verify failed");
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;

    // Every thread at once: what the machine's cores can verify per second.
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (done, stop, hash) = (done.clone(), stop.clone(), hash.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert!(verify_password_blocking(password, &hash));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a thread panicked"))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let verified = done.load(Ordering::Relaxed);

    let params = hash.split('$').nth(3).unwrap_or("?");
    println!(
        "{}",
        serde_json::json!({
            "params": params,
            "count": count,
            "single_p50_ms": at(0.5),
            "single_p99_ms": at(0.99),
            "single_mean_ms": mean,
            "threads": threads,
            "parallel_seconds": elapsed,
            "parallel_verifies": verified,
            "parallel_per_second": verified as f64 / elapsed,
        })
    );
    Ok(())
}
