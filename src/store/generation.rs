//! The data directory: which generation of logs is current, the lock that keeps a
//! second broker out, and reading a generation back at start (design §11).
//!
//! ```text
//! DIR/LOCK                         flock(2)ed by the running broker
//! DIR/CURRENT                      "shardmq data format 3\ngeneration 7\n"
//! DIR/gen-0000000007/shard-0/      shard 0's log: 0000000000.log, 0000000001.log, ...
//! DIR/gen-0000000007/shard-1/      ...
//! DIR/damaged-gen-0000000006-…/    a generation in which recovery found damage
//! ```
//!
//! Every start reads the current generation whole (every shard's log, whatever the
//! shard count that wrote it), rebuilds the state ([`crate::store::replay`]), and
//! writes it as snapshots into the next generation, one log per shard of this run;
//! only when every shard has made its snapshot durable does `CURRENT` name the new
//! generation (written to a temporary file, fdatasynced, renamed over, directory
//! synced), and the old one is removed. So a start is a compaction: recovery time and
//! disk use follow what is live, not history; and `--shards` may change between runs
//! (sessions are re-homed by client id). A crash at any point of a start leaves
//! `CURRENT` naming a complete generation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::header::HeaderError;
use super::recovery::{parse_segment_file_name, Recovery, Unusable, Verdict};
use super::replay::{Replay, Restored};

/// The data directory format this build writes, and the newest it reads (2 added
/// the shared-subscription records, 3 the MQTT 5.0 fields; 1 and 2 are read as
/// well).
pub const DATA_FORMAT: u32 = 3;

const CURRENT: &str = "CURRENT";
const LOCK: &str = "LOCK";

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("data directory {0} is in use by another shardmq (its LOCK file is locked)")]
    Locked(String),
    #[error(
        "data directory {path} holds data format {found}, newer than this shardmq reads \
         ({DATA_FORMAT}): run a shardmq at least as new as the one that wrote it"
    )]
    NewerFormat { path: String, found: u32 },
    #[error("data directory {path}: {what}")]
    Invalid { path: String, what: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An open, locked data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Held for the broker's life: the flock goes with it.
    _lock: File,
    generation: u64,
}

/// What reading a generation found besides the state, for the start-up log.
#[derive(Debug, Default)]
pub struct Report {
    pub segments: usize,
    pub bytes: u64,
    pub records: u64,
    /// One line per damaged segment: what was set aside.
    pub damage: Vec<String>,
}

/// The directory of generation `g`.
pub fn generation_dir(dir: &Path, g: u64) -> PathBuf {
    dir.join(format!("gen-{g:010}"))
}

/// The directory of shard `shard`'s log in generation `g`.
pub fn shard_dir(dir: &Path, g: u64, shard: usize) -> PathBuf {
    generation_dir(dir, g).join(format!("shard-{shard}"))
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

impl DataDir {
    /// Creates (if need be) and locks `path`, and reads its current generation.
    pub fn open(path: &Path) -> Result<(DataDir, Restored, Report), DataDirError> {
        fs::create_dir_all(path).map_err(io_err(path))?;
        let lock_path = path.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock on a descriptor we own; released when `lock` closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(DataDirError::Locked(path.display().to_string()));
            }
            return Err(io_err(&lock_path)(e));
        }
        let generation = read_current(path)?;
        let mut dir = DataDir {
            path: path.to_owned(),
            _lock: lock,
            generation: generation.unwrap_or(0),
        };
        let (restored, report) = match generation {
            Some(g) => read_generation(&generation_dir(path, g))?,
            None => (Restored::default(), Report::default()),
        };
        if generation.is_none() {
            dir.generation = next_free_generation(path);
        }
        Ok((dir, restored, report))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The generation read at start.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Creates the next generation's shard directories (synced), for the shards to
    /// write their snapshots into.
    pub fn prepare_next(&self, shards: usize) -> Result<u64, DataDirError> {
        let next = self.generation + 1;
        let gdir = generation_dir(&self.path, next);
        if gdir.exists() {
            // Left by a start that crashed before switching: never current.
            fs::remove_dir_all(&gdir).map_err(io_err(&gdir))?;
        }
        for k in 0..shards {
            let d = shard_dir(&self.path, next, k);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        sync_dir(&gdir).map_err(io_err(&gdir))?;
        sync_dir(&self.path).map_err(io_err(&self.path))?;
        Ok(next)
    }

    /// Makes generation `next` current and removes the others; one in which damage
    /// was found is renamed aside (`damaged-gen-…`) instead, for inspection.
    pub fn switch(&mut self, next: u64, keep_damaged: bool) -> Result<(), DataDirError> {
        let tmp = self.path.join("CURRENT.tmp");
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            write!(f, "shardmq data format {DATA_FORMAT}\ngeneration {next}\n")
                .map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        let cur = self.path.join(CURRENT);
        fs::rename(&tmp, &cur).map_err(io_err(&cur))?;
        sync_dir(&self.path).map_err(io_err(&self.path))?;
        let old = self.generation;
        self.generation = next;
        let entries = fs::read_dir(&self.path).map_err(io_err(&self.path))?;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(g) = name
                .to_str()
                .and_then(|n| n.strip_prefix("gen-"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if g == next {
                continue;
            }
            if g == old && keep_damaged {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let aside = self.path.join(format!("damaged-gen-{g:010}-{stamp}"));
                if let Err(e) = fs::rename(e.path(), &aside) {
                    tracing::warn!(error = %e, "could not set the damaged generation aside");
                }
            } else if let Err(err) = fs::remove_dir_all(e.path()) {
                tracing::warn!(dir = %e.path().display(), error = %err, "could not remove an old generation");
            }
        }
        sync_dir(&self.path).map_err(io_err(&self.path))
    }
}

/// A generation number above every `gen-*` directory present (a first start in a
/// directory where an earlier first start crashed before its switch).
fn next_free_generation(path: &Path) -> u64 {
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("gen-")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// The generation `CURRENT` names; `None` in a new directory.
fn read_current(path: &Path) -> Result<Option<u64>, DataDirError> {
    let cur = path.join(CURRENT);
    let text = match fs::read_to_string(&cur) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&cur)(e)),
    };
    let invalid = |what: &str| DataDirError::Invalid {
        path: path.display().to_string(),
        what: format!("CURRENT: {what}"),
    };
    let mut lines = text.lines();
    let format = lines
        .next()
        .and_then(|l| l.strip_prefix("shardmq data format "))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .ok_or_else(|| invalid("not a shardmq data directory marker"))?;
    if format > DATA_FORMAT {
        return Err(DataDirError::NewerFormat {
            path: path.display().to_string(),
            found: format,
        });
    }
    let g = lines
        .next()
        .and_then(|l| l.strip_prefix("generation "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| invalid("no generation line"))?;
    Ok(Some(g))
}

/// Reads every shard log of a generation directory into one replay.
pub fn read_generation(gdir: &Path) -> Result<(Restored, Report), DataDirError> {
    let mut replay = Replay::new();
    let mut report = Report::default();
    let mut shards: Vec<(u16, PathBuf)> = Vec::new();
    let entries = match fs::read_dir(gdir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DataDirError::Invalid {
                path: gdir.display().to_string(),
                what: "CURRENT names a generation that does not exist".into(),
            })
        }
        Err(e) => return Err(io_err(gdir)(e)),
    };
    for e in entries.flatten() {
        if let Some(k) = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("shard-"))
            .and_then(|n| n.parse::<u16>().ok())
        {
            shards.push((k, e.path()));
        }
    }
    shards.sort();
    for (k, sdir) in shards {
        let mut segs: Vec<(u32, PathBuf)> = fs::read_dir(&sdir)
            .map_err(io_err(&sdir))?
            .flatten()
            .filter_map(|e| Some((parse_segment_file_name(e.file_name().to_str()?)?, e.path())))
            .collect();
        segs.sort();
        let mut recovery = Recovery::new(k);
        for (named, p) in segs {
            let bytes = fs::read(&p).map_err(io_err(&p))?;
            report.segments += 1;
            report.bytes += bytes.len() as u64;
            let verdict = recovery.segment(named, &bytes, |r| {
                report.records += 1;
                replay.record(k, r.record, r.kind, r.body);
            });
            match verdict {
                Verdict::Keep { .. } => {}
                Verdict::SetAside(Unusable::Header(HeaderError::NewerFormat { found, .. })) => {
                    return Err(DataDirError::NewerFormat {
                        path: p.display().to_string(),
                        found,
                    });
                }
                Verdict::Truncate { at, end, .. } => report.damage.push(format!(
                    "{}: {} bytes from offset {at} set aside ({end:?}); records after them lost",
                    p.display(),
                    bytes.len() as u64 - at
                )),
                Verdict::SetAside(why) => report.damage.push(format!(
                    "{}: whole segment ({} bytes) set aside: {why}",
                    p.display(),
                    bytes.len()
                )),
            }
        }
    }
    Ok((replay.finish(), report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shardmq-gen-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_open_of_a_locked_directory_is_refused() {
        let d = tmp("lock");
        let (first, _, _) = DataDir::open(&d).unwrap();
        assert!(matches!(DataDir::open(&d), Err(DataDirError::Locked(_))));
        drop(first);
        assert!(DataDir::open(&d).is_ok());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_newer_format_is_refused_and_a_switch_replaces_the_generation() {
        let d = tmp("switch");
        let (mut dir, restored, _) = DataDir::open(&d).unwrap();
        assert!(restored.sessions.is_empty());
        let next = dir.prepare_next(2).unwrap();
        assert!(shard_dir(&d, next, 1).is_dir());
        dir.switch(next, false).unwrap();
        drop(dir);
        let (dir, _, _) = DataDir::open(&d).unwrap();
        assert_eq!(dir.generation(), next);
        drop(dir);
        // Formats 1 and 2 are read as well.
        for older in [1, 2] {
            fs::write(
                d.join(CURRENT),
                format!("shardmq data format {older}\ngeneration {next}\n"),
            )
            .unwrap();
            let (dir, _, _) = DataDir::open(&d).unwrap();
            assert_eq!(dir.generation(), next, "format {older}");
        }
        fs::write(d.join(CURRENT), "shardmq data format 99\ngeneration 1\n").unwrap();
        assert!(matches!(
            DataDir::open(&d),
            Err(DataDirError::NewerFormat { found: 99, .. })
        ));
        fs::write(d.join(CURRENT), "garbage").unwrap();
        assert!(matches!(
            DataDir::open(&d),
            Err(DataDirError::Invalid { .. })
        ));
        fs::remove_dir_all(&d).unwrap();
    }
}
