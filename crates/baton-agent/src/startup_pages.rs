//! Dropping the code pages only startup ran.
//!
//! Starting the agent (parsing the command line and the YAML file, loading certificates,
//! resolving and connecting to etcd, relocating the binary) runs code the HA loop never runs
//! again, and the kernel maps file pages around every fault (64 kB at a time), so after the
//! first cycle most of the binary's text and read-only data, and of libc's, is mapped into
//! the process: `VmRSS` counts all of it (README.md, "Benchmarks"). So does the code of what
//! happens before a member settles: bootstrapping, cloning, starting PostgreSQL, a failover.
//! Each time the agent has settled ([`Settled`]: its decision's reason unchanged for
//! [`Settled::QUIET_CYCLES`] cycles in a row, nothing failed, no long action running),
//! [`release_startup_pages`] tells the kernel that none of those pages is needed
//! (`MADV_DONTNEED`): the mappings stay, the pages stay in the page cache, and the code the
//! loops run next is mapped again at its next use (a minor fault), so the mapped set becomes
//! what the agent runs, not what it ran once. Release builds link the idle code together
//! (crates/baton-cli/build.rs), so what is mapped again is a few hundred pages.
//!
//! Only mappings whose pages are all identical to their file are released: private, not
//! writable, backed by a file, with no anonymous (copied-on-write) page and no locked page.
//! Dropping such a page loses nothing; a relocated segment (`.data.rel.ro`, which holds
//! anonymous pages after relocation), the heap, stacks and anything writable are never
//! touched. Nothing is done that the kernel's own reclaim does not do to such pages under
//! memory pressure (it unmaps clean file pages and reads them again at the next fault); this
//! only does it early, for this process. The fence guard does not do it: its code stays mapped
//! as it was.

use std::ffi::c_void;
use std::ptr::NonNull;

/// When to release: after [`Self::QUIET_CYCLES`] quiet cycles in a row (same reason as the
/// cycle before, nothing failed, no long action), once per settled stretch; a cycle that is
/// not quiet starts the count again (so a failover or a clone is followed by one release).
#[derive(Debug, Default)]
pub struct Settled {
    quiet: u32,
}

impl Settled {
    pub const QUIET_CYCLES: u32 = 2;

    /// Record one cycle; true when the pages should be released now.
    pub fn after_cycle(&mut self, quiet: bool) -> bool {
        if !quiet {
            self.quiet = 0;
            return false;
        }
        self.quiet = self.quiet.saturating_add(1);
        self.quiet == Self::QUIET_CYCLES
    }
}

/// A mapping of this process whose pages can be dropped without losing anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Releasable {
    pub start: usize,
    pub len: usize,
    /// Resident when it was read, in kB.
    pub rss_kb: u64,
    pub path: String,
}

/// What [`release_startup_pages`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub mappings: usize,
    /// Resident in those mappings before, in kB.
    pub kb: u64,
    /// Mappings the kernel refused (left as they were).
    pub failed: usize,
}

/// The releasable mappings in `smaps` (the text of `/proc/self/smaps`): see the module
/// documentation for the rule.
pub fn releasable(smaps: &str) -> Vec<Releasable> {
    let mut out = Vec::new();
    let mut current: Option<(Releasable, bool)> = None;
    let finish = |m: Option<(Releasable, bool)>, out: &mut Vec<Releasable>| {
        if let Some((r, true)) = m {
            out.push(r);
        }
    };
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            finish(current.take(), &mut out);
            current = Some(header);
            continue;
        }
        let Some((candidate, keep)) = current.as_mut() else {
            continue;
        };
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kb = rest
            .trim()
            .strip_suffix("kB")
            .and_then(|v| v.trim().parse::<u64>().ok());
        match (key, kb) {
            ("Rss", Some(kb)) => candidate.rss_kb = kb,
            ("Anonymous" | "Locked" | "AnonHugePages" | "Swap", Some(kb)) if kb > 0 => {
                *keep = false;
            }
            // A field that should be a size but is not: refuse rather than guess.
            ("Anonymous" | "Locked", None) => *keep = false,
            _ => {}
        }
    }
    finish(current.take(), &mut out);
    out
}

/// A mapping's header line (`start-end perms offset dev inode [path]`): `None` when `line`
/// is not one; else the mapping and whether its kind may be released (private, not writable,
/// backed by a file that still exists), before its fields are checked.
fn mapping_header(line: &str) -> Option<(Releasable, bool)> {
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    if perms.len() != 4 || !inode.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let path = fields.collect::<Vec<_>>().join(" ");
    let perms = perms.as_bytes();
    let private = perms[3] == b'p';
    let writable = perms[1] == b'w';
    let file_backed = inode != "0" && path.starts_with('/') && !path.ends_with("(deleted)");
    let eligible = private && !writable && file_backed && end > start;
    Some((
        Releasable {
            start,
            len: end.saturating_sub(start),
            rss_kb: 0,
            path,
        },
        eligible,
    ))
}

/// Drop the pages of `mappings` from this process (`MADV_DONTNEED`). Each must come from
/// [`releasable`] on this process's own `smaps`, read just before.
pub fn release(mappings: &[Releasable]) -> Released {
    let mut done = Released::default();
    for m in mappings {
        let Some(addr) = NonNull::new(m.start as *mut c_void) else {
            continue;
        };
        // SAFETY: the range is a whole mapping of this process that `releasable` found
        // private, read-only, file-backed and without an anonymous or locked page: every
        // page in it is a clean page-cache page, so dropping it loses nothing, and the next
        // access maps the same file contents again. Nothing in the agent maps, unmaps or
        // `mprotect`s such ranges while it runs (libraries are never unloaded), so the range
        // still holds that mapping here.
        #[allow(unsafe_code)]
        let result = unsafe {
            nix::sys::mman::madvise(addr, m.len, nix::sys::mman::MmapAdvise::MADV_DONTNEED)
        };
        match result {
            Ok(()) => {
                done.mappings += 1;
                done.kb += m.rss_kb;
            }
            Err(_) => done.failed += 1,
        }
    }
    done
}

/// Release every releasable mapping of this process (see the module documentation).
pub fn release_startup_pages() -> std::io::Result<Released> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(release(&releasable(&smaps)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_released_once_per_settled_stretch() {
        let mut s = Settled::default();
        // Start-up: the first cycle has no reason before it; then a clone changes it.
        let cycles = [
            false, false, true, true, true, true, false, true, true, true,
        ];
        let fired: Vec<bool> = cycles.iter().map(|q| s.after_cycle(*q)).collect();
        assert_eq!(
            fired,
            [
                false, false, false, true, false, false, false, false, true, false
            ]
        );
    }

    const SMAPS: &str = "\
559a8eccd000-559a8ef4e000 r--p 00000000 fe:00 5341187                    /usr/bin/pgbaton
Size:               2564 kB
Rss:                1344 kB
Anonymous:             0 kB
Locked:                0 kB
559a8ef4e000-559a8f587000 r-xp 00280000 fe:00 5341187                    /usr/bin/pgbaton
Size:               6372 kB
Rss:                5668 kB
Anonymous:             0 kB
Locked:                0 kB
559a8f587000-559a8f5d4000 r--p 008b8000 fe:00 5341187                    /usr/bin/pgbaton
Size:                308 kB
Rss:                 308 kB
Anonymous:           308 kB
Locked:                0 kB
559a8f5d4000-559a8f5d9000 rw-p 00904000 fe:00 5341187                    /usr/bin/pgbaton
Size:                 20 kB
Rss:                  20 kB
Anonymous:            20 kB
559a90000000-559a90083000 rw-p 00000000 00:00 0                          [heap]
Size:                524 kB
Rss:                 460 kB
Anonymous:           460 kB
7f60f0400000-7f60f0556000 r-xp 00028000 fe:00 1234                       /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1368 kB
Rss:                1132 kB
Anonymous:             0 kB
Locked:                0 kB
7f60f0600000-7f60f0610000 r--s 00000000 fe:00 999                        /var/tmp/shared
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
7f60f0700000-7f60f0710000 r-xp 00000000 fe:00 1235                       /usr/lib/locked.so
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
Locked:               64 kB
7f60f0800000-7f60f0810000 r-xp 00000000 fe:00 1236                       /usr/lib/gone.so (deleted)
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
7ffd8444d000-7ffd8446e000 rw-p 00000000 00:00 0                          [stack]
Rss:                 164 kB
Anonymous:           164 kB
7ffd844f0000-7ffd844f2000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_private_read_only_file_mappings_are_releasable() {
        let found: Vec<(String, usize, u64)> = releasable(SMAPS)
            .into_iter()
            .map(|r| (r.path, r.start, r.rss_kb))
            .collect();
        assert_eq!(
            found,
            [
                ("/usr/bin/pgbaton".to_owned(), 0x559a8eccd000, 1344),
                ("/usr/bin/pgbaton".to_owned(), 0x559a8ef4e000, 5668),
                (
                    "/usr/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
                    0x7f60f0400000,
                    1132
                ),
            ],
            "the relocated r--p segment (anonymous pages), writable, shared, locked, deleted \
             and special mappings must be left alone"
        );
    }

    #[test]
    fn an_unreadable_size_keeps_the_mapping() {
        let smaps = "\
7f60f0400000-7f60f0556000 r-xp 00028000 fe:00 1234                       /lib/libc.so.6
Rss:                1132 kB
Anonymous:          many
";
        assert!(releasable(smaps).is_empty());
    }

    /// A real mapping: a read-only private file mapping that was read loses its resident
    /// pages and still reads the same bytes; a private mapping that was written (a page
    /// copied on write) and then made read-only is never offered.
    #[test]
    fn released_pages_read_back_the_same_and_written_pages_are_never_released() {
        use std::io::Write;
        use std::num::NonZeroUsize;

        use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

        let page = 4096;
        let len = 64 * page;
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        file.write_all(&bytes).expect("write");
        file.flush().expect("flush");
        let map = |prot: ProtFlags| {
            // SAFETY: a fresh private mapping of a file this test owns, unmapped below.
            #[allow(unsafe_code)]
            unsafe {
                mmap(
                    None,
                    NonZeroUsize::new(len).expect("non-zero"),
                    prot,
                    MapFlags::MAP_PRIVATE,
                    file.as_file(),
                    0,
                )
            }
            .expect("mmap")
        };
        let read_only = map(ProtFlags::PROT_READ);
        let written = map(ProtFlags::PROT_READ | ProtFlags::PROT_WRITE);
        let view = |p: NonNull<c_void>| {
            // SAFETY: `len` readable bytes mapped above and still mapped.
            #[allow(unsafe_code)]
            unsafe {
                std::slice::from_raw_parts(p.as_ptr().cast::<u8>(), len)
            }
        };
        assert_eq!(view(read_only), &bytes[..]);
        // SAFETY: the writable private mapping above; the write stays in this process. Made
        // read-only afterwards, as the loader does with a relocated segment: the copied page
        // must keep it from being released although it is no longer writable.
        #[allow(unsafe_code)]
        unsafe {
            *written.as_ptr().cast::<u8>() = 0xAA;
            nix::sys::mman::mprotect(written, len, ProtFlags::PROT_READ).expect("mprotect");
        }
        let of = |p: NonNull<c_void>| {
            let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
            releasable(&smaps)
                .into_iter()
                .find(|r| r.start == p.as_ptr() as usize)
        };
        let candidate = of(read_only).expect("the read-only mapping is releasable");
        assert_eq!(candidate.len, len);
        assert!(
            candidate.rss_kb > 0,
            "read above, so resident: {candidate:?}"
        );
        assert_eq!(
            of(written),
            None,
            "a written private mapping holds data of its own"
        );

        let done = release(std::slice::from_ref(&candidate));
        assert_eq!((done.mappings, done.failed), (1, 0));
        let after = of(read_only).expect("still mapped");
        assert_eq!(after.rss_kb, 0, "its pages were dropped: {after:?}");
        assert_eq!(
            view(read_only),
            &bytes[..],
            "and read back the file's bytes"
        );

        // SAFETY: both mappings were made above and nothing refers to them any more.
        #[allow(unsafe_code)]
        unsafe {
            munmap(read_only, len).expect("munmap");
            munmap(written, len).expect("munmap");
        }
    }
}
