//! The segment writer, sans-IO: records in, block-aligned writes out, one group commit
//! at a time (design §11, invariant 1).
//!
//! [`SegmentWriter::append`] frames a record into the tail buffer and gives it its log
//! sequence number; [`SegmentWriter::commit`] closes the batch and hands back a
//! [`Commit`]: the writes to issue (each at a 4096-byte-aligned offset, each a whole
//! number of blocks, as DMA requires) and the records they make durable. The caller
//! issues the writes, then one `fdatasync` per file written, and only when all of them
//! have completed acknowledges the PUBLISHes of [`Commit::records`]. One write and one
//! fdatasync per file per batch, however many records the batch holds.
//!
//! # Skip, never rewrite
//!
//! A commit that ends mid-block is padded with zeros to the block boundary
//! ([`pad`]), and the next commit starts at that boundary: a block that holds
//! acknowledged records is written exactly once and never again. The alternative,
//! rewriting the partial last block with the next commit's records appended, saves
//! space but puts acknowledged records at risk: a device without atomic block writes
//! can tear that rewrite and leave the block half old, half new, or zeroed, destroying
//! records whose PUBLISHes were acknowledged long ago. With skip, a torn write can
//! only damage the blocks of the commit in flight, whose records nobody has
//! acknowledged yet; recovery ([`crate::store::Recovery`]) sets that tail aside.
//!
//! The cost is space: up to one block less one byte of padding per commit (4 KiB).
//! It is not an extra I/O (a DMA write is whole blocks anyway, so the partial block
//! would be written either way), and under load, when batches are large, the padding
//! is small next to the records. An idle broker acknowledging one small QoS 1 message
//! at a time writes a 4 KiB block per message; segments roll accordingly sooner.
//! Compaction (later) reclaims the space with the records.
//!
//! A side effect: a commit's bytes are owned by its [`BlockWrite`]s, and the
//! writer starts the next batch on a fresh boundary, so records can be appended while
//! a commit is in flight without copying the tail block.
//!
//! # Segments
//!
//! A segment is rolled when the next record would take the file past
//! [`WriterConfig::segment_size`]; a record larger than a whole segment gets a segment
//! of its own rather than being refused. The new segment's header (its number, one
//! above the last, and its first record) is the start of the first [`BlockWrite`] to
//! it, which says so with [`BlockWrite::new_segment`]: the caller creates the file,
//! and syncs its directory as well as the file before acknowledging.
//!
//! # Failure
//!
//! Commits must become durable in order: a commit's records are acknowledged only
//! when it and every commit before it are durable. A failed write or fdatasync leaves
//! the file in an unknown state (after a failed fdatasync, Linux may have dropped the
//! dirty data and cleared the error): the log must not be written again until it has
//! been reopened through recovery.

use std::ops::Range;

use super::frame::{encode_record, pad, padding_len, RecordTooLarge, BLOCK, FRAME_HEADER};
use super::header::{encode_header, SegmentHeader};

/// How the writer cuts the log into segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterConfig {
    /// The shard whose log this is (written in every segment header).
    pub shard: u16,
    /// Largest segment file in bytes, rounded up to a multiple of [`BLOCK`] and at
    /// least two blocks.
    pub segment_size: u64,
}

/// Where a writer starts: the end of a recovered log, or a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Append to an existing segment whose first `len` bytes hold its header and its
    /// records up to `next_record` (exclusive). The next commit writes at the first
    /// block boundary at or after `len`; the caller has truncated the file to `len`
    /// (and synced it) so that the bytes in between read as zeros, i.e. padding.
    Append {
        /// The segment's header.
        header: SegmentHeader,
        /// Bytes kept.
        len: u64,
        /// Number of the next record.
        next_record: u64,
    },
    /// Start a new segment file numbered `segment`, whose first record is
    /// `next_record`.
    Create {
        /// The new segment's number.
        segment: u32,
        /// Number of its first record.
        next_record: u64,
    },
}

/// Why a record cannot be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The body is over [`crate::store::MAX_RECORD`].
    #[error(transparent)]
    TooLarge(#[from] RecordTooLarge),
    /// The segment number would pass `u32::MAX`: compaction must renumber first.
    #[error("the log has used every segment number")]
    SegmentsExhausted,
}

/// One write to issue: `bytes` at `offset` of segment `segment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockWrite {
    /// The segment (file) to write.
    pub segment: u32,
    /// Set when this write starts the segment: the file does not exist yet, and
    /// `bytes` begin with this header, encoded. The caller creates the file and
    /// syncs its directory before acknowledging.
    pub new_segment: Option<SegmentHeader>,
    /// File offset, a multiple of [`BLOCK`].
    pub offset: u64,
    /// Whole blocks: records, then zero padding.
    pub bytes: Vec<u8>,
}

/// A closed batch: issue every write, fdatasync every file written, then (and only
/// then) acknowledge `records`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// In segment order; at most one per segment; two or more only when the batch
    /// rolled a segment.
    pub writes: Vec<BlockWrite>,
    /// The records durable once every write and fdatasync has completed.
    pub records: Range<u64>,
}

/// Frames records into block-aligned writes; see the module docs.
#[derive(Debug, Clone)]
pub struct SegmentWriter {
    shard: u16,
    segment_size: u64,
    /// The segment records are appended to.
    header: SegmentHeader,
    /// Whether the current segment's file exists (a commit has carried its header).
    created: bool,
    /// File offset of `buf[0]`, a block boundary.
    start: u64,
    /// The current segment's bytes not yet in a commit (its header first, if the
    /// segment is not created yet).
    buf: Vec<u8>,
    /// Whether `buf` holds records.
    buffered: bool,
    next_record: u64,
    /// First record not yet in a commit.
    batch_start: u64,
    /// Writes of segments rolled past in the current batch.
    closed: Vec<BlockWrite>,
}

impl SegmentWriter {
    /// A writer that starts at `resume`.
    pub fn new(config: WriterConfig, resume: Resume) -> Self {
        let block = BLOCK as u64;
        let segment_size = config.segment_size.max(2 * block).div_ceil(block) * block;
        let (header, created, start, next_record) = match resume {
            Resume::Append {
                header,
                len,
                next_record,
            } => {
                let start = len + padding_len(len as usize, BLOCK) as u64;
                (header, true, start, next_record)
            }
            Resume::Create {
                segment,
                next_record,
            } => {
                let header = SegmentHeader {
                    shard: config.shard,
                    segment,
                    first_record: next_record,
                };
                (header, false, 0, next_record)
            }
        };
        let mut writer = SegmentWriter {
            shard: config.shard,
            segment_size,
            header,
            created,
            start,
            buf: Vec::new(),
            buffered: false,
            next_record,
            batch_start: next_record,
            closed: Vec::new(),
        };
        if !created {
            writer.buf.extend_from_slice(&encode_header(&header));
        }
        writer
    }

    /// The largest segment file it writes.
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Number the next appended record gets.
    pub fn next_record(&self) -> u64 {
        self.next_record
    }

    /// The segment records are appended to now.
    pub fn segment(&self) -> SegmentHeader {
        self.header
    }

    /// Records appended since the last commit.
    pub fn pending(&self) -> u64 {
        self.next_record - self.batch_start
    }

    /// Frames a record into the current batch and returns its number. It is durable
    /// only once the [`Commit`] that carries it has completed.
    pub fn append(&mut self, kind: u8, body: &[u8]) -> Result<u64, AppendError> {
        if body.len() > super::frame::MAX_RECORD {
            return Err(RecordTooLarge { len: body.len() }.into());
        }
        let at = self.start + self.buf.len() as u64;
        let frame = (FRAME_HEADER + body.len()) as u64;
        let has_records = self.next_record > self.header.first_record;
        if has_records && at + frame > self.segment_size {
            self.roll()?;
        }
        encode_record(kind, body, &mut self.buf)?;
        self.buffered = true;
        let record = self.next_record;
        self.next_record += 1;
        Ok(record)
    }

    /// Closes the batch: `None` if nothing was appended since the last commit.
    pub fn commit(&mut self) -> Option<Commit> {
        if self.pending() == 0 {
            return None;
        }
        let mut writes = std::mem::take(&mut self.closed);
        writes.extend(self.close_tail());
        let records = self.batch_start..self.next_record;
        self.batch_start = self.next_record;
        Some(Commit { writes, records })
    }

    /// Ends the current segment and starts the next one, in the same batch.
    fn roll(&mut self) -> Result<(), AppendError> {
        let segment = self
            .header
            .segment
            .checked_add(1)
            .ok_or(AppendError::SegmentsExhausted)?;
        if let Some(write) = self.close_tail() {
            self.closed.push(write);
        }
        self.header = SegmentHeader {
            shard: self.shard,
            segment,
            first_record: self.next_record,
        };
        self.created = false;
        self.start = 0;
        self.buf.clear();
        self.buf.extend_from_slice(&encode_header(&self.header));
        Ok(())
    }

    /// The buffered records of the current segment as one padded write; the next
    /// write starts at the block boundary after it.
    fn close_tail(&mut self) -> Option<BlockWrite> {
        if !self.buffered {
            return None;
        }
        let mut bytes = std::mem::take(&mut self.buf);
        // `start` is a block boundary, so padding from 0 pads the file offset too.
        pad(&mut bytes, 0, BLOCK);
        let write = BlockWrite {
            segment: self.header.segment,
            new_segment: (!self.created).then_some(self.header),
            offset: self.start,
            bytes,
        };
        self.start += write.bytes.len() as u64;
        self.created = true;
        self.buffered = false;
        Some(write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{open, Item, HEADER_LEN};
    use std::collections::BTreeMap;

    fn config(segment_size: u64) -> WriterConfig {
        WriterConfig {
            shard: 3,
            segment_size,
        }
    }

    fn fresh(segment_size: u64) -> SegmentWriter {
        SegmentWriter::new(
            config(segment_size),
            Resume::Create {
                segment: 0,
                next_record: 0,
            },
        )
    }

    /// Applies writes to in-memory files, checking alignment and that no block is
    /// written twice.
    #[derive(Default)]
    struct Disk {
        files: BTreeMap<u32, Vec<u8>>,
        written: BTreeMap<u32, Vec<Range<u64>>>,
    }

    impl Disk {
        fn apply(&mut self, commit: &Commit) {
            for w in &commit.writes {
                assert_eq!(w.offset % BLOCK as u64, 0);
                assert_eq!(w.bytes.len() % BLOCK, 0);
                assert!(!w.bytes.is_empty());
                let range = w.offset..w.offset + w.bytes.len() as u64;
                let earlier = self.written.entry(w.segment).or_default();
                for r in earlier.iter() {
                    assert!(r.end <= range.start, "block rewritten: {r:?} {range:?}");
                }
                earlier.push(range);
                assert_eq!(
                    w.new_segment.is_some(),
                    !self.files.contains_key(&w.segment)
                );
                let file = self.files.entry(w.segment).or_default();
                if let Some(h) = w.new_segment {
                    assert_eq!(w.offset, 0);
                    assert_eq!(w.bytes[..HEADER_LEN], encode_header(&h));
                }
                let end = w.offset as usize + w.bytes.len();
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[w.offset as usize..end].copy_from_slice(&w.bytes);
            }
        }

        /// Every record in every file, with its number from the headers.
        fn records(&self) -> Vec<(u64, u8, Vec<u8>)> {
            let mut out = Vec::new();
            for bytes in self.files.values() {
                let (header, reader) = open(bytes).unwrap();
                let mut n = header.first_record;
                for item in reader {
                    match item {
                        Item::Record { kind, body, .. } => {
                            out.push((n, kind, body.to_vec()));
                            n += 1;
                        }
                        Item::End(end) => assert_eq!(end, crate::store::End::Clean),
                    }
                }
            }
            out
        }
    }

    #[test]
    fn a_commit_is_whole_aligned_blocks_and_the_next_starts_on_the_next_boundary() {
        let mut w = fresh(1 << 20);
        assert_eq!(w.commit(), None, "nothing to commit");
        assert_eq!(w.append(1, b"a").unwrap(), 0);
        assert_eq!(w.append(1, b"b").unwrap(), 1);
        let first = w.commit().unwrap();
        assert_eq!(first.records, 0..2);
        assert_eq!(first.writes.len(), 1);
        let write = &first.writes[0];
        assert_eq!(
            (write.segment, write.offset, write.bytes.len()),
            (0, 0, BLOCK)
        );
        assert_eq!(write.new_segment.map(|h| h.first_record), Some(0));
        assert_eq!(w.append(2, &[7; 5000]).unwrap(), 2);
        let second = w.commit().unwrap();
        assert_eq!(second.records, 2..3);
        let write = &second.writes[0];
        assert_eq!(write.offset, BLOCK as u64);
        assert_eq!(write.bytes.len(), 2 * BLOCK);
        assert_eq!(write.new_segment, None);
        let mut disk = Disk::default();
        disk.apply(&first);
        disk.apply(&second);
        assert_eq!(
            disk.records(),
            vec![
                (0, 1, b"a".to_vec()),
                (1, 1, b"b".to_vec()),
                (2, 2, vec![7; 5000])
            ]
        );
    }

    #[test]
    fn segments_roll_with_continuous_record_numbers() {
        let size = 4 * BLOCK as u64;
        let mut w = fresh(size);
        let mut disk = Disk::default();
        let mut expected = Vec::new();
        let mut next = 0u64;
        for batch in 0..60u64 {
            for i in 0..(batch % 7 + 1) {
                let body = vec![batch as u8; (batch * 131 + i * 17) as usize % 1500];
                assert_eq!(w.append(i as u8, &body).unwrap(), next);
                expected.push((next, i as u8, body));
                next += 1;
            }
            let commit = w.commit().unwrap();
            assert_eq!(commit.records.end, next);
            disk.apply(&commit);
        }
        assert!(disk.files.len() > 5, "rolled: {}", disk.files.len());
        for (n, file) in &disk.files {
            assert!(file.len() as u64 <= size, "segment {n}: {}", file.len());
            assert_eq!(open(file).unwrap().0.segment, *n);
        }
        assert_eq!(
            disk.files.keys().copied().collect::<Vec<_>>(),
            (0..disk.files.len() as u32).collect::<Vec<_>>()
        );
        assert_eq!(disk.records(), expected);
    }

    #[test]
    fn a_batch_that_rolls_writes_both_segments_in_one_commit() {
        let mut w = fresh(2 * BLOCK as u64);
        w.append(0, &[1; 3000]).unwrap();
        w.append(0, &[2; 3000]).unwrap();
        w.append(0, &[3; 3000]).unwrap();
        let commit = w.commit().unwrap();
        assert_eq!(commit.records, 0..3);
        let segs: Vec<_> = commit
            .writes
            .iter()
            .map(|w| (w.segment, w.new_segment.map(|h| h.first_record)))
            .collect();
        assert_eq!(segs, [(0, Some(0)), (1, Some(2))]);
        assert_eq!(w.segment().segment, 1);
    }

    #[test]
    fn a_record_larger_than_a_segment_gets_one_of_its_own() {
        let mut w = fresh(2 * BLOCK as u64);
        w.append(0, b"small").unwrap();
        w.append(0, &[9; 3 * BLOCK]).unwrap();
        w.append(0, b"after").unwrap();
        let commit = w.commit().unwrap();
        let shape: Vec<_> = commit
            .writes
            .iter()
            .map(|w| (w.segment, w.bytes.len() / BLOCK))
            .collect();
        assert_eq!(shape, [(0, 1), (1, 4), (2, 1)]);
        let mut disk = Disk::default();
        disk.apply(&commit);
        assert_eq!(disk.records().len(), 3);
    }

    #[test]
    fn resume_appends_on_the_next_boundary_of_the_kept_bytes() {
        let header = SegmentHeader {
            shard: 3,
            segment: 9,
            first_record: 100,
        };
        let resume = Resume::Append {
            header,
            len: BLOCK as u64 + 10,
            next_record: 120,
        };
        let mut w = SegmentWriter::new(config(1 << 20), resume);
        assert_eq!(w.append(0, b"x").unwrap(), 120);
        let commit = w.commit().unwrap();
        assert_eq!(commit.writes[0].offset, 2 * BLOCK as u64);
        assert_eq!(commit.writes[0].new_segment, None);
        assert_eq!(commit.records, 120..121);
    }

    #[test]
    fn an_oversized_body_is_refused_and_numbers_nothing() {
        let mut w = fresh(1 << 20);
        let body = vec![0; crate::store::MAX_RECORD + 1];
        assert!(matches!(w.append(0, &body), Err(AppendError::TooLarge(_))));
        assert_eq!(w.next_record(), 0);
        assert_eq!(w.commit(), None);
    }

    #[test]
    fn the_last_segment_number_is_not_passed() {
        let mut w = SegmentWriter::new(
            config(2 * BLOCK as u64),
            Resume::Create {
                segment: u32::MAX,
                next_record: 5,
            },
        );
        w.append(0, &[0; 5000]).unwrap();
        assert_eq!(w.append(0, &[0; 5000]), Err(AppendError::SegmentsExhausted));
        assert_eq!(w.commit().unwrap().records, 5..6);
    }
}
