// SPDX-License-Identifier: GPL-2.0

//! The device MMU: 48-bit virtual addresses translated by four levels of
//! 512-entry tables stored in VRAM.

use crate::{
    fault::{Cause, ConfigError, Fault},
    memory::{Memory, Target},
    regs::{pte, VRAM_OFFSET},
};

/// Where a page's address points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aperture {
    /// An offset in the device's own VRAM.
    Vram(u64),
    /// A PCIe bus address.
    Bus(u64),
    /// No memory: reads return zeros and writes are dropped.
    Null,
}

/// A translated page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Virtual address of the first byte of the page.
    pub va: u64,
    /// Size of the page: [`pte::PAGE_4K`] or [`pte::PAGE_2M`].
    pub size: u64,
    /// Address of the first byte of the page.
    pub addr: Aperture,
    /// The page may be written.
    pub writable: bool,
}

/// VRAM offset of the entry for `va` in the level-`level` table at VRAM
/// offset `table`.
const fn entry_offset(table: u64, va: u64, level: u32) -> u64 {
    table + ((va >> (12 + 9 * level)) & (pte::ENTRIES - 1)) * 8
}

/// A directory entry pointing at the table at VRAM offset `table`.
pub const fn table_entry(table: u64) -> u64 {
    table & pte::ADDR_MASK | pte::VALID
}

/// A leaf entry for a page at `addr` (`LEAF` is set, so the entry is valid
/// at level 1 and level 0).
pub const fn leaf_entry(addr: Aperture, writable: bool) -> u64 {
    let (aperture, a) = match addr {
        Aperture::Vram(a) => (pte::APERTURE_VRAM, a),
        Aperture::Bus(a) => (pte::APERTURE_BUS, a),
        Aperture::Null => (pte::APERTURE_NULL, 0),
    };
    let w = if writable { pte::WRITABLE } else { 0 };
    a & pte::ADDR_MASK | aperture << pte::APERTURE_SHIFT | pte::LEAF | w | pte::VALID
}

/// The translation context of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mmu {
    /// The device's BAR2, which holds its VRAM at [`VRAM_OFFSET`].
    pub bar: Target,
    /// Size of the device's VRAM.
    pub vram_size: u64,
    /// `MMU_ROOT`: VRAM offset of the level-3 table, 0 when disabled.
    pub root: u64,
    /// 2 MiB leaves at level 1 are supported (`CAP_MMU_2M`).
    pub huge_pages: bool,
    /// NULL leaves (aperture 2) are supported (`CAP_MMU_NULL`).
    pub null_pages: bool,
}

impl Mmu {
    /// Whether a table at VRAM offset `table` is aligned and inside VRAM.
    fn table_ok(&self, table: u64) -> bool {
        table.is_multiple_of(pte::TABLE_SIZE)
            && table
                .checked_add(pte::TABLE_SIZE)
                .is_some_and(|e| e <= self.vram_size)
    }

    /// Translates `va`; faults are [`Cause::Translation`] (or
    /// [`Cause::Bus`] if the memory behind VRAM fails) at `va`.
    pub fn translate<M: Memory + ?Sized>(&self, mem: &M, va: u64) -> Result<Page, Fault> {
        let fault = |detail: String| Err(Fault::new(Cause::Translation, detail).at(va));
        if va >> pte::VA_BITS != 0 {
            return fault(format!("bits 63..{} are not zero", pte::VA_BITS));
        }
        if self.root == 0 {
            return fault("the MMU is disabled (MMU_ROOT is 0)".into());
        }
        if !self.table_ok(self.root) {
            return fault(format!(
                "MMU_ROOT {:#x} is not an aligned table inside VRAM",
                self.root
            ));
        }
        let mut table = self.root;
        for level in (0..4u32).rev() {
            let at = entry_offset(table, va, level);
            let e = mem.read_u64(self.bar, VRAM_OFFSET + at).map_err(|m| {
                Fault::new(Cause::Bus, format!("reading the L{level} entry: {m}")).at(va)
            })?;
            let what = || format!("L{level} entry {e:#x} at VRAM offset {at:#x}");
            let aperture = (e & pte::APERTURE_MASK) >> pte::APERTURE_SHIFT;
            let addr = e & pte::ADDR_MASK;
            if e & pte::VALID == 0 {
                return fault(format!("{} is not valid", what()));
            }
            if e & pte::RESERVED_MASK != 0 {
                return fault(format!("{} has reserved bits set", what()));
            }
            let top = if self.null_pages {
                pte::APERTURE_NULL
            } else {
                pte::APERTURE_BUS
            };
            if aperture > top {
                return fault(format!("{} has a reserved aperture", what()));
            }
            if level > 0 && e & pte::LEAF == 0 {
                if aperture != pte::APERTURE_VRAM || !self.table_ok(addr) {
                    return fault(format!("{} points at no table inside VRAM", what()));
                }
                table = addr;
                continue;
            }
            if level > 1 || (level == 1 && !self.huge_pages) {
                return fault(format!(
                    "{} is a leaf, not allowed at level {level}",
                    what()
                ));
            }
            let size = 1u64 << (12 + 9 * level);
            if !addr.is_multiple_of(size) {
                return fault(format!(
                    "{} maps a page that is not {size:#x}-aligned",
                    what()
                ));
            }
            let addr = match aperture {
                pte::APERTURE_VRAM => Aperture::Vram(addr),
                pte::APERTURE_BUS => Aperture::Bus(addr),
                _ if addr != 0 => {
                    return fault(format!("{} is a NULL leaf with an address", what()));
                }
                _ => Aperture::Null,
            };
            return Ok(Page {
                va: va & !(size - 1),
                size,
                addr,
                writable: e & pte::WRITABLE != 0,
            });
        }
        fault("the walk ended without a leaf".into())
    }
}

/// Builds page tables in a range of VRAM, allocating tables as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapper {
    bar: Target,
    root: u64,
    next: u64,
    end: u64,
}

impl Mapper {
    /// A mapper with an empty root table at VRAM offset `start`, allocating
    /// further tables up to VRAM offset `end`.
    pub fn new<M: Memory + ?Sized>(
        mem: &mut M,
        bar: Target,
        start: u64,
        end: u64,
    ) -> Result<Self, ConfigError> {
        if start == 0 || !start.is_multiple_of(pte::TABLE_SIZE) {
            return Err(ConfigError(format!(
                "table area start {start:#x} is 0 or not 4 KiB-aligned"
            )));
        }
        let mut m = Self {
            bar,
            root: start,
            next: start,
            end,
        };
        m.alloc(mem)?;
        Ok(m)
    }

    /// VRAM offset of the root table (the value for `MMU_ROOT`).
    pub const fn root(&self) -> u64 {
        self.root
    }

    fn alloc<M: Memory + ?Sized>(&mut self, mem: &mut M) -> Result<u64, ConfigError> {
        let table = self.next;
        if table.saturating_add(pte::TABLE_SIZE) > self.end {
            return Err(ConfigError(format!(
                "no room for a page table at VRAM offset {table:#x}"
            )));
        }
        self.next += pte::TABLE_SIZE;
        mem.write(
            self.bar,
            VRAM_OFFSET + table,
            &[0; pte::TABLE_SIZE as usize],
        )
        .map_err(|e| ConfigError(format!("clearing a page table: {e}")))?;
        Ok(table)
    }

    /// Writes `entry` for the page of `size` ([`pte::PAGE_4K`] or
    /// [`pte::PAGE_2M`]) at `va`, creating the directories on the way.
    /// Existing directories are reused; an existing leaf on the way is an
    /// error.
    pub fn set<M: Memory + ?Sized>(
        &mut self,
        mem: &mut M,
        va: u64,
        size: u64,
        entry: u64,
    ) -> Result<(), ConfigError> {
        let leaf_level = match size {
            pte::PAGE_4K => 0,
            pte::PAGE_2M => 1,
            _ => {
                return Err(ConfigError(format!(
                    "page size {size:#x} is not 4 KiB or 2 MiB"
                )))
            }
        };
        let io = |e| ConfigError(format!("page table access for VA {va:#x}: {e}"));
        let mut table = self.root;
        for level in (leaf_level..4u32).rev() {
            let at = VRAM_OFFSET + entry_offset(table, va, level);
            if level == leaf_level {
                return mem.write_u64(self.bar, at, entry).map_err(io);
            }
            let e = mem.read_u64(self.bar, at).map_err(io)?;
            table = if e & pte::VALID == 0 {
                let t = self.alloc(mem)?;
                mem.write_u64(self.bar, at, table_entry(t)).map_err(io)?;
                t
            } else if e & pte::LEAF != 0 {
                return Err(ConfigError(format!(
                    "VA {va:#x} is already inside a leaf at level {level}"
                )));
            } else {
                e & pte::ADDR_MASK
            };
        }
        Ok(())
    }

    /// Maps `len` bytes at `va` to consecutive addresses from `addr` with
    /// pages of `size`; `va`, `addr` and `len` must be multiples of `size`.
    pub fn map<M: Memory + ?Sized>(
        &mut self,
        mem: &mut M,
        va: u64,
        addr: Aperture,
        len: u64,
        size: u64,
        writable: bool,
    ) -> Result<(), ConfigError> {
        let a = match addr {
            Aperture::Vram(a) | Aperture::Bus(a) => a,
            Aperture::Null => 0,
        };
        if size == 0 || !(va | a | len).is_multiple_of(size) {
            return Err(ConfigError(format!(
                "VA {va:#x}, address {a:#x} and length {len:#x} are not multiples of {size:#x}"
            )));
        }
        for off in (0..len).step_by(usize::try_from(size).unwrap_or(usize::MAX)) {
            let page = match addr {
                Aperture::Vram(a) => Aperture::Vram(a + off),
                Aperture::Bus(a) => Aperture::Bus(a + off),
                Aperture::Null => Aperture::Null,
            };
            self.set(mem, va + off, size, leaf_entry(page, writable))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Buffers;

    const BAR: Target = Target::Bar(0);
    const VRAM: u64 = 14 << 20;
    const TABLES: u64 = 0x10_0000;

    fn setup() -> (Buffers, Mapper, Mmu) {
        let mut mem = Buffers::new(&[16 << 20], 0);
        let mapper = Mapper::new(&mut mem, BAR, TABLES, TABLES + 0x4_0000).unwrap();
        let mmu = Mmu {
            bar: BAR,
            vram_size: VRAM,
            root: mapper.root(),
            huge_pages: true,
            null_pages: true,
        };
        (mem, mapper, mmu)
    }

    fn fault(mmu: &Mmu, mem: &Buffers, va: u64, needle: &str) {
        let f = mmu.translate(mem, va).unwrap_err();
        assert_eq!((f.cause, f.va), (Cause::Translation, va), "{f}");
        assert!(f.detail.contains(needle), "{needle:?} not in {f}");
    }

    /// VRAM offset of the entry for `va` at `level` (directories must exist).
    fn entry_at(mem: &Buffers, mmu: &Mmu, va: u64, level: u32) -> u64 {
        let mut table = mmu.root;
        for l in (0..4).rev() {
            let at = entry_offset(table, va, l);
            if l == level {
                return at;
            }
            table = mem.read_u64(BAR, VRAM_OFFSET + at).unwrap() & pte::ADDR_MASK;
        }
        unreachable!()
    }

    fn poke(mem: &mut Buffers, at: u64, v: u64) {
        mem.write_u64(BAR, VRAM_OFFSET + at, v).unwrap();
    }

    #[test]
    fn walks_4k_and_2m_pages() {
        let (mut mem, mut mapper, mmu) = setup();
        let va4 = 0x7f12_3456_7000;
        mapper
            .map(
                &mut mem,
                va4,
                Aperture::Vram(0x20_3000),
                0x2000,
                pte::PAGE_4K,
                true,
            )
            .unwrap();
        mapper
            .map(
                &mut mem,
                0x4000_0000,
                Aperture::Bus(0xf000_0000),
                0x40_0000,
                pte::PAGE_2M,
                false,
            )
            .unwrap();
        let p = mmu.translate(&mem, va4 + 0x1abc).unwrap();
        let want = Page {
            va: va4 + 0x1000,
            size: 0x1000,
            addr: Aperture::Vram(0x20_4000),
            writable: true,
        };
        assert_eq!(p, want);
        let p = mmu.translate(&mem, 0x4020_0000 + 0x1f_fff8).unwrap();
        let want = Page {
            va: 0x4020_0000,
            size: 0x20_0000,
            addr: Aperture::Bus(0xf020_0000),
            writable: false,
        };
        assert_eq!(p, want);
        fault(&mmu, &mem, va4 + 0x2000, "L0 entry");
        fault(&mmu, &mem, 0x4040_0000, "L1 entry");
    }

    #[test]
    fn leaf_bit_is_optional_at_level0() {
        let (mut mem, mut mapper, mmu) = setup();
        mapper
            .set(&mut mem, 0x5000, pte::PAGE_4K, 0x7000 | pte::VALID)
            .unwrap();
        let p = mmu.translate(&mem, 0x5123).unwrap();
        assert_eq!((p.addr, p.writable), (Aperture::Vram(0x7000), false));
    }

    #[test]
    fn not_valid_at_each_level() {
        let (mut mem, mut mapper, mmu) = setup();
        let va = 0x1234_5678_9000;
        mapper
            .map(
                &mut mem,
                va,
                Aperture::Vram(0x8000),
                0x1000,
                pte::PAGE_4K,
                true,
            )
            .unwrap();
        assert!(mmu.translate(&mem, va).is_ok());
        for level in 0..4 {
            let at = entry_at(&mem, &mmu, va, level);
            let saved = mem.read_u64(BAR, VRAM_OFFSET + at).unwrap();
            poke(&mut mem, at, saved & !pte::VALID);
            fault(
                &mmu,
                &mem,
                va,
                &format!(
                    "L{level} entry {:#x} at VRAM offset {at:#x} is not valid",
                    saved & !1
                ),
            );
            poke(&mut mem, at, saved);
        }
    }

    #[test]
    fn reserved_bits_and_aperture_at_each_level() {
        let (mut mem, mut mapper, mmu) = setup();
        let va = 0x0000_8040_2010_0000;
        mapper
            .map(
                &mut mem,
                va & 0xffff_ffff_ffff,
                Aperture::Vram(0x8000),
                0x1000,
                pte::PAGE_4K,
                true,
            )
            .unwrap();
        let va = va & 0xffff_ffff_ffff;
        for level in 0..4 {
            let at = entry_at(&mem, &mmu, va, level);
            let saved = mem.read_u64(BAR, VRAM_OFFSET + at).unwrap();
            for bit in (5..12).chain(52..64) {
                poke(&mut mem, at, saved | 1 << bit);
                fault(&mmu, &mem, va, "reserved bits");
            }
            poke(&mut mem, at, saved | 3 << pte::APERTURE_SHIFT);
            fault(&mmu, &mem, va, "reserved aperture");
            let without_null = Mmu {
                null_pages: false,
                ..mmu
            };
            poke(&mut mem, at, saved | 2 << pte::APERTURE_SHIFT);
            fault(&without_null, &mem, va, "reserved aperture");
            poke(&mut mem, at, saved);
        }
        assert!(mmu.translate(&mem, va).is_ok());
    }

    #[test]
    fn null_leaves_map_no_memory() {
        let (mut mem, mut mapper, mut mmu) = setup();
        mapper
            .map(
                &mut mem,
                0x20_0000,
                Aperture::Null,
                0x40_0000,
                pte::PAGE_2M,
                false,
            )
            .unwrap();
        mapper
            .map(&mut mem, 0x1000, Aperture::Null, 0x2000, pte::PAGE_4K, true)
            .unwrap();
        let p = mmu.translate(&mem, 0x3f_fff8).unwrap();
        let want = Page {
            va: 0x20_0000,
            size: pte::PAGE_2M,
            addr: Aperture::Null,
            writable: false,
        };
        assert_eq!(p, want);
        let p = mmu.translate(&mem, 0x2008).unwrap();
        assert_eq!(
            (p.va, p.size, p.addr),
            (0x2000, pte::PAGE_4K, Aperture::Null)
        );
        // A NULL leaf has no address; a NULL directory points at nothing.
        let at = entry_at(&mem, &mmu, 0x1000, 0);
        poke(&mut mem, at, leaf_entry(Aperture::Null, true) | 0x5000);
        fault(&mmu, &mem, 0x1000, "NULL leaf with an address");
        let at = entry_at(&mem, &mmu, 0x1000, 1);
        let saved = mem.read_u64(BAR, VRAM_OFFSET + at).unwrap();
        poke(
            &mut mem,
            at,
            saved | pte::APERTURE_NULL << pte::APERTURE_SHIFT,
        );
        fault(&mmu, &mem, 0x2000, "points at no table inside VRAM");
        poke(&mut mem, at, saved);
        assert!(mmu.translate(&mem, 0x2000).is_ok());
        mmu.null_pages = false;
        fault(&mmu, &mem, 0x2000, "reserved aperture");
    }

    #[test]
    fn misaligned_2m_leaf_and_leaves_at_high_levels() {
        let (mut mem, mut mapper, mut mmu) = setup();
        mapper
            .set(
                &mut mem,
                0x20_0000,
                pte::PAGE_2M,
                leaf_entry(Aperture::Vram(0x21_0000), true),
            )
            .unwrap();
        fault(&mmu, &mem, 0x20_0000, "not 0x200000-aligned");
        mapper
            .set(
                &mut mem,
                0x40_0000,
                pte::PAGE_2M,
                leaf_entry(Aperture::Bus(0xf000_1000), true),
            )
            .unwrap();
        fault(&mmu, &mem, 0x40_0000, "not 0x200000-aligned");
        mapper
            .set(
                &mut mem,
                0x60_0000,
                pte::PAGE_2M,
                leaf_entry(Aperture::Vram(0x40_0000), true),
            )
            .unwrap();
        assert!(mmu.translate(&mem, 0x60_0000).is_ok());
        mmu.huge_pages = false;
        fault(&mmu, &mem, 0x60_0000, "not allowed at level 1");
        // A leaf in the L3 and L2 tables (1 GiB and 512 GiB pages do not exist).
        let va = 0x80_0000_0000;
        poke(&mut mem, mmu.root + 8, leaf_entry(Aperture::Vram(0), true));
        fault(&mmu, &mem, va, "not allowed at level 3");
        poke(&mut mem, mmu.root + 8, table_entry(TABLES + 0x3_0000));
        poke(
            &mut mem,
            TABLES + 0x3_0000,
            leaf_entry(Aperture::Vram(0), true),
        );
        fault(&mmu, &mem, va, "not allowed at level 2");
    }

    #[test]
    fn non_canonical_addresses() {
        let (mut mem, mut mapper, mmu) = setup();
        mapper
            .map(&mut mem, 0, Aperture::Vram(0), 0x1000, pte::PAGE_4K, true)
            .unwrap();
        assert!(mmu.translate(&mem, 0x123).is_ok());
        for va in [1 << 48, 0xffff_8000_0000_0000, u64::MAX, (1 << 63) | 0x123] {
            fault(&mmu, &mem, va, "bits 63..48");
        }
        assert!(mmu
            .translate(&mem, (1 << 48) - 1)
            .is_err_and(|f| f.detail.contains("not valid")));
    }

    #[test]
    fn root_and_directories_outside_vram() {
        let (mut mem, mut mapper, mut mmu) = setup();
        mapper
            .map(
                &mut mem,
                0x1000,
                Aperture::Vram(0),
                0x1000,
                pte::PAGE_4K,
                true,
            )
            .unwrap();
        for root in [0, VRAM, VRAM - 0x800, 0x800, pte::ADDR_MASK] {
            let m = Mmu { root, ..mmu };
            fault(
                &m,
                &mem,
                0x1000,
                if root == 0 { "disabled" } else { "MMU_ROOT" },
            );
        }
        let at = entry_at(&mem, &mmu, 0x1000, 2);
        for bad in [
            table_entry(VRAM),
            table_entry(1 << 51),
            table_entry(0) | 1 << pte::APERTURE_SHIFT,
        ] {
            poke(&mut mem, at, bad);
            fault(&mmu, &mem, 0x1000, "points at no table inside VRAM");
        }
        // A table in the last 4 KiB of VRAM is fine.
        mmu.vram_size = TABLES + 0x4_0000;
        poke(&mut mem, at, table_entry(TABLES + 0x3_f000));
        poke(&mut mem, TABLES + 0x3_f000, table_entry(TABLES + 0x3_f000));
        assert!(mmu
            .translate(&mem, 0x1000)
            .is_err_and(|f| f.detail.contains("L0 entry")));
    }

    #[test]
    fn short_memory_is_a_bus_error() {
        let mut mem = Buffers::new(&[(2 << 20) + 0x2000], 0);
        let mmu = Mmu {
            bar: BAR,
            vram_size: 0x4000,
            root: 0x2000,
            huge_pages: true,
            null_pages: true,
        };
        let f = mmu.translate(&mem, 0).unwrap_err();
        assert_eq!(f.cause, Cause::Bus, "{f}");
        mem.bars[0].resize((2 << 20) + 0x3000, 0);
        assert_eq!(
            mmu.translate(&mem, 0).unwrap_err().cause,
            Cause::Translation
        );
    }

    #[test]
    fn mapper_rejects_bad_requests() {
        let (mut mem, mut mapper, _) = setup();
        assert!(mapper
            .map(&mut mem, 0x1000, Aperture::Vram(0), 0x1000, 0x3000, true)
            .is_err());
        assert!(mapper
            .map(
                &mut mem,
                0x1800,
                Aperture::Vram(0),
                0x1000,
                pte::PAGE_4K,
                true
            )
            .is_err());
        mapper
            .map(
                &mut mem,
                0,
                Aperture::Vram(0),
                pte::PAGE_2M,
                pte::PAGE_2M,
                true,
            )
            .unwrap();
        let e = mapper
            .map(
                &mut mem,
                0x1000,
                Aperture::Vram(0),
                0x1000,
                pte::PAGE_4K,
                true,
            )
            .unwrap_err();
        assert!(e.0.contains("already inside a leaf"), "{e}");
        assert!(Mapper::new(&mut mem, BAR, 0, 0x1_0000).is_err());
        let mut small = Mapper::new(&mut mem, BAR, 0x1000, 0x3000).unwrap();
        let e = small
            .map(&mut mem, 0, Aperture::Vram(0), 0x1000, pte::PAGE_4K, true)
            .unwrap_err();
        assert!(e.0.contains("no room"), "{e}");
    }
}
