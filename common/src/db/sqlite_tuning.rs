//! SQLite settings that sqlx has no option for, measured under the embedded API's list
//! benchmark (`scripts/bench-api`): each one took a share of every SQLite request.
//!
//! - Memory statistics off: with them on, every allocation of every connection takes one
//!   global mutex, and the connections' threads queued on it. Off, the embedded
//!   100-client list went from about 1,770 to 3,000 requests per second.
//! - mimalloc for SQLite's memory: glibc's malloc took about a tenth of the time of the
//!   connections' threads, and the rows they hand over are freed on the request's thread,
//!   where glibc's arenas contend.
//! - The query planner stability guarantee, per connection: without it, SQLite looks at
//!   the values bound to `LIMIT`, `OFFSET` and `LIKE` while planning, and re-prepares the
//!   statement whenever they are bound again, so every paginated list was parsed and
//!   planned anew on each request.

use std::ffi::{c_int, c_void};

use libsqlite3_sys as ffi;

/// Process-wide settings, applied once before the first SQLite connection opens: every
/// caller that opens one (the API's and worker's pools, the job queue) calls this first.
pub fn configure_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(mem_malloc),
            xFree: Some(mem_free),
            xRealloc: Some(mem_realloc),
            xSize: Some(mem_size),
            xRoundup: Some(mem_roundup),
            xInit: Some(mem_init),
            xShutdown: Some(mem_shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SAFETY: sqlite3_config must not run while another thread uses SQLite. `Once`
        // serialises the callers, and every SQLite connection of the process is opened
        // after this call. SQLite copies the methods. Once SQLite is initialised, it
        // refuses with SQLITE_MISUSE and changes nothing, so a late call is harmless.
        let (memstatus, malloc) = unsafe {
            (
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int),
                ffi::sqlite3_config(
                    ffi::SQLITE_CONFIG_MALLOC,
                    &methods as *const ffi::sqlite3_mem_methods,
                ),
            )
        };
        if memstatus != ffi::SQLITE_OK || malloc != ffi::SQLITE_OK {
            tracing::warn!(
                memstatus,
                malloc,
                "SQLite was already initialised: it keeps its default memory settings"
            );
        }
    });
}

// SQLite's memory methods on mimalloc. SQLite never asks for zero or negative sizes; a
// negative one would become a huge `usize`, which mimalloc refuses with null.

unsafe extern "C" fn mem_malloc(size: c_int) -> *mut c_void {
    // SAFETY: plain allocation; mimalloc aligns to at least 8 bytes, as SQLite needs.
    unsafe { libmimalloc_sys::mi_malloc(size as usize) }
}

unsafe extern "C" fn mem_free(ptr: *mut c_void) {
    // SAFETY: `ptr` came from mem_malloc or mem_realloc (or is null).
    unsafe { libmimalloc_sys::mi_free(ptr) }
}

unsafe extern "C" fn mem_realloc(ptr: *mut c_void, size: c_int) -> *mut c_void {
    // SAFETY: as mem_free for `ptr`.
    unsafe { libmimalloc_sys::mi_realloc(ptr, size as usize) }
}

unsafe extern "C" fn mem_size(ptr: *mut c_void) -> c_int {
    // SAFETY: as mem_free for `ptr`. SQLite's allocations stay far below 2 GiB.
    unsafe { libmimalloc_sys::mi_usable_size(ptr) as c_int }
}

unsafe extern "C" fn mem_roundup(size: c_int) -> c_int {
    // SAFETY: a pure computation.
    let rounded = unsafe { libmimalloc_sys::mi_good_size(size as usize) };
    c_int::try_from(rounded).unwrap_or(size)
}

unsafe extern "C" fn mem_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn mem_shutdown(_: *mut c_void) {}

/// Turns on the query planner stability guarantee for a new connection: a cached
/// statement keeps the plan it was prepared with (see the module's description).
pub async fn stable_plans(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is the connection's open handle, locked for us until `handle` drops;
    // ENABLE_QPSG takes an int (1 = on) and an optional int* for the new setting.
    let rc = unsafe {
        ffi::sqlite3_db_config(
            db,
            ffi::SQLITE_DBCONFIG_ENABLE_QPSG,
            1 as c_int,
            std::ptr::null_mut::<c_int>(),
        )
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(sqlx::Error::Configuration(
            format!("SQLite refused the query planner stability guarantee ({rc})").into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;
    use crate::db::{Db, Pool};

    #[tokio::test]
    async fn connections_use_mimalloc_keep_their_plans_and_count_no_memory() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap().to_owned();
        let settings =
            Settings::from_lookup(|key| (key == "DATA_DIR").then(|| data_dir.clone())).unwrap();
        let db = Db::connect(&settings).await.unwrap();
        let Pool::Sqlite(pool) = db.pool() else {
            panic!("the embedded default is SQLite");
        };
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("SELECT 1 LIMIT $1")
            .bind(5)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let mut handle = conn.lock_handle().await.unwrap();
        let mut qpsg: c_int = -1;
        // SAFETY: the locked handle is open; -1 reads the setting into `qpsg`.
        let rc = unsafe {
            ffi::sqlite3_db_config(
                handle.as_raw_handle().as_ptr(),
                ffi::SQLITE_DBCONFIG_ENABLE_QPSG,
                -1 as c_int,
                &mut qpsg as *mut c_int,
            )
        };
        assert_eq!(rc, ffi::SQLITE_OK);
        assert_eq!(qpsg, 1, "the query planner stability guarantee is on");
        // With statistics on, SQLite counts the bytes its open connections hold.
        // SAFETY: a plain read of a process-wide counter.
        assert_eq!(unsafe { ffi::sqlite3_memory_used() }, 0);
        // SQLite's allocations come from mimalloc: mimalloc knows their size.
        // SAFETY: sqlite3_malloc's block is freed with sqlite3_free below.
        unsafe {
            let block = ffi::sqlite3_malloc(100);
            assert!(!block.is_null());
            assert!(libmimalloc_sys::mi_is_in_heap_region(block));
            ffi::sqlite3_free(block);
        }
    }
}
