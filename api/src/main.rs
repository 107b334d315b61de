//! `monassurance-api`: the HTTP API and its administration commands.
//!
//! ```text
//! monassurance-api [serve]       the API alone (workers run as monassurance-worker)
//! monassurance-api all           the API and a worker in one process (embedded default)
//! monassurance-api migrate       apply database migrations and exit
//! monassurance-api create-admin --email EMAIL [--full-name NAME]
//!                                create an admin (or promote an existing user); the
//!                                password comes from ADMIN_PASSWORD or the first line of
//!                                standard input
//! ```

use std::io::BufRead;

use anyhow::{Context, bail};
use common::telemetry;
use common::{Db, Settings};
use monassurance_api::{Application, admin};

const USAGE: &str = "usage: monassurance-api [serve | all | migrate | create-admin --email EMAIL [--full-name NAME]]";

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run())
}

/// mimalloc rather than glibc's malloc: a request allocates and frees hundreds of small
/// objects (rows, strings, the JSON body), and glibc's malloc took a tenth of the API's
/// time under the list benchmark; with mimalloc the 100-client list costs about 12% less
/// CPU per request (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The positions of the options `tune_allocator` sets in `mi_option_e` of the mimalloc
// that libmimalloc-sys bundles (3.3.2, checked by a test); its Rust bindings do not name
// them.
#[cfg(target_os = "linux")]
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
#[cfg(target_os = "linux")]
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc's options. Its defaults keep freed memory for a second and commit each arena
/// up front, where the kernel backs it with transparent huge pages: an API that had checked
/// a few passwords (argon2id takes 19 MiB per check) sat at 90 MB. Committing on demand
/// and purging at once keep it under 50 MB (measured by `scripts/bench-api`) at no
/// measurable cost. The first arena is reserved at the process's first allocation, before
/// `main`, so this runs as a constructor, before any Rust code allocates.
#[cfg(target_os = "linux")]
extern "C" fn tune_allocator() {
    use libmimalloc_sys::mi_option_set;
    // SAFETY: mi_option_set only stores a setting; this runs at load time, single-threaded.
    unsafe {
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        mi_option_set(PURGE_DELAY, 0);
    }
}

#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = Settings::from_env()?;
    telemetry::init_tracing(&settings);
    match args.first().map(String::as_str) {
        None | Some("serve") => serve(settings, false).await,
        Some("all") => serve(settings, true).await,
        Some("migrate") => {
            Db::connect(&settings).await?.migrate().await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Some("create-admin") => create_admin(settings, &args[1..]).await,
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

async fn serve(settings: Settings, embedded_worker: bool) -> anyhow::Result<()> {
    let app = Application::build(settings, embedded_worker).await?;
    app.run_until(common::shutdown_signal()).await
}

async fn create_admin(settings: Settings, args: &[String]) -> anyhow::Result<()> {
    let mut email = None;
    let mut full_name = None;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--email" => email = Some(value.clone()),
            "--full-name" => full_name = Some(value.clone()),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    let email = email.with_context(|| format!("--email is required\n{USAGE}"))?;
    let password = match std::env::var("ADMIN_PASSWORD") {
        Ok(password) if !password.is_empty() => password,
        _ => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let db = Db::connect(&settings).await?;
    db.migrate().await?;
    let user =
        admin::create_or_promote(&db, &email, &password, full_name.as_deref(), &settings).await?;
    db.close().await;
    println!("admin {} ({}) is ready", user.email, user.id);
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{ARENA_EAGER_COMMIT, PURGE_DELAY};
    use libmimalloc_sys::{mi_option_get, mi_version};

    /// The mimalloc whose option positions `tune_allocator` uses: 3.3.2.
    const MIMALLOC_VERSION: std::ffi::c_int = 30302;

    #[test]
    fn the_allocator_is_tuned_before_main() {
        // SAFETY: plain reads of mimalloc's version and settings.
        let (version, eager_commit, purge_delay) = unsafe {
            (
                mi_version(),
                mi_option_get(ARENA_EAGER_COMMIT),
                mi_option_get(PURGE_DELAY),
            )
        };
        assert_eq!(
            version, MIMALLOC_VERSION,
            "another mimalloc: check the option positions in tune_allocator"
        );
        assert_eq!((eager_commit, purge_delay), (0, 0));
    }
}
