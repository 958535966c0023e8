//! The manifest: the store's index made durable, so that a restarted rank can adopt its
//! swap folder (issue 20).
//!
//! # What it holds
//! Every tensor the owning swapper declared at a flush: its key, the swapper's record of
//! it ([`TensorRecord`]: numel, dtype, the bytes the last write stored, their crc32c when
//! checksums are on), the bytes the store reserved for it, and where its pieces are (drive,
//! extent file, offset, length); every extent file of every drive with the size the store
//! had made it; a generation number (1 for the first flush of a new folder, +1 per flush);
//! the library version and format; the rank and the folder kind (`zero_stage_3/
//! float16params`, `zero_stage_3/optimizer`); a random store id, drawn when the folder was
//! created empty and kept across adoptions; the number of drives and the drive the copy is
//! on.
//!
//! # Where, and how it is written
//! Each drive's rank folder holds its own full copy, `manifest.json` (the copies differ
//! only in `this_drive`), so each drive is readable alone and a reordered `nvme_path`
//! list is detected. A flush writes `manifest.json.new`, fsyncs it, renames it over
//! `manifest.json` and fsyncs the folder, drive after drive, after the extent files'
//! data were flushed (fdatasync) on every drive. A crash in the middle leaves some drives
//! at generation G and the others at G - 1; both are complete (the data of both is on
//! stable storage and the space G - 1 names is not reused before G is durable on every
//! drive), and adoption takes G. Copies whose generations differ by more than one, or
//! with different store ids, cannot come from a crash: that is a mix, refused.
//!
//! # Format
//! One header line, `libswapper-manifest 1 crc32c=<8 hex digits> len=<bytes>`, then the
//! body, JSON (serde), whose bytes the crc32c and the length cover: a truncated or
//! garbled file is detected before its JSON is even parsed.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::status::{Error, Result, Status};

/// The manifest's file name in each rank folder.
pub const NAME: &str = "manifest.json";
/// The name a new manifest is written under before it is renamed over [`NAME`].
pub const NEW_NAME: &str = "manifest.json.new";
/// The format this library writes and reads.
pub const FORMAT: u32 = 1;
/// The library version written into every manifest.
pub const LIBRARY: &str = env!("CARGO_PKG_VERSION");
/// A manifest larger than this is refused unread (a garbled size, not a real index).
pub const MAX_BYTES: u64 = 1 << 30;

const MAGIC: &str = "libswapper-manifest";

/// What the owning swapper says of one tensor: enough to serve it after an adoption.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorRecord {
    /// The tensor's name, if its swapper names tensors (the optimizer's "exp_avg"); "" else.
    #[serde(default)]
    pub name: String,
    /// Elements.
    pub numel: u64,
    /// The element type ("float16", "bfloat16", "float32").
    pub dtype: String,
    /// Bytes the last complete write stored (the tensor's valid length on disk).
    pub bytes: u64,
    /// The crc32c of the tensor's data bytes, when checksums are on.
    pub crc32c: Option<u32>,
    /// The crc32c of each part as the I/O workers computed them (offset, length, crc),
    /// which locate a mismatch; empty without checksums.
    #[serde(default)]
    pub checksum_parts: Vec<(u64, u64, u32)>,
}

/// One piece of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceEntry {
    /// The drive's index.
    pub drive: usize,
    /// The extent file's index on that drive (`extent-<file>.swp`).
    pub file: usize,
    /// Byte offset in the file.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// One tensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// The tensor's key (the param's id).
    pub key: u64,
    /// Bytes the store reserved (the pieces' total).
    pub reserved: u64,
    /// The swapper's record.
    pub record: TensorRecord,
    /// The pieces, in tensor order.
    pub pieces: Vec<PieceEntry>,
}

/// One extent file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its name in the rank folder.
    pub name: String,
    /// Its size when the manifest was written (it may only have grown since).
    pub size: u64,
}

/// A manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format ([`FORMAT`]).
    pub format: u32,
    /// The library version that wrote it.
    pub library: String,
    /// The folder kind: the rank folder's parts above the rank (`zero_stage_3/float16params`).
    pub kind: String,
    /// The rank folder's last part (`rank0`).
    pub rank: String,
    /// The store's random id.
    pub store_id: u64,
    /// The generation: 1 for the first flush, one more per flush.
    pub generation: u64,
    /// How many drives the store has.
    pub drives: usize,
    /// The drive this copy is on.
    pub this_drive: usize,
    /// Each drive's extent files, in index order.
    pub files: Vec<Vec<FileEntry>>,
    /// Every tensor.
    pub tensors: Vec<TensorEntry>,
}

/// A piece's bytes in its file and its tensor: (offset, length, key).
type Span = (u64, u64, u64);

/// What an adopting store expects of a manifest.
#[derive(Clone, Debug)]
pub struct Expected {
    /// The folder kind.
    pub kind: String,
    /// The rank folder's last part.
    pub rank: String,
    /// The drives.
    pub drives: usize,
}

impl Manifest {
    /// The bytes of the file: header line and body.
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mut out = format!(
            "{MAGIC} {FORMAT} crc32c={:08x} len={}\n",
            crc32c::crc32c(&body),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// Parses the bytes of a manifest file (`what` names it in messages): `CorruptData`
    /// for a truncated, garbled or foreign file, `Unsupported` for another format.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Manifest> {
        let corrupt = |why: String| {
            Error::new(
                Status::CorruptData,
                format!("the manifest {what} {why}; nothing was changed or removed"),
            )
        };
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupt("has no header line (truncated or not a libswapper manifest)".into()))?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt("has a garbled header".into()))?;
        let mut words = header.split(' ');
        if words.next() != Some(MAGIC) {
            return Err(corrupt("is not a libswapper manifest (no header)".into()));
        }
        let format: u32 = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| corrupt("has a garbled header".into()))?;
        if format != FORMAT {
            return Err(Error::new(
                Status::Unsupported,
                format!(
                    "the manifest {what} is of format {format}; this libswapper ({LIBRARY}) reads format {FORMAT} only; nothing was changed or removed"
                ),
            ));
        }
        let field = |w: Option<&str>, key: &str| w.and_then(|w| w.strip_prefix(key)).map(str::to_owned);
        let crc = field(words.next(), "crc32c=")
            .and_then(|h| u32::from_str_radix(&h, 16).ok())
            .ok_or_else(|| corrupt("has a garbled header".into()))?;
        let len: usize = field(words.next(), "len=")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| corrupt("has a garbled header".into()))?;
        let body = &bytes[nl + 1..];
        if body.len() != len {
            return Err(corrupt(format!(
                "is truncated or extended: its body holds {} bytes, its header says {len}",
                body.len()
            )));
        }
        let got = crc32c::crc32c(body);
        if got != crc {
            return Err(corrupt(format!(
                "is garbled: crc32c {got:08x} of its body, {crc:08x} in its header"
            )));
        }
        let m: Manifest =
            serde_json::from_slice(body).map_err(|e| corrupt(format!("does not parse ({e})")))?;
        if m.format != FORMAT {
            return Err(corrupt(format!(
                "says format {} in its body and {FORMAT} in its header",
                m.format
            )));
        }
        Ok(m)
    }

    /// Checks that the manifest belongs here: library version, folder kind, rank, the
    /// number of drives and the drive it was found on; and that its pieces are sane
    /// (inside their files as recorded, not overlapping, adding up to each tensor's
    /// reserved bytes). `what` names the file.
    pub fn check(&self, want: &Expected, drive: usize, what: &str) -> Result<()> {
        let refuse = |status: Status, why: String| {
            Error::new(
                status,
                format!("the manifest {what} {why}; nothing was changed or removed"),
            )
        };
        if self.library != LIBRARY {
            return Err(refuse(
                Status::Unsupported,
                format!(
                    "was written by libswapper {}; this is {LIBRARY} (adopt with the version that wrote it, or start empty)",
                    self.library
                ),
            ));
        }
        if self.kind != want.kind {
            return Err(refuse(
                Status::InvalidArgument,
                format!(
                    "belongs to a folder of kind {} (another dtype or swapper), not {}",
                    self.kind, want.kind
                ),
            ));
        }
        if self.rank != want.rank {
            return Err(refuse(
                Status::InvalidArgument,
                format!("belongs to {}, not {}", self.rank, want.rank),
            ));
        }
        if self.drives != want.drives || self.files.len() != self.drives {
            return Err(refuse(
                Status::InvalidArgument,
                format!(
                    "describes a store of {} drives; {} are configured",
                    self.drives, want.drives
                ),
            ));
        }
        if self.this_drive != drive {
            return Err(refuse(
                Status::InvalidArgument,
                format!(
                    "is drive {}'s copy, found on drive {drive} (the nvme_path list is in another order than when it was written)",
                    self.this_drive
                ),
            ));
        }
        // (drive, file) -> (offset, length, key) of each piece there.
        let mut used: HashMap<(usize, usize), Vec<Span>> = HashMap::new();
        for t in &self.tensors {
            let mut total = 0u64;
            for p in &t.pieces {
                let size = self
                    .files
                    .get(p.drive)
                    .and_then(|f| f.get(p.file))
                    .map(|f| f.size)
                    .ok_or_else(|| {
                        refuse(
                            Status::CorruptData,
                            format!(
                                "names file {} of drive {} for tensor {}, which it does not list",
                                p.file, p.drive, t.key
                            ),
                        )
                    })?;
                if p.len == 0 || p.offset.checked_add(p.len).is_none_or(|e| e > size) {
                    return Err(refuse(
                        Status::CorruptData,
                        format!(
                            "places tensor {} at bytes {}..+{} of extent-{}.swp on drive {}, outside its {size} bytes",
                            t.key, p.offset, p.len, p.file, p.drive
                        ),
                    ));
                }
                used.entry((p.drive, p.file))
                    .or_default()
                    .push((p.offset, p.len, t.key));
                total += p.len;
            }
            if total != t.reserved || t.record.bytes > t.reserved {
                return Err(refuse(
                    Status::CorruptData,
                    format!(
                        "gives tensor {} pieces of {total} bytes for {} reserved and {} stored",
                        t.key, t.reserved, t.record.bytes
                    ),
                ));
            }
        }
        for ((d, f), mut v) in used {
            v.sort_unstable();
            for w in v.windows(2) {
                if w[0].0 + w[0].1 > w[1].0 {
                    return Err(refuse(
                        Status::CorruptData,
                        format!(
                            "places tensors {} and {} in overlapping bytes of extent-{f}.swp on drive {d}",
                            w[0].2, w[1].2
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A new random store id.
pub fn new_store_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            library: LIBRARY.into(),
            kind: "zero_stage_3/float16params".into(),
            rank: "rank0".into(),
            store_id: 7,
            generation: 3,
            drives: 1,
            this_drive: 0,
            files: vec![vec![FileEntry {
                name: "extent-0.swp".into(),
                size: 1 << 20,
            }]],
            tensors: vec![
                TensorEntry {
                    key: 1,
                    reserved: 8192,
                    record: TensorRecord {
                        name: String::new(),
                        numel: 4096,
                        dtype: "float16".into(),
                        bytes: 8192,
                        crc32c: Some(5),
                        checksum_parts: vec![(0, 8192, 5)],
                    },
                    pieces: vec![PieceEntry {
                        drive: 0,
                        file: 0,
                        offset: 0,
                        len: 8192,
                    }],
                },
                TensorEntry {
                    key: 2,
                    reserved: 4096,
                    record: TensorRecord {
                        name: String::new(),
                        numel: 10,
                        dtype: "float16".into(),
                        bytes: 4096,
                        crc32c: None,
                        checksum_parts: vec![],
                    },
                    pieces: vec![PieceEntry {
                        drive: 0,
                        file: 0,
                        offset: 8192,
                        len: 4096,
                    }],
                },
            ],
        }
    }

    fn want() -> Expected {
        Expected {
            kind: "zero_stage_3/float16params".into(),
            rank: "rank0".into(),
            drives: 1,
        }
    }

    #[test]
    fn round_trips_and_checks() {
        let m = sample();
        let bytes = m.encode();
        let back = Manifest::decode(&bytes, "m").unwrap();
        assert_eq!(back, m);
        back.check(&want(), 0, "m").unwrap();
    }

    #[test]
    fn truncated_garbled_and_foreign_files_are_refused() {
        let bytes = sample().encode();
        for cut in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            let e = Manifest::decode(&bytes[..cut], "m").err().unwrap();
            assert_eq!(e.status(), Status::CorruptData, "{cut}: {e}");
        }
        let mut garbled = bytes.clone();
        let k = garbled.len() - 10;
        garbled[k] ^= 0x20;
        let e = Manifest::decode(&garbled, "m").err().unwrap();
        assert!(e.message().contains("garbled"), "{e}");
        let e = Manifest::decode(b"{\"json\": 1}\n", "m").err().unwrap();
        assert_eq!(e.status(), Status::CorruptData);
        let other = String::from_utf8(bytes.clone())
            .unwrap()
            .replacen(" 1 crc", " 2 crc", 1);
        let e = Manifest::decode(other.as_bytes(), "m").err().unwrap();
        assert_eq!(e.status(), Status::Unsupported, "{e}");
    }

    #[test]
    fn another_rank_kind_version_drive_count_or_overlap_is_refused() {
        type Edit = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(Edit, Status, &str)> = vec![
            (
                Box::new(|m| m.rank = "rank1".into()),
                Status::InvalidArgument,
                "rank1",
            ),
            (
                Box::new(|m| m.kind = "zero_stage_3/bfloat16params".into()),
                Status::InvalidArgument,
                "bfloat16",
            ),
            (
                Box::new(|m| m.library = "0.0.1".into()),
                Status::Unsupported,
                "0.0.1",
            ),
            (Box::new(|m| m.drives = 2), Status::InvalidArgument, "2 drives"),
            (
                Box::new(|m| m.this_drive = 1),
                Status::InvalidArgument,
                "drive 1's copy",
            ),
            (
                Box::new(|m| m.tensors[1].pieces[0].offset = 4096),
                Status::CorruptData,
                "overlapping",
            ),
            (
                Box::new(|m| m.tensors[1].pieces[0].offset = 1 << 20),
                Status::CorruptData,
                "outside",
            ),
            (
                Box::new(|m| m.tensors[0].reserved = 1),
                Status::CorruptData,
                "reserved",
            ),
        ];
        for (edit, status, text) in cases {
            let mut m = sample();
            edit(&mut m);
            let e = m.check(&want(), 0, "m").err().unwrap();
            assert_eq!(e.status(), status, "{e}");
            assert!(
                e.message().contains(text) && e.message().contains("nothing was"),
                "{e}"
            );
        }
    }
}
