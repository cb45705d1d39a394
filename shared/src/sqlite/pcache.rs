//! A page cache over SQLite's own that spares it a walk through every cached page at the end of
//! each transaction.
//!
//! When a B-tree page splits, SQLite renumbers the new pages into ascending order and parks one
//! of them for a moment under the locking page's number, a page no database ever uses (262,145
//! with 4 KiB pages). Its page cache remembers the largest number it has held, and at the end of
//! every transaction it drops the pages past the database's end: with that remembered number far
//! past the end it walks its whole hash table (8,000 pages with 32 MiB of cache) to find none.
//! That walk was a tenth of the writer thread's time under load.
//!
//! Here every call goes through to SQLite's cache unchanged, and each cache also keeps its own
//! largest page number, leaving the parked one out. The end-of-transaction drop is passed on
//! only when a page at or past the limit may be held. No page stays under the parked number:
//! the renumbering moves it on at once, and SQLite refuses to read the locking page.

use std::ffi::{c_int, c_uint};
use std::sync::OnceLock;

use rusqlite::ffi;

/// Where SQLite's locking byte range starts (`PENDING_BYTE`; only its test builds move it).
const PENDING_BYTE: c_uint = 0x4000_0000;

/// SQLite's page cache methods, wrapped.
struct Base(ffi::sqlite3_pcache_methods2);
// SAFETY: SQLite's default page cache methods are plain functions, safe from any thread (each
// cache is used by one connection at a time, under its mutex).
unsafe impl Send for Base {}
unsafe impl Sync for Base {}

/// SQLite's methods, kept before this cache is installed in front of them.
static BASE: OnceLock<Base> = OnceLock::new();
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// Puts this cache in front of SQLite's for every connection of the process. It must come before
/// SQLite's first use in the process (its configuration is fixed from then on); once that has
/// happened, this says why and SQLite's cache stays on its own.
pub fn install() -> Result<(), String> {
    INSTALLED
        .get_or_init(|| {
            let installed = unsafe { install_once() };
            if let Err(e) = &installed {
                tracing::warn!(error = %e, "SQLite's page cache walks itself at each commit");
            }
            installed
        })
        .clone()
}

unsafe fn install_once() -> Result<(), String> {
    let mut base: ffi::sqlite3_pcache_methods2 = std::mem::zeroed();
    let rc = ffi::sqlite3_config(
        ffi::SQLITE_CONFIG_GETPCACHE2,
        &mut base as *mut ffi::sqlite3_pcache_methods2,
    );
    if rc != ffi::SQLITE_OK || base.xCreate.is_none() {
        return Err(format!("SQLite's page cache is out of reach ({rc})"));
    }
    let base = &BASE.get_or_init(|| Base(base)).0;
    let methods = ffi::sqlite3_pcache_methods2 {
        iVersion: base.iVersion,
        pArg: base.pArg,
        xInit: base.xInit,
        xShutdown: base.xShutdown,
        xCreate: Some(create),
        xCachesize: Some(cachesize),
        xPagecount: Some(pagecount),
        xFetch: Some(fetch),
        xUnpin: Some(unpin),
        xRekey: Some(rekey),
        xTruncate: Some(truncate),
        xDestroy: Some(destroy),
        xShrink: Some(shrink),
    };
    let rc = ffi::sqlite3_config(
        ffi::SQLITE_CONFIG_PCACHE2,
        &methods as *const ffi::sqlite3_pcache_methods2,
    );
    if rc != ffi::SQLITE_OK {
        return Err(format!(
            "SQLite was in use before its page cache could be wrapped ({rc})"
        ));
    }
    Ok(())
}

fn base() -> &'static ffi::sqlite3_pcache_methods2 {
    match BASE.get() {
        Some(base) => &base.0,
        // Only reachable through an installed cache, which is after the base is kept.
        None => unreachable!("the page cache is used before it is installed"),
    }
}

/// One cache: SQLite's, and the largest page number it holds but the parked one.
struct Cache {
    base: *mut ffi::sqlite3_pcache,
    /// The locking page's number at this cache's page size.
    parked: c_uint,
    /// At least the largest page number held (0: none), the parked one left out.
    most: c_uint,
}

unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a mut Cache {
    &mut *(p as *mut Cache)
}

unsafe extern "C" fn create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let inner = (base().xCreate.unwrap())(page_size, extra, purgeable);
    if inner.is_null() {
        return inner;
    }
    let parked = PENDING_BYTE / (page_size.max(1) as c_uint) + 1;
    Box::into_raw(Box::new(Cache {
        base: inner,
        parked,
        most: 0,
    })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn cachesize(p: *mut ffi::sqlite3_pcache, n: c_int) {
    (base().xCachesize.unwrap())(cache(p).base, n)
}

unsafe extern "C" fn pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    (base().xPagecount.unwrap())(cache(p).base)
}

unsafe extern "C" fn fetch(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let c = cache(p);
    let page = (base().xFetch.unwrap())(c.base, key, create);
    if !page.is_null() && key != c.parked && key > c.most {
        c.most = key;
    }
    page
}

unsafe extern "C" fn unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    (base().xUnpin.unwrap())(cache(p).base, page, discard)
}

unsafe extern "C" fn rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let c = cache(p);
    (base().xRekey.unwrap())(c.base, page, old, new);
    #[cfg(test)]
    if new == c.parked {
        counts::bump(&counts::PARKED);
    }
    if new != c.parked && new > c.most {
        c.most = new;
    }
}

unsafe extern "C" fn truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let c = cache(p);
    // Nothing at or past the limit: SQLite's cache would walk every page it holds to find so.
    if c.most >= limit {
        #[cfg(test)]
        counts::bump(&counts::PASSED);
        (base().xTruncate.unwrap())(c.base, limit);
        c.most = limit.saturating_sub(1);
    }
}

unsafe extern "C" fn destroy(p: *mut ffi::sqlite3_pcache) {
    let c = Box::from_raw(p as *mut Cache);
    (base().xDestroy.unwrap())(c.base);
}

unsafe extern "C" fn shrink(p: *mut ffi::sqlite3_pcache) {
    if let Some(shrink) = base().xShrink {
        shrink(cache(p).base)
    }
}

#[cfg(test)]
pub(super) mod counts {
    use std::cell::Cell;

    thread_local! {
        /// Pages this thread's connections parked under the locking page's number.
        pub static PARKED: Cell<u64> = const { Cell::new(0) };
        /// End-of-transaction drops passed on to SQLite's cache.
        pub static PASSED: Cell<u64> = const { Cell::new(0) };
    }

    pub fn bump(counter: &'static std::thread::LocalKey<Cell<u64>>) {
        counter.with(|c| c.set(c.get() + 1));
    }

    pub fn get(counter: &'static std::thread::LocalKey<Cell<u64>>) -> u64 {
        counter.with(Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::counts::{get, PARKED, PASSED};
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    /// Random keys into a table with free pages, every tenth transaction rolled back after
    /// growing the file: many pages are parked while splits renumber them, the drops passed on
    /// are those of the rollbacks (pages past the end to forget), not every commit's, and the
    /// table holds exactly what was committed.
    #[test]
    fn the_walks_left_out_are_only_those_with_nothing_to_drop() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open_connection(&dir.path().join("t.db")).unwrap();
        super::install().expect("installed before SQLite's first use");
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut want: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
        let (parked, passed) = (get(&PARKED), get(&PASSED));
        let (mut commits, mut rolled_back) = (0u64, 0u64);
        for round in 0..300 {
            let tx = conn.unchecked_transaction().unwrap();
            let mut next = want.clone();
            // Every tenth round grows the file by 3 MB and is rolled back.
            let grows = round % 10 == 9;
            for _ in 0..if grows { 3000 } else { 60 } {
                let k = rng.random_range(0..200_000i64) + if grows { 1_000_000 } else { 0 };
                let v = vec![
                    (k % 251) as u8;
                    rng.random_range(100..900) + if grows { 1000 } else { 0 }
                ];
                tx.execute("INSERT OR REPLACE INTO t(k, v) VALUES (?1, ?2)", (k, &v))
                    .unwrap();
                next.insert(k, v);
            }
            // Deletes leave free pages, which later splits take out of order.
            for _ in 0..20 {
                let from = rng.random_range(0..200_000i64);
                tx.execute("DELETE FROM t WHERE k BETWEEN ?1 AND ?1 + 300", [from])
                    .unwrap();
                next.retain(|k, _| !(from..=from + 300).contains(k));
            }
            if grows {
                tx.rollback().unwrap();
                rolled_back += 1;
                continue;
            }
            tx.commit().unwrap();
            commits += 1;
            want = next;
        }
        let parked = get(&PARKED) - parked;
        let passed = get(&PASSED) - passed;
        assert!(
            parked > commits,
            "{parked} pages parked in {commits} commits"
        );
        // Passed on: each rolled-back round's drop of the pages it added past the end (30 here),
        // not every commit's.
        assert!(
            (rolled_back..commits / 4).contains(&passed),
            "{passed} walks passed on in {commits} commits and {rolled_back} rollbacks"
        );
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let mut stmt = conn.prepare("SELECT k, v FROM t ORDER BY k").unwrap();
        let got: BTreeMap<i64, Vec<u8>> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(got == want, "{} rows, {} committed", got.len(), want.len());
    }
}
