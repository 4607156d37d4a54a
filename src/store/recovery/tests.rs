//! Recovery after crashes at every torn point of the last write, with [`MemFile`]s,
//! and one round trip through glommio's DMA files.

use super::*;
use crate::store::file::LogFile;
use crate::store::memfile::{MemFile, Rest};
use crate::store::segment::{Commit, SegmentWriter, WriterConfig};
use crate::store::test_rng::Rng;
use crate::store::BLOCK;
use futures_lite::future::block_on;
use std::collections::BTreeMap;

const SHARD: u16 = 5;

/// A record as appended: number, kind, body.
type Rec = (u64, u8, Vec<u8>);

type Files = BTreeMap<u32, MemFile>;

/// A shard's log on [`MemFile`]s, with every record appended, in order.
struct Log {
    files: Files,
    writer: SegmentWriter,
    appended: Vec<Rec>,
    rng: Rng,
    segment_size: u64,
}

impl Log {
    fn new(seed: u64, segment_size: u64) -> Self {
        let config = WriterConfig {
            shard: SHARD,
            segment_size,
        };
        let resume = Resume::Create {
            segment: 0,
            next_record: 0,
        };
        Log {
            files: Files::new(),
            writer: SegmentWriter::new(config, resume),
            appended: Vec::new(),
            rng: Rng(seed),
            segment_size,
        }
    }

    /// Appends a random batch (some records empty, some over a block) and closes it.
    fn batch(&mut self, max_records: usize) -> Commit {
        for _ in 0..1 + self.rng.below(max_records) {
            let len = match self.rng.below(10) {
                0 => 0,
                1 => 4000 + self.rng.below(3000),
                _ => self.rng.below(700),
            };
            let kind = self.rng.next() as u8;
            let mut body: Vec<u8> = (0..len).map(|_| self.rng.next() as u8).collect();
            if len >= 8 {
                body[..8].copy_from_slice(&self.writer.next_record().to_le_bytes());
            }
            let n = self.writer.append(kind, &body).unwrap();
            self.appended.push((n, kind, body));
        }
        self.writer.commit().unwrap()
    }

    /// Issues a commit's writes; syncs them too when `sync`.
    fn issue(&mut self, commit: &Commit, sync: bool) {
        for w in &commit.writes {
            if w.new_segment.is_some() {
                assert!(self.files.insert(w.segment, MemFile::new()).is_none());
            }
            let file = self.files.get_mut(&w.segment).unwrap();
            block_on(file.write_at(w.offset, &w.bytes)).unwrap();
            if sync {
                block_on(file.sync()).unwrap();
            }
        }
    }
}

/// Recovers `files`: the records, each file's verdict, and where to resume.
fn recover(files: &Files) -> (Vec<Rec>, Vec<(u32, Verdict)>, Resume) {
    let mut recovery = Recovery::new(SHARD);
    let mut records = Vec::new();
    let mut verdicts = Vec::new();
    for (&n, file) in files {
        let verdict = recovery.segment(n, file.contents(), |r| {
            records.push((r.record, r.kind, r.body.to_vec()))
        });
        verdicts.push((n, verdict));
    }
    (records, verdicts, recovery.finish())
}

/// What the caller does with the verdicts: truncate, set aside (here: drop), sync.
fn reopen(mut files: Files, verdicts: &[(u32, Verdict)]) -> Files {
    for (n, verdict) in verdicts {
        match verdict {
            Verdict::Keep { .. } => {}
            Verdict::Truncate { at, .. } => {
                let file = files.get_mut(n).unwrap();
                block_on(file.truncate(*at)).unwrap();
                block_on(file.sync()).unwrap();
            }
            Verdict::SetAside(_) => {
                files.remove(n);
            }
        }
    }
    files
}

/// Crashes a log whose last commit (`last`) was issued but not synced, tearing
/// write `torn` after `keep` bytes; the commit's other writes are all whole or all
/// lost. Checks that recovery keeps every acknowledged record (the first `acked`),
/// a prefix of the torn commit's, and nothing else; then that the log reopens,
/// takes more records, and reads back whole. Returns how many of the torn commit's
/// records were kept.
fn crash_and_check(
    log: &Log,
    last: &Commit,
    torn: usize,
    keep: usize,
    rest: Rest,
    others: bool,
) -> usize {
    let acked = last.records.start as usize;
    let crashed: Files = log
        .files
        .iter()
        .map(|(&n, file)| {
            let file = match last.writes.iter().position(|w| w.segment == n) {
                Some(i) if i == torn => file.crash(keep, rest),
                Some(_) if others => file.crash(usize::MAX, Rest::Missing),
                Some(_) => file.crash(0, Rest::Missing),
                None => file.clone(),
            };
            (n, file)
        })
        .collect();
    let ctx = format!("write {torn} keep {keep} {rest:?} others whole {others}");
    let (records, verdicts, resume) = recover(&crashed);
    let kept = records.len().saturating_sub(acked);
    assert!(records.len() >= acked, "{ctx}: lost acknowledged records");
    assert!(records.len() <= log.appended.len(), "{ctx}");
    assert_eq!(records[..], log.appended[..records.len()], "{ctx}");
    for (n, v) in &verdicts {
        if let Verdict::Truncate { end, .. } = v {
            assert!(
                matches!(end, End::TornTail { .. }),
                "{ctx}: segment {n} {v:?}"
            );
        }
    }

    // Reopen, append, and read everything back.
    let mut files = reopen(crashed, &verdicts);
    let config = WriterConfig {
        shard: SHARD,
        segment_size: log.segment_size,
    };
    let mut writer = SegmentWriter::new(config, resume);
    assert_eq!(writer.next_record(), records.len() as u64, "{ctx}");
    let mut expected = records;
    for i in 0..3u8 {
        let body = vec![i; 100 + 2000 * i as usize];
        let n = writer.append(i, &body).unwrap();
        expected.push((n, i, body));
    }
    let commit = writer.commit().unwrap();
    for w in &commit.writes {
        if w.new_segment.is_some() {
            assert!(files.insert(w.segment, MemFile::new()).is_none(), "{ctx}");
        }
        let file = files.get_mut(&w.segment).unwrap();
        block_on(file.write_at(w.offset, &w.bytes)).unwrap();
        block_on(file.sync()).unwrap();
    }
    let (again, verdicts, _) = recover(&files);
    assert_eq!(again, expected, "{ctx}: after reopening");
    assert!(
        verdicts
            .iter()
            .all(|(_, v)| matches!(v, Verdict::Keep { .. })),
        "{ctx}: {verdicts:?}"
    );
    kept
}

/// A log of `commits` synced commits, then one more of up to `last_records` records
/// issued and not synced.
fn log_with_an_unsynced_commit(
    seed: u64,
    commits: usize,
    segment_size: u64,
    last_records: usize,
) -> (Log, Commit) {
    let mut log = Log::new(seed, segment_size);
    for _ in 0..commits {
        let commit = log.batch(6);
        log.issue(&commit, true);
    }
    let last = log.batch(last_records);
    log.issue(&last, false);
    (log, last)
}

#[test]
fn a_crash_at_every_byte_of_the_last_write_loses_only_unacknowledged_records() {
    for seed in 1..3 {
        let (log, last) = log_with_an_unsynced_commit(seed, 4, 8 * BLOCK as u64, 6);
        let batch = (last.records.end - last.records.start) as usize;
        let mut kept = Vec::new();
        for (torn, w) in last.writes.iter().enumerate() {
            for keep in 0..=w.bytes.len() {
                for rest in [Rest::Missing, Rest::Zeros, Rest::Garbage(keep as u64)] {
                    kept.push(crash_and_check(&log, &last, torn, keep, rest, true));
                }
            }
        }
        // The cuts reach every prefix of the torn commit: none, some, all.
        assert!(batch > 1, "seed {seed}");
        for n in 0..=batch {
            assert!(kept.contains(&n), "seed {seed}: never kept {n} of {batch}");
        }
    }
}

#[test]
fn a_crash_at_every_sector_of_the_last_write_loses_only_unacknowledged_records() {
    let mut rolled = 0;
    for seed in 10..40 {
        let (log, last) = log_with_an_unsynced_commit(seed, 12, 6 * BLOCK as u64, 16);
        assert!(log.files.len() > 2, "seed {seed}: the log spans segments");
        rolled += usize::from(last.writes.len() > 1);
        for (torn, w) in last.writes.iter().enumerate() {
            for keep in (0..=w.bytes.len()).step_by(512) {
                for rest in [Rest::Missing, Rest::Zeros, Rest::Garbage(seed)] {
                    for others in [true, false] {
                        crash_and_check(&log, &last, torn, keep, rest, others);
                    }
                }
            }
        }
    } // Some last commits rolled a segment: torn in the old one, the new one, or both.
    assert!(rolled >= 3, "only {rolled} rolled");
}

/// A log of `n` synced commits, as files.
fn synced_log(seed: u64, n: usize, segment_size: u64) -> Log {
    let mut log = Log::new(seed, segment_size);
    for _ in 0..n {
        let commit = log.batch(6);
        log.issue(&commit, true);
    }
    log
}

#[test]
fn a_clean_log_is_kept_whole_and_resumes_after_its_last_record() {
    let log = synced_log(50, 30, 4 * BLOCK as u64);
    let (records, verdicts, resume) = recover(&log.files);
    assert_eq!(records, log.appended);
    assert!(verdicts.len() > 3);
    assert!(verdicts
        .iter()
        .all(|(_, v)| matches!(v, Verdict::Keep { .. })));
    let last = log.files.values().last().unwrap().contents().len() as u64;
    assert_eq!(
        resume,
        Resume::Append {
            header: log.writer.segment(),
            len: last,
            next_record: log.appended.len() as u64
        }
    );
}

#[test]
fn an_empty_directory_starts_segment_zero_at_record_zero() {
    assert_eq!(
        Recovery::new(SHARD).finish(),
        Resume::Create {
            segment: 0,
            next_record: 0
        }
    );
}

#[test]
fn a_missing_segment_sets_aside_every_later_one() {
    let mut log = synced_log(51, 30, 4 * BLOCK as u64);
    assert!(log.files.len() > 4);
    log.files.remove(&2);
    let (records, verdicts, resume) = recover(&log.files);
    let Verdict::Keep { header, .. } = verdicts[1].1 else {
        panic!("{verdicts:?}");
    };
    let kept = header.first_record
        + match verdicts[1].1 {
            Verdict::Keep { records, .. } => records,
            _ => unreachable!(),
        };
    assert_eq!(records, log.appended[..kept as usize]);
    assert_eq!(
        verdicts[2].1,
        Verdict::SetAside(Unusable::OutOfOrder {
            expected: 2,
            found: 3
        })
    );
    for (_, v) in &verdicts[3..] {
        assert_eq!(*v, Verdict::SetAside(Unusable::AfterDamage));
    }
    assert!(
        matches!(resume, Resume::Append { header: h, next_record, .. }
        if h.segment == 1 && next_record == kept)
    );
}

#[test]
fn foreign_misnumbered_and_headerless_segments_are_set_aside() {
    let log = synced_log(52, 20, 4 * BLOCK as u64);
    let seg0 = log.files[&0].contents();
    let seg1 = log.files[&1].contents();

    // Another shard's segment.
    let mut r = Recovery::new(SHARD + 1);
    assert_eq!(
        r.segment(0, seg0, |_| panic!("no record")),
        Verdict::SetAside(Unusable::WrongShard { found: SHARD })
    );
    // A header whose number is not its name's.
    let mut r = Recovery::new(SHARD);
    assert!(matches!(
        r.segment(7, seg0, |_| panic!("no record")),
        Verdict::SetAside(Unusable::OutOfOrder {
            expected: 7,
            found: 0
        })
    ));
    // A truncated header: nothing kept, resume with the first file's number.
    let mut r = Recovery::new(SHARD);
    assert_eq!(
        r.segment(0, &seg0[..20], |_| panic!("no record")),
        Verdict::SetAside(Unusable::Header(HeaderError::Truncated { len: 20 }))
    );
    assert_eq!(
        r.finish(),
        Resume::Create {
            segment: 0,
            next_record: 0
        }
    );
    // A segment whose first record skips some.
    let mut r = Recovery::new(SHARD);
    let mut n = 0;
    let first = r.segment(0, seg0, |_| n += 1);
    assert!(matches!(first, Verdict::Keep { records, .. } if records == n));
    let mut gap = seg1.to_vec();
    let mut header = crate::store::decode_header(&gap).unwrap();
    header.first_record += 1;
    gap[..crate::store::HEADER_LEN].copy_from_slice(&crate::store::encode_header(&header));
    assert_eq!(
        r.segment(1, &gap, |_| panic!("no record")),
        Verdict::SetAside(Unusable::RecordGap {
            expected: n,
            found: n + 1
        })
    );
}

#[test]
fn a_corrupt_block_in_an_old_segment_is_reported_and_cuts_the_log_there() {
    let mut log = synced_log(53, 30, 6 * BLOCK as u64);
    let file = log.files.get_mut(&0).unwrap();
    let mut bytes = file.contents().to_vec();
    assert!(bytes.len() >= 2 * BLOCK);
    bytes[100] ^= 0x55;
    *file = MemFile::new();
    block_on(file.write_at(0, &bytes)).unwrap();
    let (records, verdicts, _) = recover(&log.files);
    assert_eq!(records[..], log.appended[..records.len()]);
    assert!(
        matches!(verdicts[0].1, Verdict::Truncate { end: End::Corrupt { .. }, at, .. } if at <= 100),
        "{verdicts:?}"
    );
    assert!(verdicts[1..]
        .iter()
        .all(|(_, v)| *v == Verdict::SetAside(Unusable::AfterDamage)));
}

#[test]
fn segment_file_names_sort_in_segment_order_and_parse_back() {
    assert_eq!(segment_file_name(0), "0000000000.log");
    assert_eq!(segment_file_name(u32::MAX), "4294967295.log");
    for n in [0, 1, 9, 10, 12345, u32::MAX] {
        assert_eq!(parse_segment_file_name(&segment_file_name(n)), Some(n));
    }
    assert!(segment_file_name(9) < segment_file_name(10));
    for other in [
        "1.log",
        "0000000001.log.damaged",
        "000000000a.log",
        "9999999999.log",
        "x",
    ] {
        assert_eq!(parse_segment_file_name(other), None, "{other}");
    }
}

/// Reads every segment file in `dir` through [`DmaLogFile`] and recovers them.
async fn recover_dir(dir: &std::path::Path) -> (Vec<Rec>, Vec<(u32, Verdict)>, Resume) {
    let mut names: Vec<u32> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| parse_segment_file_name(e.unwrap().file_name().to_str()?))
        .collect();
    names.sort_unstable();
    let mut files = Files::new();
    for n in names {
        let mut file = crate::store::DmaLogFile::open(dir.join(segment_file_name(n)))
            .await
            .unwrap();
        let bytes = file.read_all().await.unwrap();
        assert_eq!(bytes.len() as u64, file.size().await.unwrap());
        file.close().await.unwrap();
        let mut mem = MemFile::new();
        mem.write_at(0, &bytes).await.unwrap();
        files.insert(n, mem);
    }
    recover(&files)
}

/// Issues a commit on DMA files in `dir`, creating segments as it says, and syncs.
async fn issue_dma(dir: &std::path::Path, commit: &Commit) {
    for w in &commit.writes {
        let path = dir.join(segment_file_name(w.segment));
        let mut file = match w.new_segment {
            Some(_) => crate::store::DmaLogFile::create(&path).await.unwrap(),
            None => crate::store::DmaLogFile::open(&path).await.unwrap(),
        };
        file.write_at(w.offset, &w.bytes).await.unwrap();
        file.sync().await.unwrap();
        file.close().await.unwrap();
        if w.new_segment.is_some() {
            crate::store::sync_directory(dir).await.unwrap();
        }
    }
}

#[test]
fn dma_files_round_trip_commits_through_recovery_and_reopen() {
    let dir = std::env::temp_dir().join(format!("shardmq-store-dma-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inner = dir.clone();
    let outcome = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let dir = inner;
            crate::store::prime_iopoll_probe(&dir).await.unwrap();
            let mut log = Log::new(60, 4 * BLOCK as u64);
            for _ in 0..10 {
                let commit = log.batch(6);
                issue_dma(&dir, &commit).await;
            }
            let (records, verdicts, resume) = recover_dir(&dir).await;
            assert_eq!(records, log.appended);
            assert!(verdicts.len() > 1, "rolled: {verdicts:?}");
            assert!(verdicts
                .iter()
                .all(|(_, v)| matches!(v, Verdict::Keep { .. })));

            // A torn tail written by hand is cut, and the log goes on after it.
            let Resume::Append { header, len, .. } = resume else {
                panic!("{resume:?}");
            };
            let path = dir.join(segment_file_name(header.segment));
            let mut file = crate::store::DmaLogFile::open(&path).await.unwrap();
            let mut garbage = vec![0xA5; BLOCK];
            garbage[..4].copy_from_slice(&100u32.to_le_bytes());
            file.write_at(len.next_multiple_of(BLOCK as u64), &garbage)
                .await
                .unwrap();
            file.sync().await.unwrap();
            let (again, verdicts, resume) = recover_dir(&dir).await;
            assert_eq!(again, log.appended);
            let Some((_, Verdict::Truncate { at, end, .. })) = verdicts.last() else {
                panic!("{verdicts:?}");
            };
            assert!(matches!(end, End::TornTail { .. }), "{end:?}");
            file.truncate(*at).await.unwrap();
            file.sync().await.unwrap();
            file.close().await.unwrap();

            log.writer = SegmentWriter::new(
                WriterConfig {
                    shard: SHARD,
                    segment_size: log.segment_size,
                },
                resume,
            );
            for _ in 0..3 {
                let commit = log.batch(6);
                issue_dma(&dir, &commit).await;
            }
            let (after, verdicts, _) = recover_dir(&dir).await;
            assert_eq!(after, log.appended);
            assert!(verdicts
                .iter()
                .all(|(_, v)| matches!(v, Verdict::Keep { .. })));
        })
        .unwrap()
        .join();
    std::fs::remove_dir_all(&dir).unwrap();
    outcome.unwrap();
}

/// Issues a commit on buffered files in `dir`, as the committer does on a
/// filesystem that refuses O_DIRECT.
async fn issue_buffered(dir: &std::path::Path, commit: &Commit) {
    for w in &commit.writes {
        let path = dir.join(segment_file_name(w.segment));
        let mut file = match w.new_segment {
            Some(_) => crate::store::BufferedLogFile::create(&path).await.unwrap(),
            None => crate::store::BufferedLogFile::open(&path).await.unwrap(),
        };
        file.write_at(w.offset, &w.bytes).await.unwrap();
        file.sync().await.unwrap();
        file.close().await.unwrap();
    }
}

#[test]
fn buffered_files_round_trip_commits_through_recovery() {
    let dir = std::env::temp_dir().join(format!("shardmq-store-buf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inner = dir.clone();
    let outcome = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let dir = inner;
            assert!(
                crate::store::direct_io_works(&dir).await.unwrap(),
                "this filesystem takes O_DIRECT"
            );
            let mut log = Log::new(60, 4 * BLOCK as u64);
            for _ in 0..10 {
                let commit = log.batch(6);
                issue_buffered(&dir, &commit).await;
            }
            // Read back through the same layer and through recovery.
            let (records, verdicts, _) = recover_dir(&dir).await;
            assert_eq!(records, log.appended);
            assert!(verdicts.len() > 1, "rolled: {verdicts:?}");
            assert!(verdicts
                .iter()
                .all(|(_, v)| matches!(v, Verdict::Keep { .. })));
            let first = dir.join(segment_file_name(0));
            let mut f = crate::store::BufferedLogFile::open(&first).await.unwrap();
            let bytes = f.read_all().await.unwrap();
            assert_eq!(bytes, std::fs::read(&first).unwrap());
            assert_eq!(f.size().await.unwrap(), bytes.len() as u64);
            f.close().await.unwrap();
        })
        .unwrap()
        .join();
    std::fs::remove_dir_all(&dir).unwrap();
    outcome.unwrap();
}
