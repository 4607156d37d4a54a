//! The 32-byte header at the start of every segment (layout in the module docs of
//! [`crate::store`]).

use super::frame::Reader;

/// The first 8 bytes of every segment.
pub const MAGIC: [u8; 8] = *b"SHMQLOG\0";

/// The format this code writes, and the newest it reads (1 lacked the shared
/// subscription records, 2 the MQTT 5.0 fields; both are read as well).
pub const FORMAT_VERSION: u32 = 3;

/// Size of the segment header; records start right after it.
pub const HEADER_LEN: usize = 32;

/// Bytes the header's checksum covers (the checksum itself takes the rest).
const CHECKED_LEN: usize = 28;

/// What a segment's header says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The shard whose log this segment belongs to.
    pub shard: u16,
    /// Place of this segment in its shard's log: segments are read in this order.
    pub segment: u32,
    /// Log sequence number of the segment's first record; the next records follow
    /// one by one.
    pub first_record: u64,
}

/// Why bytes are not a segment header this code can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes: a segment whose creation was cut short.
    #[error("segment header truncated: {len} of {HEADER_LEN} bytes")]
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// The magic is wrong: some other file.
    #[error("not a shardmq log segment (bad magic)")]
    NotASegment,
    /// The header's checksum does not match its contents.
    #[error("segment header is corrupt (checksum mismatch)")]
    Corrupt,
    /// Written by a newer shardmq, in a format this one cannot read.
    #[error(
        "segment format version {found} is newer than the newest this shardmq reads \
         ({supported}): run a shardmq at least as new as the one that wrote it"
    )]
    NewerFormat {
        /// The version in the header.
        found: u32,
        /// [`FORMAT_VERSION`].
        supported: u32,
    },
    /// The checksum matches but a field holds a value no version ever wrote.
    #[error("segment header is invalid: {0}")]
    Invalid(&'static str),
}

/// The 32 bytes that start a segment, in the current format.
pub fn encode_header(header: &SegmentHeader) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..14].copy_from_slice(&header.shard.to_le_bytes());
    // 14..16 reserved, zero.
    out[16..24].copy_from_slice(&header.first_record.to_le_bytes());
    out[24..28].copy_from_slice(&header.segment.to_le_bytes());
    let crc = crc32c::crc32c(&out[..CHECKED_LEN]);
    out[CHECKED_LEN..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads the header at the start of `segment` (bytes after the first
/// [`HEADER_LEN`] are ignored). Checks, in order: length, magic, checksum, version,
/// reserved bytes; so a damaged version field is reported as corruption, not as a
/// newer format.
pub fn decode_header(segment: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let Some(bytes) = segment.get(..HEADER_LEN) else {
        return Err(HeaderError::Truncated { len: segment.len() });
    };
    if bytes[0..8] != MAGIC {
        return Err(HeaderError::NotASegment);
    }
    if crc32c::crc32c(&bytes[..CHECKED_LEN]) != le_u32(bytes, CHECKED_LEN) {
        return Err(HeaderError::Corrupt);
    }
    let version = le_u32(bytes, 8);
    if version > FORMAT_VERSION {
        return Err(HeaderError::NewerFormat {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(HeaderError::Invalid("format version 0"));
    }
    if bytes[14..16] != [0, 0] {
        return Err(HeaderError::Invalid("reserved bytes are not zero"));
    }
    let mut first_record = [0u8; 8];
    first_record.copy_from_slice(&bytes[16..24]);
    Ok(SegmentHeader {
        shard: u16::from_le_bytes([bytes[12], bytes[13]]),
        first_record: u64::from_le_bytes(first_record),
        segment: le_u32(bytes, 24),
    })
}

/// Reads a whole segment: its header, and a [`Reader`] over the records after it
/// (offsets and block boundaries counted from the start of the segment, as in the
/// file).
pub fn open(segment: &[u8]) -> Result<(SegmentHeader, Reader<'_>), HeaderError> {
    let header = decode_header(segment)?;
    Ok((header, Reader::starting_at(segment, HEADER_LEN)))
}

/// The little-endian u32 at `at` (the caller has checked the length).
fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{encode_record, End, Item};

    fn sample() -> SegmentHeader {
        SegmentHeader {
            shard: 0xBEEF,
            segment: 0x0102_0304,
            first_record: 0x1122_3344_5566_7788,
        }
    }

    /// A header with `edit` applied and its checksum made right again.
    fn resealed(edit: impl FnOnce(&mut [u8; HEADER_LEN])) -> [u8; HEADER_LEN] {
        let mut bytes = encode_header(&sample());
        edit(&mut bytes);
        let crc = crc32c::crc32c(&bytes[..CHECKED_LEN]);
        bytes[CHECKED_LEN..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn header_round_trips_with_the_documented_layout() {
        let bytes = encode_header(&sample());
        assert_eq!(&bytes[..8], b"SHMQLOG\0");
        assert_eq!(bytes[8..12], 3u32.to_le_bytes());
        assert_eq!(bytes[12..14], 0xBEEFu16.to_le_bytes());
        assert_eq!(bytes[14..16], [0, 0]);
        assert_eq!(bytes[16..24], 0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(bytes[24..28], 0x0102_0304u32.to_le_bytes());
        assert_eq!(decode_header(&bytes), Ok(sample()));
        let edge = SegmentHeader {
            shard: 0,
            segment: u32::MAX,
            first_record: u64::MAX,
        };
        assert_eq!(decode_header(&encode_header(&edge)), Ok(edge));
    }

    #[test]
    fn bad_magic_is_not_a_segment() {
        let mut bytes = encode_header(&sample());
        bytes[0] = b'X';
        assert_eq!(decode_header(&bytes), Err(HeaderError::NotASegment));
        assert_eq!(decode_header(&[0u8; 64]), Err(HeaderError::NotASegment));
    }

    #[test]
    fn newer_version_is_refused_with_both_versions_named() {
        let bytes = resealed(|b| b[8..12].copy_from_slice(&4u32.to_le_bytes()));
        let err = decode_header(&bytes).unwrap_err();
        assert_eq!(
            err,
            HeaderError::NewerFormat {
                found: 4,
                supported: FORMAT_VERSION
            }
        );
        let text = err.to_string();
        assert!(text.contains("version 4") && text.contains("(3)"), "{text}");
    }

    #[test]
    fn version_1_and_2_segments_are_still_read() {
        // Version 1 lacks the shared-subscription records, 2 the 5.0 fields.
        for v in [1u32, 2] {
            let bytes = resealed(|b| b[8..12].copy_from_slice(&v.to_le_bytes()));
            assert!(decode_header(&bytes).is_ok(), "version {v}");
        }
    }

    #[test]
    fn header_checksum_failure_is_corrupt_even_in_the_version_field() {
        for at in 8..HEADER_LEN {
            let mut bytes = encode_header(&sample());
            bytes[at] ^= 0x40;
            assert_eq!(
                decode_header(&bytes),
                Err(HeaderError::Corrupt),
                "byte {at}"
            );
        }
    }

    #[test]
    fn version_zero_and_reserved_bytes_are_invalid() {
        let zero = resealed(|b| b[8..12].copy_from_slice(&[0; 4]));
        assert!(matches!(decode_header(&zero), Err(HeaderError::Invalid(_))));
        let reserved = resealed(|b| b[15] = 1);
        assert!(matches!(
            decode_header(&reserved),
            Err(HeaderError::Invalid(_))
        ));
    }

    #[test]
    fn short_header_is_truncated() {
        let bytes = encode_header(&sample());
        for len in 0..HEADER_LEN {
            assert_eq!(
                decode_header(&bytes[..len]),
                Err(HeaderError::Truncated { len })
            );
        }
    }

    #[test]
    fn open_reads_records_after_the_header_with_file_offsets() {
        let mut segment = encode_header(&sample()).to_vec();
        encode_record(7, b"hello", &mut segment).unwrap();
        let (header, reader) = open(&segment).unwrap();
        assert_eq!(header, sample());
        let items: Vec<Item> = reader.collect();
        assert_eq!(
            items,
            vec![
                Item::Record {
                    offset: HEADER_LEN,
                    kind: 7,
                    body: b"hello"
                },
                Item::End(End::Clean)
            ]
        );
    }
}
