//! Opening a shard's log after a start or a crash, sans-IO: the segments, in order,
//! through the recovery [`Reader`](crate::store::Reader), checked to run on without
//! gaps, and what to cut.
//!
//! The caller lists the shard's segment files, sorts them by the number in their
//! names ([`segment_file_name`]), and feeds each file's bytes to
//! [`Recovery::segment`], which hands every record kept to a callback with its log
//! sequence number and says what to do with the file ([`Verdict`]). Nothing after the
//! first damage is trusted (the format's rule, [`crate::store`]): once a segment is
//! cut, every later one is set aside whole. That loses only unacknowledged records
//! after a crash: commits complete in order, so the damaged commit was the last one
//! in flight, and a segment it started holds none of the earlier, acknowledged ones.
//! Damage in bytes once written whole (a [`End::Corrupt`]) is reported as such.
//!
//! [`Recovery::finish`] says where the writer resumes ([`Resume`]). Before it starts,
//! the caller truncates the file a [`Verdict::Truncate`] names to its `at` and
//! fdatasyncs it (else a crash during the next commit could bring the cut bytes back
//! in front of it), renames each [`Verdict::SetAside`] file out of the way, syncs the
//! directory, and logs what it set aside. Damage never stops a start (design §11,
//! invariant 5).

use super::frame::{End, Item};
use super::header::{open, HeaderError, SegmentHeader};
use super::segment::Resume;

/// The name of segment `segment`'s file: sorts in segment order.
pub fn segment_file_name(segment: u32) -> String {
    format!("{segment:010}.log")
}

/// The segment number in a segment file's name, or `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Why a whole segment file is set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// Its header cannot be read (a creation cut short leaves a truncated one).
    #[error("segment header: {0}")]
    Header(#[from] HeaderError),
    /// It belongs to another shard's log.
    #[error("segment of shard {found}, not of this shard")]
    WrongShard {
        /// The shard its header names.
        found: u16,
    },
    /// Its number is not the one after the previous segment's, or not its name's.
    #[error("segment number {found}, expected {expected}")]
    OutOfOrder {
        /// The number it should have.
        expected: u32,
        /// The number its header holds.
        found: u32,
    },
    /// Its first record does not follow the previous segment's last.
    #[error("segment starts at record {found}, expected {expected}")]
    RecordGap {
        /// The record number that should come next.
        expected: u64,
        /// The first record its header names.
        found: u64,
    },
    /// An earlier segment was cut: nothing after damage is trusted.
    #[error("follows a damaged segment")]
    AfterDamage,
}

/// What to do with one segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every byte is records or padding: keep it all.
    Keep {
        /// Its header.
        header: SegmentHeader,
        /// Records it holds.
        records: u64,
    },
    /// Keep the bytes before `at`, records included; cut the rest, which `end`
    /// describes (its offset and length, torn or corrupt).
    Truncate {
        /// Its header.
        header: SegmentHeader,
        /// Records kept.
        records: u64,
        /// New length of the file.
        at: u64,
        /// What was found from `at` on.
        end: End,
    },
    /// Keep none of it; no record was handed out from it.
    SetAside(Unusable),
}

/// A record found by recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered<'a> {
    /// Its log sequence number.
    pub record: u64,
    /// Its kind byte.
    pub kind: u8,
    /// Its body, borrowed from the segment's bytes.
    pub body: &'a [u8],
}

/// Walks a shard's segments in order; see the module docs.
#[derive(Debug, Clone)]
pub struct Recovery {
    shard: u16,
    /// Header and kept length of the last segment kept, and the next record number.
    last: Option<(SegmentHeader, u64)>,
    next_record: Option<u64>,
    /// The first segment number seen, for a log of which nothing is kept.
    first_named: Option<u32>,
    damaged: bool,
}

impl Recovery {
    /// Recovery of shard `shard`'s log.
    pub fn new(shard: u16) -> Self {
        Recovery {
            shard,
            last: None,
            next_record: None,
            first_named: None,
            damaged: false,
        }
    }

    /// Reads the next segment file, named `named` ([`parse_segment_file_name`]) and
    /// holding `bytes`; calls `on_record` for each record kept, in order. Never panics.
    pub fn segment<'a>(
        &mut self,
        named: u32,
        bytes: &'a [u8],
        mut on_record: impl FnMut(Recovered<'a>),
    ) -> Verdict {
        self.first_named.get_or_insert(named);
        let verdict = self.read(named, bytes, &mut on_record);
        match verdict {
            Verdict::Keep { .. } => {}
            Verdict::Truncate { .. } | Verdict::SetAside(_) => self.damaged = true,
        }
        verdict
    }

    fn read<'a>(
        &mut self,
        named: u32,
        bytes: &'a [u8],
        on_record: &mut impl FnMut(Recovered<'a>),
    ) -> Verdict {
        if self.damaged {
            return Verdict::SetAside(Unusable::AfterDamage);
        }
        let (header, reader) = match open(bytes) {
            Ok(opened) => opened,
            Err(e) => return Verdict::SetAside(e.into()),
        };
        if header.shard != self.shard {
            return Verdict::SetAside(Unusable::WrongShard {
                found: header.shard,
            });
        }
        let expected = match self.last {
            Some((last, _)) => last.segment.checked_add(1),
            None => Some(named),
        };
        if expected != Some(header.segment) || header.segment != named {
            return Verdict::SetAside(Unusable::OutOfOrder {
                expected: expected.unwrap_or(named),
                found: header.segment,
            });
        }
        if let Some(expected) = self.next_record {
            if header.first_record != expected {
                return Verdict::SetAside(Unusable::RecordGap {
                    expected,
                    found: header.first_record,
                });
            }
        }
        let mut record = header.first_record;
        let mut end = End::Clean;
        for item in reader {
            match item {
                Item::Record { kind, body, .. } => {
                    on_record(Recovered { record, kind, body });
                    // No wrap: 10^6 records a second take 500 000 years.
                    record = record.saturating_add(1);
                }
                Item::End(e) => end = e,
            }
        }
        let records = record - header.first_record;
        self.next_record = Some(record);
        match end.set_aside() {
            None => {
                self.last = Some((header, bytes.len() as u64));
                Verdict::Keep { header, records }
            }
            Some(range) => {
                let at = range.start as u64;
                self.last = Some((header, at));
                Verdict::Truncate {
                    header,
                    records,
                    at,
                    end,
                }
            }
        }
    }

    /// Where the writer resumes: after the last record kept, in the last segment
    /// kept. With nothing kept, a new segment numbered as the first file was (the
    /// caller has renamed it aside), or 0 in an empty directory, starting at record
    /// 0: record numbers restart only when every segment was unreadable.
    pub fn finish(self) -> Resume {
        match (self.last, self.next_record) {
            (Some((header, len)), Some(next_record)) => Resume::Append {
                header,
                len,
                next_record,
            },
            _ => Resume::Create {
                segment: self.first_named.unwrap_or(0),
                next_record: self.next_record.unwrap_or(0),
            },
        }
    }
}

#[cfg(test)]
mod tests;
