//! An SVG map of physical memory, one cell per pageblock, so a person can see
//! fragmentation.
//!
//! Cells run left to right, [`COLUMNS`] pageblocks per row, from the lowest frame of memory.
//! A cell's colour is the pageblock's migrate type in the buddy allocator ([`PALETTE`]); a
//! free pageblock is a light tint of it, and a used one is solid in proportion to the share
//! of its frames in use; a black outline marks a **mixed** pageblock (allocations of two or
//! three mobilities, or of a mobility other than the block's type — the blocks that keep
//! large allocations from forming). Reserved pageblocks are dark grey, holes blank. Zone
//! starts are marked by a blue bar with the zone's name. The SVG is written through
//! `core::fmt`, so a kernel could emit it on a console too.

use core::fmt;

use mmkit_addr::{IrqControl, PAGE_SIZE};
use mmkit_buddy::{ZoneType, MAX_NUMNODES};
use mmkit_pgtable::PagingFormat;

use crate::mm::Mm;
use crate::owner::PageblockCensus;

/// Pageblocks per row.
pub const COLUMNS: u64 = 128;
/// Cell edge in pixels.
const CELL: u64 = 7;
/// Left margin for the address labels.
const MARGIN: u64 = 110;
/// Rows per address label.
const LABEL_EVERY: usize = 2;
/// Top margin for the title and legend.
const TOP: u64 = 74;

/// Fill colours by migrate type, in [`MigrateType::index`](mmkit_buddy::MigrateType::index) order: unmovable, movable,
/// reclaimable, high-atomic, CMA, isolate (the matplotlib "tab10" red, green, orange, purple,
/// cyan, brown, chosen to stay distinguishable for most colour-blind readers with the outline).
pub const PALETTE: [&str; mmkit_buddy::NR_MIGRATE_TYPES] = [
    "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b",
];
/// Colour of a pageblock outside every zone that holds allocations.
const UNZONED: &str = "#7f7f7f";
const RESERVED: &str = "#4d4d4d";
/// Opacity of a free pageblock's tint.
const FREE_TINT: f64 = 0.15;

/// `Display` adapter writing the SVG (see [`Mm::svg_map`]).
pub struct SvgMap<'a, 'm, P: IrqControl, F: PagingFormat> {
    mm: &'a Mm<'m, P, F>,
    title: &'a str,
}

impl<'m, P: IrqControl, F: PagingFormat> Mm<'m, P, F> {
    /// The SVG map of physical memory with a title line.
    pub fn svg_map<'a>(&'a self, title: &'a str) -> SvgMap<'a, 'm, P, F> {
        SvgMap { mm: self, title }
    }
}

fn cell_style(c: &PageblockCensus, pb_frames: u32) -> (&'static str, f64, bool) {
    let used = c.used();
    if used == 0 && c.hole == pb_frames {
        return ("none", 0.0, false);
    }
    if used == 0 && c.reserved > 0 && c.reserved + c.hole >= pb_frames / 2 {
        return (RESERVED, 1.0, false);
    }
    let colour = c
        .migratetype
        .and_then(|mt| PALETTE.get(mt.index()).copied())
        .unwrap_or(UNZONED);
    if used == 0 {
        return (colour, FREE_TINT, false);
    }
    let managed = (pb_frames - c.hole - c.reserved).max(1);
    let fill = f64::from(used) / f64::from(managed);
    (colour, 0.3 + 0.7 * fill.min(1.0), c.is_mixed())
}

impl<P: IrqControl, F: PagingFormat> fmt::Display for SvgMap<'_, '_, P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mm = self.mm;
        let pb_order = mm.buddy().config().pageblock_order;
        let pb = 1u64 << pb_order;
        let (lo, hi) = mm.boot_summary().span;
        let first = lo & !(pb - 1);
        let blocks = (hi - first).div_ceil(pb);
        let rows = blocks.div_ceil(COLUMNS);
        let width = MARGIN + COLUMNS * CELL + 20;
        let height = TOP + rows * CELL + 30;
        let pb_mib = (pb * PAGE_SIZE) >> 20;
        writeln!(
            f,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">"##
        )?;
        writeln!(f, r##"<rect width="100%" height="100%" fill="white"/>"##)?;
        writeln!(
            f,
            r##"<text x="8" y="16" font-size="13">{}</text>"##,
            Escaped(self.title)
        )?;
        let h = mm.high_order(mm.buddy().config().max_order);
        writeln!(
            f,
            r##"<text x="8" y="32">one cell = one {pb_mib} MiB pageblock, {COLUMNS} per row; free in max-order blocks: {:.1}%</text>"##,
            h.percent()
        )?;
        let legend: [(&str, &str, bool); 8] = [
            (PALETTE[0], "unmovable", false),
            (PALETTE[1], "movable", false),
            (PALETTE[2], "reclaimable", false),
            (PALETTE[3], "high-atomic", false),
            (PALETTE[4], "CMA", false),
            (PALETTE[5], "isolate", false),
            (RESERVED, "reserved", false),
            ("white", "mixed (outline)", true),
        ];
        for (i, (colour, name, outline)) in legend.iter().enumerate() {
            let x = 8 + i as u64 * 112;
            let stroke = if *outline {
                r##" stroke="black" stroke-width="1.5""##
            } else {
                ""
            };
            writeln!(
                f,
                r##"<rect x="{x}" y="42" width="12" height="12" fill="{colour}"{stroke}/><text x="{}" y="52">{name}</text>"##,
                x + 16
            )?;
        }
        writeln!(
            f,
            r##"<text x="8" y="68">colour = the pageblock's migrate type; light tint = free, solid = share in use</text>"##
        )?;
        // An address label on every LABEL_EVERY-th row: the font is taller than a cell.
        for row in (0..rows).step_by(LABEL_EVERY) {
            let pa = (first + row * COLUMNS * pb) * PAGE_SIZE;
            writeln!(
                f,
                r##"<text x="4" y="{}">{:#011x}</text>"##,
                TOP + row * CELL + CELL - 1,
                pa
            )?;
        }
        let mut result = Ok(());
        mm.pageblock_census(|c| {
            if result.is_err() {
                return;
            }
            let i = (c.pfn - first) / pb;
            let (x, y) = (MARGIN + (i % COLUMNS) * CELL, TOP + (i / COLUMNS) * CELL);
            let (fill, opacity, mixed) = cell_style(c, pb as u32);
            if fill == "none" {
                return;
            }
            let stroke = if mixed {
                r##" stroke="black" stroke-width="0.8""##
            } else {
                ""
            };
            result = writeln!(
                f,
                r##"<rect x="{x}" y="{y}" width="{}" height="{}" fill="{fill}" fill-opacity="{opacity:.2}"{stroke}/>"##,
                CELL - 1,
                CELL - 1
            );
        });
        result?;
        // Zone starts.
        for node in 0..MAX_NUMNODES {
            for zone in ZoneType::ALL {
                let Some(z) = mm.buddy().zone_stats(node, zone) else {
                    continue;
                };
                if z.present == 0 {
                    continue;
                }
                let i = z.start_pfn.as_u64().saturating_sub(first) / pb;
                let (x, y) = (MARGIN + (i % COLUMNS) * CELL, TOP + (i / COLUMNS) * CELL);
                writeln!(
                    f,
                    r##"<rect x="{}" y="{}" width="2" height="{}" fill="#1f3fbf"/><text x="{}" y="{}" fill="#1f3fbf" font-size="9">N{node} {}</text>"##,
                    x.saturating_sub(1),
                    y.saturating_sub(2),
                    CELL + 2,
                    x + 2,
                    y.saturating_sub(2),
                    zone.name()
                )?;
            }
        }
        writeln!(f, "</svg>")
    }
}

/// Text with XML's special characters escaped.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '&' => f.write_str("&amp;")?,
                '"' => f.write_str("&quot;")?,
                c => write!(f, "{c}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmkit_buddy::MigrateType;

    #[test]
    fn used_pageblock_takes_its_migratetype_colour_and_mixed_is_outlined() {
        let c = PageblockCensus {
            pfn: 0,
            free: 100,
            by_mobility: [10, 400, 2],
            migratetype: Some(MigrateType::Movable),
            ..Default::default()
        };
        let (fill, opacity, mixed) = cell_style(&c, 512);
        assert_eq!(fill, PALETTE[1]);
        assert!(mixed);
        assert!(opacity > 0.8 && opacity <= 1.0);
        // Only movable allocations in a movable block: not mixed.
        let pure = PageblockCensus {
            by_mobility: [0, 512, 0],
            ..c
        };
        assert!(!cell_style(&pure, 512).2);
        // Movable allocations that fell back into an unmovable block: mixed, unmovable colour.
        let stolen = PageblockCensus {
            migratetype: Some(MigrateType::Unmovable),
            ..pure
        };
        assert_eq!(cell_style(&stolen, 512), (PALETTE[0], 1.0, true));
    }

    #[test]
    fn cma_and_isolated_pageblocks_have_their_own_colours() {
        // A CMA pageblock lent to movable pages is not mixed.
        let lent = PageblockCensus {
            by_mobility: [0, 512, 0],
            migratetype: Some(MigrateType::Cma),
            ..Default::default()
        };
        assert_eq!(cell_style(&lent, 512), (PALETTE[4], 1.0, false));
        let isolated = PageblockCensus {
            free: 512,
            migratetype: Some(MigrateType::Isolate),
            ..Default::default()
        };
        assert_eq!(cell_style(&isolated, 512).0, PALETTE[5]);
    }

    #[test]
    fn free_reserved_and_hole_blocks_get_their_own_styles() {
        let free = PageblockCensus {
            free: 512,
            migratetype: Some(MigrateType::Reclaimable),
            ..Default::default()
        };
        assert_eq!(cell_style(&free, 512), (PALETTE[2], FREE_TINT, false));
        let reserved = PageblockCensus {
            reserved: 512,
            ..Default::default()
        };
        assert_eq!(cell_style(&reserved, 512).0, RESERVED);
        let hole = PageblockCensus {
            hole: 512,
            ..Default::default()
        };
        assert_eq!(cell_style(&hole, 512).0, "none");
    }

    #[test]
    fn titles_are_escaped() {
        assert_eq!(
            std::format!("{}", Escaped("a<b & \"c\"")),
            "a&lt;b &amp; &quot;c&quot;"
        );
    }
}
