//! An in-memory [`LogFile`] that can crash (tests only): what a power loss leaves of
//! the writes since the last sync, the last of them torn at a chosen byte.

use std::io;

use super::file::LogFile;

/// What a crash leaves of the torn write's bytes after the kept prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rest {
    /// Nothing: a write that extended the file leaves it ending after the prefix.
    Missing,
    /// Zeros over the rest of the write's range (allocated, never written).
    Zeros,
    /// Pseudo-random bytes from this seed (a device that wrote garbage).
    Garbage(u64),
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, bytes: Vec<u8> },
    Truncate(u64),
}

/// A file in memory: what reads see now, what is durable, and the operations since
/// the last sync.
#[derive(Debug, Clone, Default)]
pub struct MemFile {
    now: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Op>,
}

impl MemFile {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// What reads see now.
    pub fn contents(&self) -> &[u8] {
        &self.now
    }

    /// The file after a power loss: the durable bytes, every unsynced operation but
    /// the last applied whole, and the last, if a write, torn after `keep` bytes with
    /// `rest` for the others.
    pub fn crash(&self, keep: usize, rest: Rest) -> MemFile {
        let mut bytes = self.durable.clone();
        let Some((last, earlier)) = self.unsynced.split_last() else {
            return MemFile::durable(bytes);
        };
        for op in earlier {
            apply(&mut bytes, op);
        }
        match last {
            Op::Truncate(_) => apply(&mut bytes, last),
            Op::Write { offset, bytes: w } => {
                let keep = keep.min(w.len());
                let mut torn = w[..keep].to_vec();
                match rest {
                    Rest::Missing => {}
                    Rest::Zeros => torn.resize(w.len(), 0),
                    Rest::Garbage(seed) => {
                        let mut x = seed | 1;
                        torn.extend((keep..w.len()).map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        }));
                    }
                }
                // A write torn before its first byte leaves the file as it was.
                if !torn.is_empty() {
                    let op = Op::Write {
                        offset: *offset,
                        bytes: torn,
                    };
                    apply(&mut bytes, &op);
                }
            }
        }
        MemFile::durable(bytes)
    }

    /// A file whose every byte is durable.
    fn durable(bytes: Vec<u8>) -> MemFile {
        MemFile {
            now: bytes.clone(),
            durable: bytes,
            unsynced: Vec::new(),
        }
    }
}

fn apply(file: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, bytes } => {
            let at = *offset as usize;
            if file.len() < at + bytes.len() {
                file.resize(at + bytes.len(), 0);
            }
            file[at..at + bytes.len()].copy_from_slice(bytes);
        }
        Op::Truncate(len) => file.resize(*len as usize, 0),
    }
}

impl LogFile for MemFile {
    async fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let op = Op::Write {
            offset,
            bytes: bytes.to_vec(),
        };
        apply(&mut self.now, &op);
        self.unsynced.push(op);
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.durable = self.now.clone();
        self.unsynced.clear();
        Ok(())
    }

    async fn size(&mut self) -> io::Result<u64> {
        Ok(self.now.len() as u64)
    }

    async fn truncate(&mut self, len: u64) -> io::Result<()> {
        let op = Op::Truncate(len);
        apply(&mut self.now, &op);
        self.unsynced.push(op);
        Ok(())
    }

    async fn read_all(&mut self) -> io::Result<Vec<u8>> {
        Ok(self.now.clone())
    }
}
