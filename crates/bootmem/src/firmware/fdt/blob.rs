//! A flattened-device-tree (DTSpec v17) reader that cannot panic on any input.
//!
//! [`Blob::new`] checks the header and then walks the whole structure block once, so every
//! malformed blob is an [`FdtError`] before anything reads a node:
//! * header: magic, `version >= 17` with `last_comp_version <= 17`, `totalsize` within the
//!   slice, each block (`off_mem_rsvmap`, `off_dt_struct` + `size_dt_struct`,
//!   `off_dt_strings` + `size_dt_strings`) past the header and inside `totalsize`, the
//!   reservation block 8-byte and the structure block 4-byte aligned;
//! * the `/memreserve/` block ends with its `(0, 0)` entry inside `totalsize`;
//! * structure block: known tokens only, node names NUL-terminated inside the block, property
//!   values inside the block, property name offsets inside the strings block and
//!   NUL-terminated there, one root node, begin/end balanced, nesting at most [`MAX_DEPTH`],
//!   and an `FDT_END` token.
//!
//! Every read goes through `get` and checked arithmetic; the navigation functions
//! ([`Node::children`], [`Node::property`]) stop quietly on an inconsistency, which the walk in
//! `new` has already ruled out.
#![deny(unsafe_code)]

use super::{BlobFault, BlobPart, FdtError};

/// Deepest node nesting accepted (Linux's `FDT_MAX_DEPTH`).
pub(crate) const MAX_DEPTH: usize = 64;

const MAGIC: u32 = 0xd00d_feed;
const HEADER_BYTES: usize = 40;
const VERSION: u32 = 17;
const RSV_ENTRY_BYTES: usize = 16;

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

/// The big-endian `u32` at `at`, if the slice holds it.
fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([word[0], word[1], word[2], word[3]]))
}

/// The big-endian `u64` at `at`, if the slice holds it.
fn be64(bytes: &[u8], at: usize) -> Option<u64> {
    let hi = be32(bytes, at)?;
    let lo = be32(bytes, at.checked_add(4)?)?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// The bytes before the first NUL of `bytes`, if there is one.
fn c_string(bytes: &[u8]) -> Option<&[u8]> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    bytes.get(..nul)
}

fn align4(x: usize) -> Option<usize> {
    Some(x.checked_add(3)? & !3)
}

/// One step of the structure block.
#[derive(Clone, Copy)]
enum Event<'a> {
    Begin(&'a [u8]),
    Prop { name: &'a [u8], value: &'a [u8] },
    End,
    Finish,
}

/// A checked device-tree blob.
#[derive(Clone, Copy)]
pub(crate) struct Blob<'a> {
    structure: &'a [u8],
    strings: &'a [u8],
    /// The reservation entries, without the terminating `(0, 0)` entry.
    rsvmap: &'a [u8],
    /// Offset of the structure block in the blob, to report positions as blob offsets.
    struct_off: usize,
}

impl<'a> Blob<'a> {
    /// Check `bytes` (see the module docs).
    pub(crate) fn new(bytes: &'a [u8]) -> Result<Self, FdtError> {
        let header = |fault| Err(FdtError::Header(fault));
        let word = |i: usize| be32(bytes, i * 4).unwrap_or(0);
        if bytes.len() < HEADER_BYTES {
            return header(BlobFault::TooShort { len: bytes.len() });
        }
        if word(0) != MAGIC {
            return header(BlobFault::BadMagic(word(0)));
        }
        let (version, last_comp) = (word(5), word(6));
        if version < VERSION || last_comp > VERSION {
            return header(BlobFault::Version { version, last_comp });
        }
        let total = word(1);
        let total_len = usize::try_from(total).unwrap_or(usize::MAX);
        if total_len < HEADER_BYTES || total_len > bytes.len() {
            return header(BlobFault::TotalSize {
                total,
                len: bytes.len(),
            });
        }
        let bytes = bytes.get(..total_len).unwrap_or_default();
        let block = |part: BlobPart, off: u32, size: u32, align: usize| {
            let bad = FdtError::Header(BlobFault::Block {
                part,
                offset: off,
                size,
            });
            let start = usize::try_from(off).map_err(|_| bad)?;
            let end = start
                .checked_add(usize::try_from(size).map_err(|_| bad)?)
                .ok_or(bad)?;
            if start < HEADER_BYTES || start % align != 0 {
                return Err(bad);
            }
            bytes.get(start..end).ok_or(bad)
        };
        // The reservation block has no size field: it runs to its terminator.
        let rsv_off = word(4);
        let rsv_all = block(
            BlobPart::MemReserve,
            rsv_off,
            total.saturating_sub(rsv_off),
            8,
        )?;
        let structure = block(BlobPart::Structure, word(2), word(9), 4)?;
        let strings = block(BlobPart::Strings, word(3), word(8), 1)?;
        let mut entries = 0;
        let rsvmap = loop {
            let at = entries * RSV_ENTRY_BYTES;
            match (be64(rsv_all, at), be64(rsv_all, at + 8)) {
                (Some(0), Some(0)) => break rsv_all.get(..at).unwrap_or_default(),
                (Some(_), Some(_)) => entries += 1,
                _ => return Err(FdtError::UnterminatedMemReserve),
            }
        };
        let blob = Self {
            structure,
            strings,
            rsvmap,
            struct_off: usize::try_from(word(2)).unwrap_or(0),
        };
        blob.check_structure()?;
        Ok(blob)
    }

    /// An error at structure-block position `pos`.
    fn fault(&self, pos: usize, fault: BlobFault) -> FdtError {
        FdtError::Structure {
            offset: self.struct_off.saturating_add(pos),
            fault,
        }
    }

    /// The event at `*pos` (skipping `FDT_NOP`s), with its token's position; advances `*pos`.
    fn next_event(&self, pos: &mut usize) -> Result<(usize, Event<'a>), FdtError> {
        loop {
            let at = *pos;
            let token = be32(self.structure, at).ok_or(self.fault(at, BlobFault::NoEnd))?;
            let body = at + 4;
            let event = match token {
                FDT_NOP => {
                    *pos = body;
                    continue;
                }
                FDT_BEGIN_NODE => {
                    let name = self
                        .structure
                        .get(body..)
                        .and_then(c_string)
                        .ok_or(self.fault(at, BlobFault::UnterminatedName))?;
                    *pos = align4(body + name.len() + 1)
                        .ok_or(self.fault(at, BlobFault::UnterminatedName))?;
                    Event::Begin(name)
                }
                FDT_PROP => {
                    let overrun = self.fault(at, BlobFault::PropertyOverrun);
                    let len = be32(self.structure, body).ok_or(overrun)?;
                    let name_off = be32(self.structure, body + 4).ok_or(overrun)?;
                    let start = body + 8;
                    let end = usize::try_from(len)
                        .ok()
                        .and_then(|len| start.checked_add(len))
                        .ok_or(overrun)?;
                    let value = self.structure.get(start..end).ok_or(overrun)?;
                    let name = usize::try_from(name_off)
                        .ok()
                        .and_then(|off| self.strings.get(off..))
                        .and_then(c_string)
                        .ok_or(self.fault(at, BlobFault::BadNameOffset(name_off)))?;
                    *pos = align4(end).ok_or(overrun)?;
                    Event::Prop { name, value }
                }
                FDT_END_NODE => {
                    *pos = body;
                    Event::End
                }
                FDT_END => {
                    *pos = body;
                    Event::Finish
                }
                other => return Err(self.fault(at, BlobFault::UnknownToken(other))),
            };
            return Ok((at, event));
        }
    }

    /// Walk the whole structure block once (module docs).
    fn check_structure(&self) -> Result<(), FdtError> {
        let mut pos = 0;
        let mut depth = 0usize;
        let mut seen_root = false;
        loop {
            let (at, event) = self.next_event(&mut pos)?;
            match event {
                Event::Begin(_) => {
                    if depth == 0 && seen_root {
                        return Err(self.fault(at, BlobFault::SecondRoot));
                    }
                    seen_root = true;
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(self.fault(at, BlobFault::TooDeep));
                    }
                }
                Event::Prop { .. } if depth == 0 => {
                    return Err(self.fault(at, BlobFault::PropertyOutsideNode));
                }
                Event::Prop { .. } => {}
                Event::End => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or(self.fault(at, BlobFault::UnbalancedEnd))?;
                }
                Event::Finish if depth != 0 || !seen_root => {
                    return Err(self.fault(at, BlobFault::NoEnd));
                }
                Event::Finish => return Ok(()),
            }
        }
    }

    /// The root node.
    pub(crate) fn root(&self) -> Option<Node<'a>> {
        let mut pos = 0;
        match self.next_event(&mut pos).ok()? {
            (at, Event::Begin(name)) => Some(Node {
                blob: *self,
                name,
                at,
                body: pos,
            }),
            _ => None,
        }
    }

    /// The `/memreserve/` entries `(address, size)`.
    pub(crate) fn memory_reservations(&self) -> impl Iterator<Item = (u64, u64)> + 'a {
        self.rsvmap
            .chunks_exact(RSV_ENTRY_BYTES)
            .filter_map(|e| Some((be64(e, 0)?, be64(e, 8)?)))
    }
}

/// A node of a checked blob.
#[derive(Clone, Copy)]
pub(crate) struct Node<'a> {
    blob: Blob<'a>,
    name: &'a [u8],
    /// Position of the node's `FDT_BEGIN_NODE` in the structure block.
    at: usize,
    /// Position just after the node's name.
    body: usize,
}

impl<'a> Node<'a> {
    /// The name without the unit address (`memory`).
    pub(crate) fn base_name(&self) -> &'a [u8] {
        self.name.split(|&b| b == b'@').next().unwrap_or_default()
    }

    /// Offset of the node in the blob, to name it in errors.
    pub(crate) fn offset(&self) -> usize {
        self.blob.struct_off.saturating_add(self.at)
    }

    /// The value of the node's first property called `name`.
    pub(crate) fn property(&self, name: &str) -> Option<&'a [u8]> {
        let mut pos = self.body;
        loop {
            match self.blob.next_event(&mut pos).ok()? {
                (_, Event::Prop { name: n, value }) if n == name.as_bytes() => return Some(value),
                (_, Event::Prop { .. }) => {}
                _ => return None,
            }
        }
    }

    /// The value of property `name` up to its first NUL (a string property).
    pub(crate) fn str_property(&self, name: &str) -> Option<&'a [u8]> {
        let value = self.property(name)?;
        Some(value.split(|&b| b == 0).next().unwrap_or_default())
    }

    /// The node's children, in blob order.
    pub(crate) fn children(&self) -> Children<'a> {
        Children {
            blob: self.blob,
            pos: Some(self.body),
        }
    }
}

/// Iterator over a node's children; see [`Node::children`].
pub(crate) struct Children<'a> {
    blob: Blob<'a>,
    pos: Option<usize>,
}

impl<'a> Iterator for Children<'a> {
    type Item = Node<'a>;

    fn next(&mut self) -> Option<Node<'a>> {
        let mut pos = self.pos.take()?;
        loop {
            match self.blob.next_event(&mut pos).ok()? {
                (_, Event::Prop { .. }) => {}
                (at, Event::Begin(name)) => {
                    let child = Node {
                        blob: self.blob,
                        name,
                        at,
                        body: pos,
                    };
                    // Skip the child's subtree: the walk in `Blob::new` proved it balanced.
                    let mut depth = 1usize;
                    while depth > 0 {
                        match self.blob.next_event(&mut pos).ok()? {
                            (_, Event::Begin(_)) => depth += 1,
                            (_, Event::End) => depth -= 1,
                            (_, Event::Prop { .. }) => {}
                            (_, Event::Finish) => return None,
                        }
                    }
                    self.pos = Some(pos);
                    return Some(child);
                }
                _ => return None,
            }
        }
    }
}
