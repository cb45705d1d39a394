//! A VFS over SQLite's default one that hands a transaction's WAL appends to the kernel in a
//! few large writes.
//!
//! SQLite appends a committed transaction to the WAL one frame at a time, each frame as two
//! writes (its 24-byte header, then the page): two system calls per page, a quarter of the
//! writer thread's time under load. Here consecutive writes to a WAL file are gathered in memory
//! and written in pieces of up to 128 KiB when the WAL is synced, read, measured, truncated or
//! closed, or when a write does not continue them. Nothing else changes: every other file, and
//! every other call, goes straight to the default VFS.
//!
//! This is correct only where every commit syncs the WAL (`synchronous = FULL` or `EXTRA`, set
//! on every connection this crate opens): a commit becomes visible to other connections after
//! its sync, so by then its frames are in the file. Under `synchronous = NORMAL` a commit is
//! not synced and another connection could read a frame still held here.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name connections open the database with.
pub const NAME: &CStr = c"bluehook-wal";

/// Largest run of appends held before it is written anyway.
const MOST_HELD: usize = 4 << 20;

/// Most bytes handed to the default VFS in one write: its unix writer takes at most
/// `0x1ffff` at once (more than the largest page and its frame header, all SQLite ever asks).
const MOST_PER_WRITE: usize = 0x1ffff;

/// The default VFS, wrapped (a pointer SQLite keeps for the life of the process).
struct Base(*mut ffi::sqlite3_vfs);
// SAFETY: a registered VFS is immutable and may be used from any thread.
unsafe impl Send for Base {}
unsafe impl Sync for Base {}

static REGISTERED: OnceLock<Result<Base, String>> = OnceLock::new();

/// Registers the VFS (once per process); its name, or why it could not be. This is the crate's
/// first call into SQLite, so it puts the page cache in front of SQLite's first
/// ([`super::pcache`]: SQLite's configuration is fixed from its first use on).
pub fn register() -> Result<&'static CStr, String> {
    REGISTERED
        .get_or_init(|| {
            let _ = super::pcache::install();
            unsafe { register_once() }
        })
        .as_ref()
        .map(|_| NAME)
        .map_err(Clone::clone)
}

unsafe fn register_once() -> Result<Base, String> {
    let base = ffi::sqlite3_vfs_find(ptr::null());
    if base.is_null() {
        return Err("no default SQLite VFS".into());
    }
    // A copy of the default VFS (same path length, same application data, same functions), with
    // its own name, its own open, and room for this file's state in front of the default one's.
    let mut vfs: ffi::sqlite3_vfs = *base;
    vfs.zName = NAME.as_ptr();
    vfs.pNext = ptr::null_mut();
    vfs.szOsFile = (REAL_AT + (*base).szOsFile as usize) as c_int;
    vfs.xOpen = Some(open);
    let vfs = Box::leak(Box::new(vfs));
    let rc = ffi::sqlite3_vfs_register(vfs, 0);
    if rc != ffi::SQLITE_OK {
        return Err(format!("registering the SQLite VFS failed ({rc})"));
    }
    Ok(Base(base))
}

fn base() -> *mut ffi::sqlite3_vfs {
    match REGISTERED.get() {
        Some(Ok(base)) => base.0,
        // Only reachable through a registered VFS.
        _ => unreachable!("the VFS is used before it is registered"),
    }
}

/// One open file: the state in front, the default VFS's file behind it at [`REAL_AT`].
#[repr(C)]
struct File {
    /// SQLite's part: the methods table (first, as SQLite expects).
    base: ffi::sqlite3_file,
    /// Whether this is a WAL file (appends are held).
    wal: bool,
    /// Appends not yet written, and the file offset of their first byte.
    held: Vec<u8>,
    held_at: i64,
}

/// Where the default VFS's file starts: after [`File`], 8-byte aligned.
const REAL_AT: usize = std::mem::size_of::<File>().div_ceil(8) * 8;

unsafe fn real(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    (file as *mut u8).add(REAL_AT) as *mut ffi::sqlite3_file
}

unsafe fn state<'a>(file: *mut ffi::sqlite3_file) -> &'a mut File {
    &mut *(file as *mut File)
}

unsafe fn methods(file: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    &*(*real(file)).pMethods
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let base = base();
    ptr::write(
        file as *mut File,
        File {
            base: ffi::sqlite3_file {
                pMethods: ptr::null(),
            },
            wal: flags & ffi::SQLITE_OPEN_WAL != 0,
            held: Vec::new(),
            held_at: 0,
        },
    );
    let real = real(file);
    (*real).pMethods = ptr::null();
    let rc = ((*base).xOpen.expect("xOpen"))(base, name, real, flags, out_flags);
    if (*real).pMethods.is_null() {
        // Nothing to close: SQLite will not call this file's methods.
        ptr::drop_in_place(file as *mut File);
    } else {
        // Open, or failed with the default file still to be closed: SQLite calls close.
        (*file).pMethods = &METHODS;
    }
    rc
}

/// Writes the held appends.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    let f = state(file);
    if f.held.is_empty() {
        return ffi::SQLITE_OK;
    }
    let write = methods(file).xWrite.expect("xWrite");
    let mut rc = ffi::SQLITE_OK;
    for (i, chunk) in f.held.chunks(MOST_PER_WRITE).enumerate() {
        rc = write(
            real(file),
            chunk.as_ptr() as *const c_void,
            chunk.len() as c_int,
            f.held_at + (i * MOST_PER_WRITE) as i64,
        );
        #[cfg(test)]
        tests::WAL_WRITES.with(|n| n.set(n.get() + 1));
        if rc != ffi::SQLITE_OK {
            break;
        }
    }
    f.held.clear();
    rc
}

/// `then`, once the held appends are written (their error, if writing them failed).
unsafe fn flushed_then(file: *mut ffi::sqlite3_file, then: impl FnOnce() -> c_int) -> c_int {
    match flush(file) {
        ffi::SQLITE_OK => then(),
        rc => rc,
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let flushed = flush(file);
    let rc = (methods(file).xClose.expect("xClose"))(real(file));
    ptr::drop_in_place(file as *mut File);
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        rc
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let len = amount as usize;
    let (wal, starts_anew) = {
        let f = state(file);
        let continues = !f.held.is_empty() && f.held_at + f.held.len() as i64 == offset;
        (f.wal, !continues || f.held.len() + len > MOST_HELD)
    };
    if wal {
        if starts_anew {
            let rc = flush(file);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            state(file).held_at = offset;
        }
        if len <= MOST_HELD {
            state(file)
                .held
                .extend_from_slice(std::slice::from_raw_parts(data as *const u8, len));
            return ffi::SQLITE_OK;
        }
        #[cfg(test)]
        tests::WAL_WRITES.with(|n| n.set(n.get() + 1));
    }
    (methods(file).xWrite.expect("xWrite"))(real(file), data, amount, offset)
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    flushed_then(file, || {
        (methods(file).xRead.expect("xRead"))(real(file), data, amount, offset)
    })
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    flushed_then(file, || {
        (methods(file).xTruncate.expect("xTruncate"))(real(file), size)
    })
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    flushed_then(file, || {
        (methods(file).xSync.expect("xSync"))(real(file), flags)
    })
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    flushed_then(file, || {
        (methods(file).xFileSize.expect("xFileSize"))(real(file), size)
    })
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    (methods(file).xLock.expect("xLock"))(real(file), level)
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    (methods(file).xUnlock.expect("xUnlock"))(real(file), level)
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    (methods(file)
        .xCheckReservedLock
        .expect("xCheckReservedLock"))(real(file), out)
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    flushed_then(file, || {
        (methods(file).xFileControl.expect("xFileControl"))(real(file), op, arg)
    })
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    (methods(file).xSectorSize.expect("xSectorSize"))(real(file))
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    (methods(file)
        .xDeviceCharacteristics
        .expect("xDeviceCharacteristics"))(real(file))
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    page_size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    match methods(file).xShmMap {
        Some(f) => f(real(file), page, page_size, extend, out),
        None => ffi::SQLITE_IOERR,
    }
}

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    match methods(file).xShmLock {
        Some(f) => f(real(file), offset, n, flags),
        None => ffi::SQLITE_IOERR,
    }
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    if let Some(f) = methods(file).xShmBarrier {
        f(real(file))
    }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    match methods(file).xShmUnmap {
        Some(f) => f(real(file), delete),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let m = methods(file);
    match m.xFetch {
        Some(f) if m.iVersion >= 3 => f(real(file), offset, amount, out),
        _ => {
            *out = ptr::null_mut();
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn unfetch(file: *mut ffi::sqlite3_file, offset: i64, p: *mut c_void) -> c_int {
    let m = methods(file);
    match m.xUnfetch {
        Some(f) if m.iVersion >= 3 => f(real(file), offset, p),
        _ => ffi::SQLITE_OK,
    }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};
    use std::cell::Cell;

    thread_local! {
        /// Writes to WAL files made by this thread's connections.
        pub(super) static WAL_WRITES: Cell<u64> = const { Cell::new(0) };
    }

    fn open(path: &std::path::Path) -> Connection {
        let conn =
            Connection::open_with_flags_and_vfs(path, OpenFlags::default(), register().unwrap())
                .unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .unwrap();
        conn
    }

    fn wal_writes() -> u64 {
        WAL_WRITES.with(Cell::get)
    }

    #[test]
    fn a_transaction_reaches_the_wal_in_writes_of_128_kib() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("t.db"));
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY, body TEXT)")
            .unwrap();
        for round in 0..3 {
            let before = wal_writes();
            let tx = conn.unchecked_transaction().unwrap();
            for n in 0..300 {
                tx.execute(
                    "INSERT INTO t (n, body) VALUES (?1, ?2)",
                    rusqlite::params![round * 1000 + n, "x".repeat(1000)],
                )
                .unwrap();
            }
            tx.commit().unwrap();
            // About 80 pages of 4 KiB, 160 writes page by page; here 3 of at most 128 KiB.
            let writes = wal_writes() - before;
            assert!((3..=4).contains(&writes), "round {round}: {writes} writes");
        }
    }

    /// The transactions of the read-back test: small and large ones (one past the most held at
    /// once), some rolled back.
    const ROUNDS: i64 = 40;

    fn rows_in(round: i64) -> i64 {
        if round % 10 == 9 {
            5_000
        } else {
            1 + round * 7
        }
    }

    fn kept(round: i64) -> bool {
        round % 7 != 3
    }

    fn body(round: i64, n: i64) -> String {
        format!("{round}-{n}-{}", "y".repeat(900))
    }

    #[test]
    fn what_is_written_through_it_reads_back_the_same_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open(&path);
        // A small page cache: large transactions spill frames to the WAL before they commit.
        conn.execute_batch(
            "PRAGMA cache_size = 20; CREATE TABLE t (n INTEGER PRIMARY KEY, body TEXT);",
        )
        .unwrap();
        let other = Connection::open(&path).unwrap();
        let mut expected = 0i64;
        for round in 0..ROUNDS {
            let rows = rows_in(round);
            let tx = conn.unchecked_transaction().unwrap();
            for n in 0..rows {
                tx.execute(
                    "INSERT INTO t (n, body) VALUES (?1, ?2)",
                    rusqlite::params![round * 100_000 + n, body(round, n)],
                )
                .unwrap();
            }
            if kept(round) {
                tx.commit().unwrap();
                expected += rows;
            } else {
                tx.rollback().unwrap();
            }
            if round % 5 == 4 {
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    .unwrap();
            }
            // Another connection, through the default VFS, sees each commit whole.
            let seen: i64 = other
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(seen, expected, "after round {round}");
        }
        drop(other);
        drop(conn);
        let again = Connection::open(&path).unwrap();
        let check: String = again
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let (count, sum): (i64, i64) = again
            .query_row("SELECT count(*), sum(length(body)) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(count, expected);
        let want: i64 = (0..ROUNDS)
            .filter(|&round| kept(round))
            .flat_map(|round| (0..rows_in(round)).map(move |n| body(round, n).len() as i64))
            .sum();
        assert_eq!(sum, want);
    }
}
