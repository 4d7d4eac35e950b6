//! The CPUs of an x86 machine from its ACPI tables: RSDP → XSDT (or RSDT) → MADT, whose
//! Processor Local APIC (type 0) and Processor Local x2APIC (type 9) entries list every CPU
//! with its APIC id (ACPI 6.5, 5.2.5 RSDP, 5.2.7-8 RSDT/XSDT, 5.2.12 MADT).
//!
//! Physical memory is reached through a `read(pa, len)` the kernel supplies (its identity
//! map), so the parser itself is safe code and runs on the host against tables built in a
//! buffer. Every table's checksum and length is checked; a bad one is an error, not a guess.

/// The most CPUs recorded.
pub const MAX_CPUS: usize = 64;

/// What went wrong reading the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// No "RSD PTR " signature at the given address (or in the BIOS area scanned).
    NoRsdp,
    /// The bytes at this address could not be read.
    Unreadable(u64),
    /// The table at this address fails its checksum.
    BadChecksum(u64),
    /// The table at this address is shorter than its header or its entries claim.
    BadLength(u64),
    /// Neither the XSDT nor the RSDT lists a MADT ("APIC").
    NoMadt,
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRsdp => f.write_str("no ACPI RSDP"),
            Self::Unreadable(a) => write!(f, "ACPI table at {a:#x} is not readable"),
            Self::BadChecksum(a) => write!(f, "ACPI table at {a:#x} fails its checksum"),
            Self::BadLength(a) => write!(f, "ACPI table at {a:#x} has a bad length"),
            Self::NoMadt => f.write_str("no MADT in the ACPI tables"),
        }
    }
}

/// The enabled (or online-capable) CPUs the MADT lists, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MadtCpus {
    apic_ids: [u32; MAX_CPUS],
    len: usize,
    /// Entries beyond [`MAX_CPUS`], not recorded.
    pub dropped: usize,
    /// The local APIC's physical address the MADT gives.
    pub lapic_address: u32,
}

impl MadtCpus {
    /// The recorded APIC ids.
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids[..self.len]
    }

    fn push(&mut self, id: u32) {
        if self.apic_ids().contains(&id) {
            return;
        }
        if self.len < MAX_CPUS {
            self.apic_ids[self.len] = id;
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }
}

/// Local APIC flags: enabled, or online capable (ACPI 6.5 table 5.37).
const LAPIC_ENABLED: u32 = 1 << 0;
const LAPIC_ONLINE_CAPABLE: u32 = 1 << 1;
/// A system description table header's size.
const HEADER: usize = 36;

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Read a whole system description table at `pa`: its header's length, then all of it,
/// checksummed.
fn table<'a>(
    read: &impl Fn(u64, usize) -> Option<&'a [u8]>,
    pa: u64,
) -> Result<&'a [u8], AcpiError> {
    let header = read(pa, HEADER).ok_or(AcpiError::Unreadable(pa))?;
    let len = u32_at(header, 4) as usize;
    if len < HEADER {
        return Err(AcpiError::BadLength(pa));
    }
    let t = read(pa, len).ok_or(AcpiError::Unreadable(pa))?;
    if !checksum_ok(t) {
        return Err(AcpiError::BadChecksum(pa));
    }
    Ok(t)
}

/// The RSDP at `pa`, or found by scanning `[0xe0000, 0x100000)` on 16-byte boundaries (as
/// ACPI says for BIOS systems) when `pa` is 0. Returns the RSDP's address.
pub fn find_rsdp<'a>(
    read: impl Fn(u64, usize) -> Option<&'a [u8]>,
    pa: u64,
) -> Result<u64, AcpiError> {
    let is_rsdp = |at: u64| read(at, 20).is_some_and(|b| &b[..8] == b"RSD PTR " && checksum_ok(b));
    if pa != 0 {
        return if is_rsdp(pa) {
            Ok(pa)
        } else {
            Err(AcpiError::NoRsdp)
        };
    }
    (0xe_0000..0x10_0000)
        .step_by(16)
        .find(|&at| is_rsdp(at))
        .ok_or(AcpiError::NoRsdp)
}

/// The CPUs of the MADT reached from the RSDP at `rsdp`.
pub fn madt_cpus<'a>(
    read: impl Fn(u64, usize) -> Option<&'a [u8]>,
    rsdp: u64,
) -> Result<MadtCpus, AcpiError> {
    let r = read(rsdp, 20).ok_or(AcpiError::Unreadable(rsdp))?;
    let revision = r[15];
    let rsdt = u64::from(u32_at(r, 16));
    // ACPI 2.0+: the XSDT, with 64-bit entries, if the extended RSDP checks out.
    let xsdt = match read(rsdp, 36) {
        Some(x) if revision >= 2 && checksum_ok(&x[..u32_at(x, 20).clamp(20, 36) as usize]) => {
            u64_at(x, 24)
        }
        _ => 0,
    };
    let (root, entry) = if xsdt != 0 { (xsdt, 8) } else { (rsdt, 4) };
    let root_table = table(&read, root)?;
    let entries = &root_table[HEADER..];
    let madt = entries
        .chunks_exact(entry)
        .map(|e| {
            if entry == 8 {
                u64_at(e, 0)
            } else {
                u64::from(u32_at(e, 0))
            }
        })
        .find(|&pa| read(pa, 4).is_some_and(|sig| sig == b"APIC"))
        .ok_or(AcpiError::NoMadt)?;
    let t = table(&read, madt)?;
    if t.len() < HEADER + 8 {
        return Err(AcpiError::BadLength(madt));
    }
    let mut cpus = MadtCpus {
        apic_ids: [0; MAX_CPUS],
        len: 0,
        dropped: 0,
        lapic_address: u32_at(t, HEADER),
    };
    let mut at = HEADER + 8;
    while at + 2 <= t.len() {
        let (kind, len) = (t[at], usize::from(t[at + 1]));
        if len < 2 || at + len > t.len() {
            return Err(AcpiError::BadLength(madt));
        }
        let e = &t[at..at + len];
        let usable = |flags: u32| flags & (LAPIC_ENABLED | LAPIC_ONLINE_CAPABLE) != 0;
        match kind {
            0 if len >= 8 && usable(u32_at(e, 4)) => cpus.push(u32::from(e[3])),
            9 if len >= 16 && usable(u32_at(e, 8)) => cpus.push(u32_at(e, 4)),
            _ => {}
        }
        at += len;
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little physical memory: tables placed at fixed addresses.
    struct Mem {
        base: u64,
        bytes: Vec<u8>,
    }

    impl Mem {
        fn new(base: u64, len: usize) -> Self {
            Self {
                base,
                bytes: vec![0; len],
            }
        }
        fn put(&mut self, pa: u64, b: &[u8]) {
            let at = (pa - self.base) as usize;
            self.bytes[at..at + b.len()].copy_from_slice(b);
        }
        fn read<'a>(&'a self) -> impl Fn(u64, usize) -> Option<&'a [u8]> + 'a {
            move |pa, len| {
                let at = pa.checked_sub(self.base)? as usize;
                self.bytes.get(at..at.checked_add(len)?)
            }
        }
    }

    fn fix_checksum(t: &mut [u8], at: usize) {
        t[at] = 0;
        let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[at] = 0u8.wrapping_sub(sum);
    }

    fn sdt(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; HEADER];
        t[..4].copy_from_slice(sig);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    fn madt(entries: &[&[u8]]) -> Vec<u8> {
        let mut body = 0xfee0_0000u32.to_le_bytes().to_vec();
        body.extend_from_slice(&1u32.to_le_bytes());
        for e in entries {
            body.extend_from_slice(e);
        }
        sdt(b"APIC", &body)
    }

    fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![0, 8, uid, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    fn rsdp(rsdt: u32, xsdt: u64, revision: u8) -> Vec<u8> {
        let mut r = vec![0u8; 36];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[15] = revision;
        r[16..20].copy_from_slice(&rsdt.to_le_bytes());
        r[20..24].copy_from_slice(&36u32.to_le_bytes());
        r[24..32].copy_from_slice(&xsdt.to_le_bytes());
        fix_checksum(&mut r[..20], 8);
        fix_checksum(&mut r, 32);
        r
    }

    /// QEMU's shape: an RSDP in the BIOS area, an RSDT (revision 0) listing a FACP and the
    /// MADT, four CPUs of which one is disabled, plus an I/O APIC entry.
    fn qemu_like(mem: &mut Mem) {
        let ioapic = [1u8, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0];
        let m = madt(&[
            &lapic(0, 0, 1),
            &lapic(1, 1, 1),
            &ioapic,
            &lapic(2, 2, 1),
            &lapic(3, 7, 0),
        ]);
        mem.put(0x7fe_2000, &m);
        mem.put(0x7fe_1000, &sdt(b"FACP", &[0; 8]));
        let mut list = 0x7fe_1000u32.to_le_bytes().to_vec();
        list.extend_from_slice(&0x7fe_2000u32.to_le_bytes());
        mem.put(0x7fe_0000, &sdt(b"RSDT", &list));
        mem.put(0xf_5a40, &rsdp(0x7fe_0000, 0, 0)[..20]);
    }

    #[test]
    fn rsdt_madt_lists_the_enabled_cpus_in_order() {
        let mut mem = Mem::new(0, 0x800_0000);
        qemu_like(&mut mem);
        let at = find_rsdp(mem.read(), 0).unwrap();
        assert_eq!(at, 0xf_5a40);
        assert_eq!(find_rsdp(mem.read(), 0xf_5a40), Ok(0xf_5a40));
        let cpus = madt_cpus(mem.read(), at).unwrap();
        assert_eq!(cpus.apic_ids(), &[0, 1, 2]);
        assert_eq!(cpus.lapic_address, 0xfee0_0000);
        assert_eq!(cpus.dropped, 0);
    }

    #[test]
    fn xsdt_and_x2apic_entries_are_read() {
        let mut mem = Mem::new(0, 0x800_0000);
        let mut x2 = vec![9u8, 16, 0, 0];
        x2.extend_from_slice(&300u32.to_le_bytes());
        x2.extend_from_slice(&1u32.to_le_bytes());
        x2.extend_from_slice(&5u32.to_le_bytes());
        mem.put(0x100_2000, &madt(&[&lapic(0, 4, 2), &x2]));
        mem.put(0x100_0000, &sdt(b"XSDT", &0x100_2000u64.to_le_bytes()));
        mem.put(0x9_0000, &rsdp(0, 0x100_0000, 2));
        let cpus = madt_cpus(mem.read(), 0x9_0000).unwrap();
        assert_eq!(cpus.apic_ids(), &[4, 300], "online-capable and x2APIC CPUs");
    }

    #[test]
    fn bad_tables_are_errors() {
        let mut mem = Mem::new(0, 0x800_0000);
        assert_eq!(find_rsdp(mem.read(), 0), Err(AcpiError::NoRsdp));
        qemu_like(&mut mem);
        assert_eq!(find_rsdp(mem.read(), 0x1000), Err(AcpiError::NoRsdp));
        // A flipped byte in the MADT fails its checksum.
        let b = mem.bytes[0x7fe_2000 + 40];
        mem.put(0x7fe_2000 + 40, &[b ^ 1]);
        assert_eq!(
            madt_cpus(mem.read(), 0xf_5a40),
            Err(AcpiError::BadChecksum(0x7fe_2000))
        );
        // An RSDT that lists no MADT.
        let mut none = Mem::new(0, 0x800_0000);
        none.put(0x7fe_0000, &sdt(b"RSDT", &0x7fe_1000u32.to_le_bytes()));
        none.put(0x7fe_1000, &sdt(b"FACP", &[0; 8]));
        none.put(0xf_5a40, &rsdp(0x7fe_0000, 0, 0)[..20]);
        assert_eq!(madt_cpus(none.read(), 0xf_5a40), Err(AcpiError::NoMadt));
        // A MADT entry running past the table.
        let mut long = Mem::new(0, 0x800_0000);
        let mut m = madt(&[&lapic(0, 0, 1)]);
        m[HEADER + 8 + 1] = 40;
        fix_checksum(&mut m, 9);
        long.put(0x7fe_2000, &m);
        long.put(0x7fe_0000, &sdt(b"RSDT", &0x7fe_2000u32.to_le_bytes()));
        long.put(0xf_5a40, &rsdp(0x7fe_0000, 0, 0)[..20]);
        assert_eq!(
            madt_cpus(long.read(), 0xf_5a40),
            Err(AcpiError::BadLength(0x7fe_2000))
        );
        // Unreadable memory.
        assert_eq!(
            madt_cpus(long.read(), 0x9000_0000),
            Err(AcpiError::Unreadable(0x9000_0000))
        );
    }
}
