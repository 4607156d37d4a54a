//! The on-disk format of a shard's append-only log, sans-IO: segment headers, record
//! frames, and the recovery reader that walks a segment after a crash.
//!
//! Nothing here opens a file. The file layer (later: glommio DMA files, one log per
//! shard, design §11) hands whole segments in as byte slices and writes out the bytes
//! [`encode_header`], [`encode_record`] and [`pad`] append; everything that decides
//! what a byte means lives here and is tested without files.
//!
//! # A segment
//!
//! ```text
//! offset 0    segment header, 32 bytes (see below)
//! offset 32   record frame, record frame, ..., [zero padding to a block boundary],
//!             record frame, ...
//! ```
//!
//! ## The header (32 bytes, little-endian)
//!
//! | bytes  | field                                                               |
//! |--------|---------------------------------------------------------------------|
//! | 0..8   | magic `b"SHMQLOG\0"`                                                |
//! | 8..12  | format version, u32 ([`FORMAT_VERSION`] = 3)                        |
//! | 12..14 | shard id, u16                                                       |
//! | 14..16 | reserved, zero                                                      |
//! | 16..24 | first record: the log sequence number of the segment's first record |
//! | 24..28 | segment sequence number in the shard's log, u32                     |
//! | 28..32 | CRC32C (Castagnoli) of bytes 0..28                                  |
//!
//! Records are numbered consecutively across a shard's segments, so a position a
//! session keeps ("delivered up to record N of shard S's stream") is a record number:
//! no change of framing, padding or compaction can shift it, and the segment holding
//! record N is found from the headers alone. The segment number (u32: four billion
//! segments) orders the files without trusting their names.
//!
//! These 32 bytes keep this shape in every later version (magic, version, and the
//! checksum of the first 28 bytes in the last 4); what a later version adds goes in
//! the reserved bytes or after the header. So a reader checks the magic, then the
//! checksum (a damaged header is [`HeaderError::Corrupt`], whatever its version field
//! says), then the version: one above [`FORMAT_VERSION`] is refused with
//! [`HeaderError::NewerFormat`] rather than guessed at.
//!
//! ## A record frame
//!
//! ```text
//! [len: u32 LE][crc: u32 LE][kind: u8][body: len bytes]
//! ```
//!
//! `crc` is the CRC32C of the kind byte and the body; `len` counts the body only and
//! is at most [`MAX_RECORD`], so a damaged length can never make anyone allocate or
//! wait for gigabytes. The kind says what the body holds (a message, a session's
//! acknowledged position, ...); this layer gives no kind a meaning. Frames are packed
//! with no alignment: bodies are copied out or borrowed as bytes, never cast in place,
//! and rounding every record to 8 bytes would cost up to 7 bytes on each small QoS 1
//! message for nothing. Frames may cross block boundaries.
//!
//! ## Padding
//!
//! DMA writes are whole 4096-byte blocks ([`BLOCK`]). A write that ends mid-block is
//! filled with zero bytes up to the next boundary ([`pad`]). Zero bytes count as
//! padding only if they start mid-block and run, all of them, up to the next block
//! boundary, which must lie within the segment. A valid frame can never start with
//! nine zero bytes (the CRC32C of a kind byte is never zero), so padding is never
//! mistaken for a record. Zeros that start on a block boundary, or stop before the
//! next one, are not padding: they are what a preallocated file, or a write torn
//! before its last sectors, leaves behind, and the reader reports them as a torn tail.
//!
//! # Recovery
//!
//! [`Reader`] returns every record before the first damage, in order, as slices
//! borrowed from the input (no allocation, whatever the input), then one [`End`]:
//! - [`End::Clean`]: every byte was a record or padding;
//! - [`End::TornTail`]: from some offset on, no valid record: an incomplete frame, a
//!   zero-filled or garbage region: the normal result of a crash mid-write;
//! - [`End::Corrupt`]: a damaged frame (checksum mismatch, impossible length) with a
//!   valid record after it: bytes that were once written whole have changed.
//!
//! Either way the damaged part, from the first bad byte to the end of the segment, is
//! set aside (its offset and length reported) and never parsed: nothing after damage
//! is trusted, since a record there may be a fragment of an older write. Damage never
//! stops a start (design §11, invariant 5): the file layer logs it, keeps what came
//! before, and goes on.

mod file;
mod frame;
pub mod generation;
mod header;
#[cfg(test)]
mod memfile;
pub mod records;
mod recovery;
pub mod replay;
mod segment;
#[cfg(test)]
mod test_rng;

pub use file::{
    direct_io_works, prime_iopoll_probe, sync_directory, BufferedLogFile, DmaLogFile, LogFile,
    SegmentFile, PROBE_FILE,
};
pub use frame::{
    checksum, encode_record, frame_at, pad, padding_len, Damage, End, Item, Reader, RecordTooLarge,
    BLOCK, FRAME_HEADER, MAX_RECORD,
};
pub use header::{
    decode_header, encode_header, open, HeaderError, SegmentHeader, FORMAT_VERSION, HEADER_LEN,
    MAGIC,
};
pub use recovery::{
    parse_segment_file_name, segment_file_name, Recovered, Recovery, Unusable, Verdict,
};
pub use segment::{AppendError, BlockWrite, Commit, Resume, SegmentWriter, WriterConfig};
