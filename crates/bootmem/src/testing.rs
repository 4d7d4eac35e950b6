//! Test helpers (feature `testing`, host only): a flattened-device-tree writer.
//!
//! [`FdtWriter`] writes DTSpec v17 blobs (header, memory reservation block, structure and
//! strings blocks) from nodes and properties, enough to feed [`crate::firmware::fdt`] and
//! the QEMU kernels' device-tree reader in host tests.
//!
// The device-tree ingestion is behind feature `fdt`: link into the crate when it is on, to
// docs.rs (built with all features) when it is off, so the docs build warning-free either way.
#![cfg_attr(
    feature = "fdt",
    doc = "[`crate::firmware::fdt`]: crate::firmware::fdt"
)]
#![cfg_attr(
    not(feature = "fdt"),
    doc = "[`crate::firmware::fdt`]: https://docs.rs/mmkit-bootmem/latest/mmkit_bootmem/firmware/fdt/index.html"
)]

extern crate std;

use std::vec::Vec;

/// FDT structure-block tokens (DTSpec 5.4.1).
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;
/// Header size of a v17 blob.
const HEADER_BYTES: usize = 40;

/// Writes a flattened device tree: open nodes with [`begin`](Self::begin), add properties,
/// close them with [`end`](Self::end), and take the blob with [`finish`](Self::finish).
#[derive(Debug, Default)]
pub struct FdtWriter {
    structure: Vec<u8>,
    strings: Vec<u8>,
    reservations: Vec<(u64, u64)>,
}

impl FdtWriter {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    fn token(&mut self, t: u32) {
        self.structure.extend_from_slice(&t.to_be_bytes());
    }

    fn pad(&mut self) {
        while self.structure.len() % 4 != 0 {
            self.structure.push(0);
        }
    }

    /// Open node `name` (`""` for the root, `"memory@40000000"`, ...).
    pub fn begin(&mut self, name: &str) -> &mut Self {
        self.token(FDT_BEGIN_NODE);
        self.structure.extend_from_slice(name.as_bytes());
        self.structure.push(0);
        self.pad();
        self
    }

    /// Close the innermost open node.
    pub fn end(&mut self) -> &mut Self {
        self.token(FDT_END_NODE);
        self
    }

    /// A property with raw bytes.
    pub fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.token(FDT_PROP);
        self.token(value.len() as u32);
        self.token(off);
        self.structure.extend_from_slice(value);
        self.pad();
        self
    }

    /// A property of big-endian 32-bit cells (`reg`, `#address-cells`, ...).
    pub fn prop_u32s(&mut self, name: &str, cells: &[u32]) -> &mut Self {
        let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.prop(name, &bytes)
    }

    /// A NUL-terminated string property.
    pub fn prop_str(&mut self, name: &str, s: &str) -> &mut Self {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        self.prop(name, &bytes)
    }

    /// A `/memreserve/` entry.
    pub fn memreserve(&mut self, address: u64, size: u64) -> &mut Self {
        self.reservations.push((address, size));
        self
    }

    /// The blob: header, reservations (with the terminating empty entry), structure block
    /// ending in `FDT_END`, strings.
    pub fn finish(&mut self) -> Vec<u8> {
        self.token(FDT_END);
        let rsv_off = HEADER_BYTES;
        let rsv_len = (self.reservations.len() + 1) * 16;
        let struct_off = rsv_off + rsv_len;
        let strings_off = struct_off + self.structure.len();
        let total = strings_off + self.strings.len();
        let mut blob = Vec::with_capacity(total);
        for v in [
            0xd00d_feedu32,
            total as u32,
            struct_off as u32,
            strings_off as u32,
            rsv_off as u32,
            17,
            16,
            0,
            self.strings.len() as u32,
            self.structure.len() as u32,
        ] {
            blob.extend_from_slice(&v.to_be_bytes());
        }
        for &(a, s) in self.reservations.iter().chain([(0, 0)].iter()) {
            blob.extend_from_slice(&a.to_be_bytes());
            blob.extend_from_slice(&s.to_be_bytes());
        }
        blob.extend_from_slice(&self.structure);
        blob.extend_from_slice(&self.strings);
        blob
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_points_at_the_blocks() {
        let blob = FdtWriter::new()
            .memreserve(0x1000, 0x2000)
            .begin("")
            .prop_u32s("#address-cells", &[2])
            .end()
            .finish();
        let word = |i: usize| u32::from_be_bytes(blob[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(word(0), 0xd00d_feed);
        assert_eq!(word(1) as usize, blob.len());
        assert_eq!(word(4), 40, "reservations right after the header");
        assert_eq!(word(2), 40 + 32, "one entry plus the terminator");
        assert_eq!(u64::from_be_bytes(blob[40..48].try_into().unwrap()), 0x1000);
        assert_eq!(word(word(2) as usize / 4), FDT_BEGIN_NODE);
    }
}
