//! The few file operations the log needs, behind a trait: glommio DMA files in the
//! broker ([`DmaLogFile`]), an in-memory file that can crash mid-write in tests.
//!
//! Everything that decides what to write, and what the bytes read back mean, is
//! sans-IO ([`crate::store::SegmentWriter`], [`crate::store::Recovery`]); this layer
//! only moves bytes.

use std::io;
use std::path::Path;

use glommio::io::{BufferedFile, Directory, DmaFile, OpenOptions};

use super::frame::BLOCK;

/// One segment file. Methods are async because glommio's are; each shard drives its
/// own files on its own thread, so the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait LogFile {
    /// Writes all of `bytes` at `offset`. For a DMA file both are multiples of the
    /// device's alignment; [`crate::store::BlockWrite`]s are whole 4096-byte blocks.
    async fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// fdatasync: every completed write is durable once this returns `Ok`.
    async fn sync(&mut self) -> io::Result<()>;
    /// The file's length in bytes.
    async fn size(&mut self) -> io::Result<u64>;
    /// Cuts the file to `len` bytes (recovery sets a damaged tail aside this way);
    /// durable after the next [`LogFile::sync`].
    async fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// The whole file, for recovery.
    async fn read_all(&mut self) -> io::Result<Vec<u8>>;
}

/// How a segment file is opened: read and write, and for a new one, created
/// (failing if it exists).
fn segment_options(create: bool) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if create {
        o.create_new(true);
    }
    o
}

/// A segment file through glommio's DMA API (O_DIRECT, io_uring): writes bypass the
/// page cache and `fdatasync` does not block the shard's other connections.
#[derive(Debug)]
pub struct DmaLogFile {
    file: DmaFile,
}

impl DmaLogFile {
    /// Creates a new segment file; fails if it exists. Call [`prime_iopoll_probe`]
    /// first on this thread (an empty file misleads glommio's probe). The caller
    /// syncs the directory
    /// ([`sync_directory`]) before anything written to the file is acknowledged, or
    /// a crash may lose the file's name.
    pub async fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = segment_options(true).dma_open(path.as_ref()).await?;
        Ok(DmaLogFile { file })
    }

    /// Opens an existing segment for recovery and appending. (`DmaFile::open` opens
    /// read-only and `DmaFile::create` write-only and truncating: neither fits.)
    pub async fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = segment_options(false).dma_open(path.as_ref()).await?;
        Ok(DmaLogFile { file })
    }

    /// Closes the file.
    pub async fn close(self) -> io::Result<()> {
        Ok(self.file.close().await?)
    }
}

/// Name of the one-block file [`prime_iopoll_probe`] keeps in a log directory.
pub const PROBE_FILE: &str = "iopoll-probe";

/// Makes glommio's per-device choice of I/O ring on this thread a sound one; call it
/// on each shard's thread before it opens or creates any segment in `dir`.
///
/// glommio 0.9 decides, once per device and per thread, whether to send DMA reads
/// and writes to its polled io_uring (IOPOLL) by reading the first block of the
/// first `DmaFile` opened on the device, taking `EOPNOTSUPP` for "no". A newly
/// created, empty file answers that read with end-of-file before the device is
/// asked, so glommio concludes the device polls; on one that does not (a virtio
/// disk, most SATA and many NVMe setups without poll queues) writes still
/// complete but every later read of data fails with `EOPNOTSUPP`. Opening a file
/// that holds a block of data first makes the probe ask the device. The file is
/// written once, through the page cache, and never read for its contents.
pub async fn prime_iopoll_probe(dir: impl AsRef<Path>) -> io::Result<()> {
    let path = dir.as_ref().join(PROBE_FILE);
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if len < BLOCK as u64 {
        std::fs::write(&path, [0xA5; BLOCK])?;
    }
    let file = DmaFile::open(&path).await?;
    Ok(file.close().await?)
}

/// fsyncs a directory, so that files created or renamed in it keep their names
/// through a crash.
pub async fn sync_directory(path: impl AsRef<Path>) -> io::Result<()> {
    let dir = Directory::open(path.as_ref()).await?;
    dir.sync().await?;
    Ok(dir.close().await?)
}

impl LogFile for DmaLogFile {
    async fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut buf = self.file.alloc_dma_buffer(bytes.len());
        buf.as_bytes_mut().copy_from_slice(bytes);
        let written = self.file.write_at(buf, offset).await?;
        if written != bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short DMA write: {written} of {} bytes", bytes.len()),
            ));
        }
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        Ok(self.file.fdatasync().await?)
    }

    async fn size(&mut self) -> io::Result<u64> {
        Ok(self.file.file_size().await?)
    }

    async fn truncate(&mut self, len: u64) -> io::Result<()> {
        Ok(self.file.truncate(len).await?)
    }

    async fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let len = self.file.file_size().await?;
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "segment too large"))?;
        let mut out = Vec::with_capacity(len);
        // Reads in 1 MiB pieces, at aligned offsets, up to the file's length.
        const PIECE: usize = 1 << 20;
        while out.len() < len {
            let want = PIECE.min(len - out.len());
            let read = self.file.read_at(out.len() as u64, want).await?;
            if read.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("segment shorter than its size: {} of {len}", out.len()),
                ));
            }
            out.extend_from_slice(&read);
        }
        Ok(out)
    }
}

/// A segment file written through the page cache, for a filesystem that refuses
/// O_DIRECT: the same writes, and the same fdatasync before anything is
/// acknowledged (glommio's buffered file, on io_uring too).
#[derive(Debug)]
pub struct BufferedLogFile {
    file: BufferedFile,
}

impl BufferedLogFile {
    /// Creates a new segment file; fails if it exists.
    pub async fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = segment_options(true).buffered_open(path.as_ref()).await?;
        Ok(BufferedLogFile { file })
    }

    /// Opens an existing segment for reading and appending.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = segment_options(false).buffered_open(path.as_ref()).await?;
        Ok(BufferedLogFile { file })
    }

    /// Closes the file.
    pub async fn close(self) -> io::Result<()> {
        Ok(self.file.close().await?)
    }
}

impl LogFile for BufferedLogFile {
    async fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < bytes.len() {
            let n = self
                .file
                .write_at(bytes[at..].to_vec(), offset + at as u64)
                .await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
            }
            at += n;
        }
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        Ok(self.file.fdatasync().await?)
    }

    async fn size(&mut self) -> io::Result<u64> {
        Ok(self.file.file_size().await?)
    }

    async fn truncate(&mut self, len: u64) -> io::Result<()> {
        Ok(self.file.truncate(len).await?)
    }

    async fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let len = self.file.file_size().await?;
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "segment too large"))?;
        let read = self.file.read_at(0, len).await?;
        Ok(read.to_vec())
    }
}

/// A segment file of either kind, as the shard's committer writes it.
#[derive(Debug)]
pub enum SegmentFile {
    Direct(DmaLogFile),
    Buffered(BufferedLogFile),
}

impl SegmentFile {
    /// Creates a new segment file, with direct I/O or through the page cache.
    pub async fn create(path: impl AsRef<Path>, direct: bool) -> io::Result<Self> {
        Ok(if direct {
            SegmentFile::Direct(DmaLogFile::create(path).await?)
        } else {
            SegmentFile::Buffered(BufferedLogFile::create(path).await?)
        })
    }

    pub async fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        match self {
            SegmentFile::Direct(f) => f.write_at(offset, bytes).await,
            SegmentFile::Buffered(f) => f.write_at(offset, bytes).await,
        }
    }

    pub async fn sync(&mut self) -> io::Result<()> {
        match self {
            SegmentFile::Direct(f) => f.sync().await,
            SegmentFile::Buffered(f) => f.sync().await,
        }
    }

    pub async fn close(self) -> io::Result<()> {
        match self {
            SegmentFile::Direct(f) => f.close().await,
            SegmentFile::Buffered(f) => f.close().await,
        }
    }
}

/// Whether the filesystem holding `dir` takes direct I/O: primes glommio's probe
/// there ([`prime_iopoll_probe`]); `Ok(false)` when it refuses O_DIRECT (EINVAL),
/// so the log is written through the page cache instead.
pub async fn direct_io_works(dir: impl AsRef<Path>) -> io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.as_ref().join(PROBE_FILE);
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if len < BLOCK as u64 {
        std::fs::write(&path, [0xA5; BLOCK])?;
    }
    // Asked of the kernel directly: glommio's error for it loses the errno.
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
    {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
        Err(e) => return Err(e),
    }
    prime_iopoll_probe(dir).await?;
    Ok(true)
}
