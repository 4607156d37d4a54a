//! Record frames (`[len][crc][kind][body]`), block padding, and the recovery reader
//! (format and policy in the module docs of [`crate::store`]).

use std::ops::Range;

/// Bytes before a record's body: length (4), checksum (4), kind (1).
pub const FRAME_HEADER: usize = 9;

/// Largest record body: a 16 MiB message plus 64 KiB for its topic, properties and
/// bookkeeping. A length field above it is damage, never a reason to read on.
pub const MAX_RECORD: usize = 16 * 1024 * 1024 + 64 * 1024;

/// Size of the blocks the file layer writes; padding runs to a multiple of it.
pub const BLOCK: usize = 4096;

/// A record body over [`MAX_RECORD`]: the caller splits it or refuses the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("record body of {len} bytes exceeds the maximum of {MAX_RECORD}")]
pub struct RecordTooLarge {
    /// The body's length.
    pub len: usize,
}

/// Why no valid record starts at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// A whole frame is there but its checksum does not match its kind and body.
    #[error("record checksum mismatch")]
    Checksum,
    /// The length field is above [`MAX_RECORD`].
    #[error("record length {0} exceeds the maximum of {MAX_RECORD}")]
    Length(u32),
    /// The frame (its 9-byte header, or its body) runs past the end of the input.
    #[error("record runs past the end of the segment")]
    Truncated,
    /// Nine zero bytes where a frame should start, and not padding.
    #[error("zero bytes where a record should start")]
    Zeroed,
}

/// The CRC32C (Castagnoli) a frame carries: over its kind byte, then its body.
pub fn checksum(kind: u8, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&[kind]), body)
}

/// Appends one record frame to `out`.
pub fn encode_record(kind: u8, body: &[u8], out: &mut Vec<u8>) -> Result<(), RecordTooLarge> {
    if body.len() > MAX_RECORD {
        return Err(RecordTooLarge { len: body.len() });
    }
    out.reserve(FRAME_HEADER + body.len());
    // MAX_RECORD fits in a u32, so the cast is exact.
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(kind, body).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    Ok(())
}

/// Zero bytes that take `position` to the next multiple of `block` (0 on one).
pub fn padding_len(position: usize, block: usize) -> usize {
    let block = block.max(1);
    (block - position % block) % block
}

/// Pads `out` with zeros to a block boundary, `base` being the file offset of
/// `out[0]`: what the file layer does before a DMA write of a partial block.
pub fn pad(out: &mut Vec<u8>, base: usize, block: usize) {
    let n = padding_len(base + out.len(), block);
    out.resize(out.len() + n, 0);
}

/// The frame header at `at`, if all 9 bytes are there: (len, crc, kind).
fn frame_header(bytes: &[u8], at: usize) -> Option<(u32, u32, u8)> {
    let h = bytes.get(at..at.checked_add(FRAME_HEADER)?)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    Some((len, crc, h[8]))
}

/// The record starting at `at` in `bytes`, checksum verified: (kind, body), or why
/// there is none.
pub fn frame_at(bytes: &[u8], at: usize) -> Result<(u8, &[u8]), Damage> {
    let (len, crc, kind) = frame_header(bytes, at).ok_or(Damage::Truncated)?;
    if len == 0 && crc == 0 && kind == 0 {
        return Err(Damage::Zeroed);
    }
    if len as usize > MAX_RECORD {
        return Err(Damage::Length(len));
    }
    let start = at + FRAME_HEADER;
    let body = bytes
        .get(start..start + len as usize)
        .ok_or(Damage::Truncated)?;
    if checksum(kind, body) != crc {
        return Err(Damage::Checksum);
    }
    Ok((kind, body))
}

/// What the [`Reader`] yields: the records in order, then how the segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A record whose checksum verified.
    Record {
        /// Offset of its frame in the input.
        offset: usize,
        /// Its kind byte.
        kind: u8,
        /// Its body, borrowed from the input.
        body: &'a [u8],
    },
    /// The last item: how the segment ended.
    End(End),
}

/// How a segment ended. Whatever follows the first damage is set aside, unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every byte was a record or padding.
    Clean,
    /// From `offset` on, no valid record: an incomplete frame, or zero-filled or
    /// garbage bytes. A crash mid-write leaves this; it loses only unacknowledged
    /// records.
    TornTail {
        /// Where the tail starts: the end of the last good record or padding.
        offset: usize,
        /// Bytes set aside, to the end of the input.
        bytes: usize,
    },
    /// A damaged frame at `offset` with a valid record after it: bytes once written
    /// whole have changed, and records after them are lost.
    Corrupt {
        /// Where the damaged frame starts.
        offset: usize,
        /// Bytes set aside, to the end of the input.
        bytes: usize,
        /// What is wrong with the frame at `offset`.
        why: Damage,
    },
}

impl End {
    /// The input range set aside, unless the segment ended cleanly.
    pub fn set_aside(&self) -> Option<Range<usize>> {
        match *self {
            End::Clean => None,
            End::TornTail { offset, bytes } | End::Corrupt { offset, bytes, .. } => {
                Some(offset..offset + bytes)
            }
        }
    }
}

/// Walks the records of a segment after a crash (or any time): an iterator of
/// [`Item::Record`]s, in the order written, then exactly one [`Item::End`].
///
/// Never panics and never allocates, whatever the bytes: records are borrowed from the
/// input, and no length field is believed before the bytes it announces are there.
/// Time is linear in the input: the search for a valid record after damage (which
/// tells [`End::Corrupt`] from [`End::TornTail`]) checks only the damaged frame's
/// successor and the later block boundaries, and stops after checksumming as many
/// bytes as it set aside.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    block: usize,
    done: bool,
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from its start, which is taken to be a block boundary.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self::starting_at(bytes, 0)
    }

    /// Reads `bytes` from `start` on (after a segment header); offsets and block
    /// boundaries count from `bytes[0]`, as in the file.
    pub fn starting_at(bytes: &'a [u8], start: usize) -> Self {
        Reader {
            bytes,
            pos: start.min(bytes.len()),
            block: BLOCK,
            done: false,
        }
    }

    /// Uses another block size for padding (tests and fuzzing use small ones so that
    /// short inputs cross boundaries; 0 counts as 1, which allows no padding).
    pub fn with_block(mut self, block: usize) -> Self {
        self.block = block.max(1);
        self
    }

    /// Offset of the next frame to read: after the last record or padding returned.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Where the padding starting at `at` ends, if the bytes there are padding: zeros
    /// from mid-block up to the next boundary, which lies within the input.
    fn padding_end(&self, at: usize) -> Option<usize> {
        if at.is_multiple_of(self.block) {
            return None;
        }
        let end = at.checked_add(padding_len(at, self.block))?;
        let run = self.bytes.get(at..end)?;
        run.iter().all(|&b| b == 0).then_some(end)
    }

    /// How the input ends, given damage of kind `why` at `at`.
    fn classify(&self, at: usize, why: Damage) -> End {
        let n = self.bytes.len();
        let bytes = n - at;
        let mut budget = bytes;
        let successor = match why {
            Damage::Checksum | Damage::Zeroed => {
                frame_header(self.bytes, at).map(|(len, ..)| at + FRAME_HEADER + len as usize)
            }
            Damage::Length(_) | Damage::Truncated => None,
        };
        let mut boundary = at + padding_len(at, self.block);
        if boundary == at {
            boundary += self.block;
        }
        let boundaries = std::iter::successors(Some(boundary), |b| b.checked_add(self.block))
            .take_while(|&b| b < n);
        for candidate in successor.into_iter().chain(boundaries) {
            match self.valid_within_budget(candidate, &mut budget) {
                Some(true) => {
                    return End::Corrupt {
                        offset: at,
                        bytes,
                        why,
                    }
                }
                Some(false) => {}
                None => break,
            }
        }
        End::TornTail { offset: at, bytes }
    }

    /// Whether a valid record starts at `at`, charging its checksummed bytes to
    /// `budget`; `None` once a plausible frame would cost more than is left.
    fn valid_within_budget(&self, at: usize, budget: &mut usize) -> Option<bool> {
        let Some((len, _, _)) = frame_header(self.bytes, at) else {
            return Some(false);
        };
        let len = len as usize;
        if len > MAX_RECORD || len > self.bytes.len() - at - FRAME_HEADER {
            return Some(false);
        }
        let cost = 1 + len;
        if cost > *budget {
            return None;
        }
        *budget -= cost;
        Some(frame_at(self.bytes, at).is_ok())
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        if self.done {
            return None;
        }
        loop {
            let at = self.pos;
            if at >= self.bytes.len() {
                self.done = true;
                return Some(Item::End(End::Clean));
            }
            match frame_at(self.bytes, at) {
                Ok((kind, body)) => {
                    self.pos = at + FRAME_HEADER + body.len();
                    return Some(Item::Record {
                        offset: at,
                        kind,
                        body,
                    });
                }
                Err(why) => {
                    if let Some(end) = self.padding_end(at) {
                        self.pos = end;
                        continue;
                    }
                    self.done = true;
                    return Some(Item::End(self.classify(at, why)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::test_rng::Rng;

    /// A record as written: where, what kind, what body.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Written {
        offset: usize,
        kind: u8,
        body: Vec<u8>,
    }

    impl Written {
        fn end(&self) -> usize {
            self.offset + FRAME_HEADER + self.body.len()
        }
    }

    /// `count` records of random kinds and sizes (0 to `max_len` bytes, empty ones
    /// included), padded to a `block` boundary after some of them when `block` is set.
    fn log(
        seed: u64,
        count: usize,
        max_len: usize,
        block: Option<usize>,
    ) -> (Vec<u8>, Vec<Written>) {
        let mut rng = Rng(seed);
        let mut out = Vec::new();
        let mut written = Vec::new();
        for i in 0..count {
            let len = match i % 5 {
                0 => 0,
                _ => rng.below(max_len + 1),
            };
            let kind = rng.next() as u8;
            let body = rng.bytes(len);
            written.push(Written {
                offset: out.len(),
                kind,
                body: body.clone(),
            });
            encode_record(kind, &body, &mut out).unwrap();
            if let Some(block) = block {
                if rng.below(3) == 0 {
                    pad(&mut out, 0, block);
                }
            }
        }
        if let Some(block) = block {
            pad(&mut out, 0, block);
        }
        (out, written)
    }

    /// Everything a reader yields: the records (owned) and the end.
    fn read(bytes: &[u8], block: usize) -> (Vec<Written>, End) {
        let mut records = Vec::new();
        let mut end = None;
        for item in Reader::new(bytes).with_block(block) {
            assert!(end.is_none(), "an item after the end");
            match item {
                Item::Record { offset, kind, body } => records.push(Written {
                    offset,
                    kind,
                    body: body.to_vec(),
                }),
                Item::End(e) => end = Some(e),
            }
        }
        (records, end.expect("the reader always ends with End"))
    }

    #[test]
    fn many_random_records_round_trip() {
        for seed in 1..20 {
            let (bytes, written) = log(seed, 200, 300, None);
            assert_eq!(read(&bytes, BLOCK), (written, End::Clean), "seed {seed}");
        }
    }

    #[test]
    fn empty_and_maximum_bodies_round_trip() {
        let big: Vec<u8> = (0..MAX_RECORD).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut bytes = Vec::new();
        encode_record(0, b"", &mut bytes).unwrap();
        encode_record(255, &big, &mut bytes).unwrap();
        encode_record(1, b"", &mut bytes).unwrap();
        let mut reader = Reader::new(&bytes);
        assert_eq!(
            reader.next(),
            Some(Item::Record {
                offset: 0,
                kind: 0,
                body: b""
            })
        );
        match reader.next() {
            Some(Item::Record { offset, kind, body }) => {
                assert_eq!((offset, kind), (FRAME_HEADER, 255));
                assert!(body == &big[..]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(reader.next(), Some(Item::Record { kind: 1, .. })));
        assert_eq!(reader.next(), Some(Item::End(End::Clean)));
        assert_eq!(reader.next(), None);
    }

    #[test]
    fn a_body_over_the_maximum_is_refused() {
        let body = vec![0u8; MAX_RECORD + 1];
        let mut out = vec![1, 2, 3];
        assert_eq!(
            encode_record(3, &body, &mut out),
            Err(RecordTooLarge {
                len: MAX_RECORD + 1
            })
        );
        assert_eq!(out, [1, 2, 3], "nothing appended");
    }

    #[test]
    fn replay_returns_records_in_write_order() {
        let mut bytes = Vec::new();
        for seq in 0u64..1000 {
            encode_record(2, &seq.to_le_bytes(), &mut bytes).unwrap();
        }
        let seqs: Vec<u64> = Reader::new(&bytes)
            .filter_map(|item| match item {
                Item::Record { body, .. } => Some(u64::from_le_bytes(body.try_into().unwrap())),
                Item::End(_) => None,
            })
            .collect();
        assert_eq!(seqs, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn every_cut_of_the_log_returns_the_whole_records_before_it() {
        let (bytes, written) = log(7, 40, 120, None);
        let last = written.last().unwrap().offset;
        for cut in 0..=bytes.len() {
            let (records, end) = read(&bytes[..cut], BLOCK);
            let whole: Vec<Written> = written.iter().filter(|w| w.end() <= cut).cloned().collect();
            let kept = whole.last().map_or(0, Written::end);
            assert_eq!(records, whole, "cut at {cut}");
            if kept == cut {
                assert_eq!(end, End::Clean, "cut at {cut}");
            } else {
                assert_eq!(
                    end,
                    End::TornTail {
                        offset: kept,
                        bytes: cut - kept
                    },
                    "cut at {cut}"
                );
            }
            if cut >= last {
                assert!(records.len() >= written.len() - 1);
            }
        }
    }

    #[test]
    fn every_cut_of_a_padded_log_returns_the_whole_records_before_it() {
        let block = 64;
        let (bytes, written) = log(8, 40, 100, Some(block));
        assert!(
            bytes.len() > written.last().unwrap().end(),
            "ends in padding"
        );
        for cut in 0..=bytes.len() {
            let (records, end) = read(&bytes[..cut], block);
            let whole: Vec<Written> = written.iter().filter(|w| w.end() <= cut).cloned().collect();
            assert_eq!(records, whole, "cut at {cut}");
            let kept = whole.last().map_or(0, Written::end);
            // Clean exactly at a record's end, or at the boundary its padding reaches.
            let padded = kept + padding_len(kept, block);
            let clean =
                cut == kept || (cut == padded && bytes[kept..padded].iter().all(|&b| b == 0));
            match end {
                End::Clean => assert!(clean, "cut at {cut}"),
                End::TornTail { offset, bytes } => {
                    assert!(!clean, "cut at {cut}");
                    assert_eq!(offset + bytes, cut);
                    assert!(offset == kept || offset == padded, "cut at {cut}: {offset}");
                }
                End::Corrupt { .. } => panic!("cut at {cut}: {end:?}"),
            }
        }
    }

    #[test]
    fn single_byte_corruption_never_yields_a_wrong_record() {
        let block = 64;
        let (bytes, written) = log(9, 12, 40, Some(block));
        let mut rng = Rng(99);
        for at in 0..bytes.len() {
            for _ in 0..4 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 + rng.below(255) as u8;
                let (records, end) = read(&damaged, block);
                assert_eq!(records[..], written[..records.len()], "byte {at}");
                let range = end
                    .set_aside()
                    .unwrap_or_else(|| panic!("byte {at}: clean"));
                assert!(range.start <= at, "byte {at}: damage reported at {range:?}");
                assert_eq!(range.end, damaged.len());
            }
        }
    }

    #[test]
    fn a_damaged_record_before_good_ones_is_corrupt() {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for i in 0..6u8 {
            offsets.push(bytes.len());
            encode_record(i, &[i; 30], &mut bytes).unwrap();
        }
        bytes[offsets[2] + FRAME_HEADER + 7] ^= 0xFF;
        let (records, end) = read(&bytes, BLOCK);
        assert_eq!(records.len(), 2);
        assert_eq!(
            end,
            End::Corrupt {
                offset: offsets[2],
                bytes: bytes.len() - offsets[2],
                why: Damage::Checksum
            }
        );
    }

    #[test]
    fn a_checksum_error_in_the_last_record_is_a_torn_tail() {
        let (mut bytes, written) = log(11, 5, 50, None);
        let last = written.last().unwrap().offset;
        bytes[last + 4] ^= 1;
        let (records, end) = read(&bytes, BLOCK);
        assert_eq!(records, written[..4]);
        assert_eq!(
            end,
            End::TornTail {
                offset: last,
                bytes: bytes.len() - last
            }
        );
    }

    #[test]
    fn a_zero_filled_tail_is_torn_not_padding() {
        let (mut bytes, written) = log(12, 10, 80, None);
        let logged = bytes.len();
        // Zeros from mid-block to the boundary are padding: clean.
        let mut padded = bytes.clone();
        pad(&mut padded, 0, BLOCK);
        assert!(padded.len() > logged);
        assert_eq!(read(&padded, BLOCK), (written.clone(), End::Clean));
        // Zeros past the boundary (a preallocated file): padding up to the boundary,
        // then a torn tail.
        bytes.resize(logged + 5000, 0);
        assert_eq!(
            read(&bytes, BLOCK),
            (
                written.clone(),
                End::TornTail {
                    offset: BLOCK,
                    bytes: logged + 5000 - BLOCK
                }
            )
        );
        // Zeros that stop short of the boundary are too.
        bytes.truncate(logged + 100);
        assert_eq!(
            read(&bytes, BLOCK).1,
            End::TornTail {
                offset: logged,
                bytes: 100
            }
        );
        // And a whole zero block after the padding.
        padded.resize(padded.len() + BLOCK, 0);
        let boundary = padded.len() - BLOCK;
        assert_eq!(
            read(&padded, BLOCK),
            (
                written,
                End::TornTail {
                    offset: boundary,
                    bytes: BLOCK
                }
            )
        );
    }

    #[test]
    fn zero_bytes_before_a_valid_record_are_corrupt_not_padding() {
        let mut bytes = Vec::new();
        encode_record(1, b"first", &mut bytes).unwrap();
        let hole = bytes.len();
        bytes.resize(BLOCK, 0);
        encode_record(1, b"second", &mut bytes).unwrap();
        // Padding ends at the boundary: both records.
        assert_eq!(read(&bytes, BLOCK).0.len(), 2);
        // A zeroed block where records were, then a record: corrupt.
        let mut zeroed = bytes[..BLOCK].to_vec();
        zeroed.resize(2 * BLOCK, 0);
        zeroed.extend_from_slice(&bytes[BLOCK..]);
        assert_eq!(
            read(&zeroed, BLOCK).1,
            End::Corrupt {
                offset: BLOCK,
                bytes: zeroed.len() - BLOCK,
                why: Damage::Zeroed
            }
        );
        // A stray byte in the padding: the padding no longer counts.
        bytes[hole + 20] = 1;
        let (records, end) = read(&bytes, BLOCK);
        assert_eq!(records.len(), 1);
        assert!(matches!(end, End::Corrupt { offset, .. } if offset == hole));
    }

    #[test]
    fn a_length_of_u32_max_is_set_aside_without_reading_on() {
        let mut bytes = Vec::new();
        encode_record(1, b"ok", &mut bytes).unwrap();
        let at = bytes.len();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0xAB; 20]);
        assert_eq!(
            read(&bytes, BLOCK),
            (
                vec![Written {
                    offset: 0,
                    kind: 1,
                    body: b"ok".to_vec()
                }],
                End::TornTail {
                    offset: at,
                    bytes: 24
                }
            )
        );
        // With a valid record at the next block boundary, the same bytes are corrupt.
        bytes.resize(BLOCK, 0xAB);
        encode_record(1, b"later", &mut bytes).unwrap();
        assert_eq!(
            read(&bytes, BLOCK).1,
            End::Corrupt {
                offset: at,
                bytes: bytes.len() - at,
                why: Damage::Length(u32::MAX)
            }
        );
        let mut too_long = Vec::new();
        too_long.extend_from_slice(&(MAX_RECORD as u32 + 1).to_le_bytes());
        too_long.extend_from_slice(&[0; 5]);
        assert_eq!(
            frame_at(&too_long, 0),
            Err(Damage::Length(MAX_RECORD as u32 + 1))
        );
    }

    #[test]
    fn padding_between_records_is_skipped_and_offsets_are_file_offsets() {
        let block = 64;
        let mut bytes = vec![0xEE; 32]; // a header's place
        encode_record(1, b"a", &mut bytes).unwrap();
        pad(&mut bytes, 0, block);
        assert_eq!(bytes.len(), 64);
        encode_record(2, &[9; 100], &mut bytes).unwrap();
        pad(&mut bytes, 0, block);
        assert_eq!(bytes.len(), 192);
        pad(&mut bytes, 0, block);
        assert_eq!(bytes.len(), 192, "nothing to pad on a boundary");
        encode_record(3, b"", &mut bytes).unwrap();
        let items: Vec<Item> = Reader::starting_at(&bytes, 32).with_block(block).collect();
        assert_eq!(
            items,
            vec![
                Item::Record {
                    offset: 32,
                    kind: 1,
                    body: b"a"
                },
                Item::Record {
                    offset: 64,
                    kind: 2,
                    body: &[9; 100]
                },
                Item::Record {
                    offset: 192,
                    kind: 3,
                    body: b""
                },
                Item::End(End::Clean)
            ]
        );
    }

    #[test]
    fn padding_shorter_than_a_frame_header_is_still_padding() {
        let block = 64;
        let mut bytes = Vec::new();
        encode_record(1, &[5; 64 - FRAME_HEADER - 3], &mut bytes).unwrap();
        assert_eq!(padding_len(bytes.len(), block), 3);
        pad(&mut bytes, 0, block);
        encode_record(2, b"next", &mut bytes).unwrap();
        let (records, end) = read(&bytes, block);
        assert_eq!(
            records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [0, 64]
        );
        assert_eq!(end, End::Clean);
    }

    #[test]
    fn garbage_never_panics_and_ends_once() {
        let mut rng = Rng(13);
        for _ in 0..2000 {
            let len = rng.below(200);
            let mut bytes = rng.bytes(len);
            // Small lengths now and then, so that some frames look plausible.
            if len >= 4 && rng.below(2) == 0 {
                bytes[..4].copy_from_slice(&(rng.below(50) as u32).to_le_bytes());
            }
            let (records, end) = read(&bytes, 16);
            if let Some(range) = end.set_aside() {
                assert_eq!(range.end, bytes.len());
                assert!(records.last().map_or(0, Written::end) <= range.start);
            }
        }
    }
}
