//! An SVG map of physical memory, one cell per pageblock, so a person can see
//! fragmentation.
//!
//! Cells run left to right, [`COLUMNS`] pageblocks per row, from the lowest frame of memory.
//! A cell's colour is the mobility holding most of its allocated frames ([`PALETTE`]); its
//! opacity is the fraction of the pageblock in use; a black outline marks a **mixed**
//! pageblock (frames of two or three mobilities — the blocks that keep large allocations
//! from forming). Free pageblocks are pale grey, reserved ones dark grey, holes blank. Zone
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
/// Top margin for the title and legend.
const TOP: u64 = 74;

/// Fill colours for unmovable, movable, reclaimable (the matplotlib "tab10" red, green,
/// orange, chosen to stay distinguishable for most colour-blind readers with the outline).
pub const PALETTE: [&str; 3] = ["#d62728", "#2ca02c", "#ff7f0e"];
const FREE: &str = "#e6e6e6";
const RESERVED: &str = "#4d4d4d";

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
    if used == 0 {
        if c.reserved > 0 && c.reserved + c.hole >= pb_frames / 2 {
            return (RESERVED, 1.0, false);
        }
        if c.hole == pb_frames {
            return ("none", 0.0, false);
        }
        return (FREE, 1.0, false);
    }
    let (dominant, _) = c
        .by_mobility
        .iter()
        .enumerate()
        .max_by_key(|(_, n)| **n)
        .unwrap_or((0, &0));
    let managed = (pb_frames - c.hole - c.reserved).max(1);
    let fill = f64::from(used) / f64::from(managed);
    (
        PALETTE[dominant],
        0.3 + 0.7 * fill.min(1.0),
        c.mobilities() > 1,
    )
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
        let legend: [(&str, &str, bool); 6] = [
            (PALETTE[0], "unmovable", false),
            (PALETTE[1], "movable", false),
            (PALETTE[2], "reclaimable", false),
            (FREE, "free", false),
            (RESERVED, "reserved", false),
            ("white", "mixed (outline)", true),
        ];
        for (i, (colour, name, outline)) in legend.iter().enumerate() {
            let x = 8 + i as u64 * 130;
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
            r##"<text x="8" y="68">opacity = share of the pageblock in use</text>"##
        )?;
        for row in 0..rows {
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

    #[test]
    fn mixed_pageblock_is_outlined_in_its_dominant_colour() {
        let c = PageblockCensus {
            pfn: 0,
            free: 100,
            by_mobility: [10, 400, 2],
            ..Default::default()
        };
        let (fill, opacity, mixed) = cell_style(&c, 512);
        assert_eq!(fill, PALETTE[1]);
        assert!(mixed);
        assert!(opacity > 0.8 && opacity <= 1.0);
    }

    #[test]
    fn free_reserved_and_hole_blocks_get_their_own_styles() {
        let free = PageblockCensus {
            free: 512,
            ..Default::default()
        };
        assert_eq!(cell_style(&free, 512).0, FREE);
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
