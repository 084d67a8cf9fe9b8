//! What the system holds, for people (tables) and programs (JSON), and a picture of the SHM
//! window (SVG).

use crate::system::System;
use serde::Serialize;
use std::fmt::Write as _;
use teeshm_core::GuestQuotas;

/// One guest, as the core and the hypervisor see it.
#[derive(Debug, Clone, Serialize)]
pub struct GuestReport {
    /// Guest id.
    pub guest: u16,
    /// Buffers in its cookie table.
    pub registered_buffers: u64,
    /// Pages of its registered buffers.
    pub registered_pages: u64,
    /// Its live memory objects.
    pub objects: u64,
    /// Its pages mapped in the window.
    pub mapped_pages: u64,
    /// Threads it holds.
    pub threads: u64,
    /// Open sessions.
    pub sessions: u64,
    /// Live user-TA instances (its sessions' and those their TAs opened).
    pub ta_instances: u64,
    /// Secure heap bytes its objects and TA instances keep.
    pub secure_bytes: u64,
    /// Pages the hypervisor pins for it.
    pub pinned_pages: u64,
}

/// A TA the core knows.
#[derive(Debug, Clone, Serialize)]
pub struct TaReport {
    /// Its name.
    pub name: String,
    /// Its UUID (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
    pub uuid: String,
}

/// TA RAM: the secure RAM user TA instances take their pages from (each instance charged to
/// its guest's secure heap, in the guest's `secure_bytes`).
#[derive(Debug, Clone, Serialize)]
pub struct TaRamReport {
    /// Pages in all.
    pub total_pages: u64,
    /// Pages free now.
    pub free_pages: u64,
    /// TA instances alive, of every guest.
    pub instances: u64,
}

/// A device region the core mapped with `ioremap`.
#[derive(Debug, Clone, Serialize)]
pub struct IoReport {
    /// Physical address of its first byte.
    pub pa: u64,
    /// Where that byte is mapped.
    pub va: u64,
    /// Bytes mapped.
    pub size: u64,
}

/// One mapping of the window.
#[derive(Debug, Clone, Serialize)]
pub struct MappingReport {
    /// Owner guest.
    pub guest: u16,
    /// First virtual address.
    pub va: u64,
    /// Pages.
    pub pages: u64,
    /// What the mapped object is.
    pub kind: String,
    /// Its cookie, if any.
    pub cookie: Option<u64>,
    /// Whether it is idle (cached, no guard).
    pub idle: bool,
}

/// Everything `teeshm inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct SystemReport {
    /// Per guest.
    pub guests: Vec<GuestReport>,
    /// Every mapping of the window.
    pub mappings: Vec<MappingReport>,
    /// The TAs the core knows (the pseudo-TA is not listed).
    pub tas: Vec<TaReport>,
    /// TA RAM.
    pub ta_ram: TaRamReport,
    /// The device regions mapped with `ioremap`.
    pub io: Vec<IoReport>,
    /// The quotas every guest has.
    pub quotas: QuotaReport,
    /// Window counters.
    pub window: WindowReport,
    /// Disagreements found by the checker (empty when all agree).
    pub violations: Vec<String>,
}

/// The per-guest quotas.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaReport {
    /// Objects.
    pub max_objects: u64,
    /// Registered pages.
    pub max_registered_pages: u64,
    /// Mapped pages.
    pub max_mapped_pages: u64,
    /// Sessions.
    pub max_sessions: u64,
    /// Threads.
    pub max_threads: u64,
}

impl From<GuestQuotas> for QuotaReport {
    fn from(q: GuestQuotas) -> Self {
        Self {
            max_objects: q.max_objects,
            max_registered_pages: q.max_registered_pages,
            max_mapped_pages: q.max_mapped_pages,
            max_sessions: q.max_sessions,
            max_threads: q.max_threads,
        }
    }
}

/// Window-wide counters.
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    /// First address of the window.
    pub base: u64,
    /// Pages of the window.
    pub pages: u64,
    /// Pages mapped.
    pub mapped_pages: u64,
    /// Translation-table pages in use.
    pub table_pages: u64,
    /// Guards that had to map (a guard on a mapping that exists takes no lock and is not
    /// counted).
    pub cache_misses: u64,
    /// Evictions.
    pub cache_evictions: u64,
}

impl SystemReport {
    /// Takes the picture (call it while no call runs).
    pub fn take(system: &System) -> Self {
        let mut guests = Vec::new();
        for g in system.tee.guests() {
            let s = g.snapshot();
            let pinned = system
                .guest(s.id.raw())
                .map_or(0, |guest| guest.mediator().pinned_pages(guest.id));
            guests.push(GuestReport {
                guest: s.id.raw(),
                registered_buffers: s.registered_buffers,
                registered_pages: s.registered_pages,
                objects: s.objects,
                mapped_pages: s.mapped_pages,
                threads: s.threads,
                sessions: s.sessions,
                ta_instances: s.ta_instances,
                secure_bytes: s.secure_bytes,
                pinned_pages: pinned,
            });
        }
        let tas = system
            .tee
            .tas()
            .list()
            .into_iter()
            .map(|(name, uuid)| TaReport {
                name: name.to_owned(),
                uuid: crate::scenario::uuid_text(&uuid),
            })
            .collect();
        let ram = system.ta_ram();
        let ta_ram = TaRamReport {
            total_pages: ram.total_pages,
            free_pages: ram.free_pages,
            instances: ram.instances,
        };
        let io = system
            .tee
            .io_mappings()
            .into_iter()
            .map(|m| IoReport {
                pa: m.pa.get(),
                va: m.va.get(),
                size: m.size,
            })
            .collect();
        let window = system.tee.window();
        let config = window.shm().va_window().config();
        let mappings = window
            .object_mappings()
            .map(|m| MappingReport {
                guest: m.owner.raw(),
                va: m.range.start().get(),
                pages: m.range.pages(),
                kind: format!("{:?}", m.kind),
                cookie: m.cookie,
                idle: m.idle,
            })
            .collect();
        let stats = window.stats();
        let window_report = WindowReport {
            base: config.base.get(),
            pages: config.size / 4096,
            mapped_pages: window.shm().mapped_pages(),
            table_pages: window.shm().table_stats().live as u64,
            cache_misses: stats.misses,
            cache_evictions: stats.evictions,
        };
        drop(window);
        Self {
            guests,
            mappings,
            tas,
            ta_ram,
            io,
            quotas: system.config.core.quotas.into(),
            window: window_report,
            violations: system.check(),
        }
    }

    /// The report as aligned text tables.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>5} {:>8} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>11} {:>7}",
            "guest",
            "buffers",
            "reg.pages",
            "objects",
            "mapped",
            "threads",
            "sessions",
            "TA inst.",
            "secure B",
            "pinned"
        );
        for g in &self.guests {
            let _ = writeln!(
                out,
                "{:>5} {:>8} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>11} {:>7}",
                g.guest,
                g.registered_buffers,
                g.registered_pages,
                g.objects,
                g.mapped_pages,
                g.threads,
                g.sessions,
                g.ta_instances,
                g.secure_bytes,
                g.pinned_pages
            );
        }
        let q = &self.quotas;
        let _ = writeln!(
            out,
            "\nquotas per guest: {} objects, {} registered pages, {} mapped pages, {} sessions, {} threads",
            q.max_objects,
            q.max_registered_pages,
            q.max_mapped_pages,
            q.max_sessions,
            q.max_threads
        );
        let t = &self.ta_ram;
        let _ = writeln!(
            out,
            "TA RAM: {} of {} pages free, {} TA instances (each charged to its guest's secure B)",
            t.free_pages, t.total_pages, t.instances
        );
        let w = &self.window;
        let _ = writeln!(
            out,
            "window: {} of {} pages mapped at {:#x}, {} table pages; cache {} misses, {} evictions",
            w.mapped_pages, w.pages, w.base, w.table_pages, w.cache_misses, w.cache_evictions
        );
        if !self.tas.is_empty() {
            let _ = writeln!(out, "\n{:<20} uuid", "TA");
            for ta in &self.tas {
                let _ = writeln!(out, "{:<20} {}", ta.name, ta.uuid);
            }
        }
        if !self.io.is_empty() {
            let _ = writeln!(out, "\n{:>14} {:>14} {:>8}  ioremap", "pa", "va", "bytes");
            for m in &self.io {
                let _ = writeln!(out, "{:>#14x} {:>#14x} {:>8}", m.pa, m.va, m.size);
            }
        }
        if !self.mappings.is_empty() {
            let _ = writeln!(
                out,
                "\n{:>5} {:>14} {:>7} {:>11} {:>18} {:>5}",
                "guest", "va", "pages", "kind", "cookie", "idle"
            );
            for m in &self.mappings {
                let _ = writeln!(
                    out,
                    "{:>5} {:>#14x} {:>7} {:>11} {:>18} {:>5}",
                    m.guest,
                    m.va,
                    m.pages,
                    m.kind,
                    m.cookie.map_or("-".to_owned(), |c| format!("{c:#x}")),
                    m.idle
                );
            }
        }
        let _ = writeln!(out, "\nviolations: {}", self.violations.len());
        for v in &self.violations {
            let _ = writeln!(out, "  {v}");
        }
        out
    }

    /// An SVG picture of the window: one bar, each mapping drawn where it lies in the used part
    /// of the window and coloured by its guest, and each guest's share of mapped pages.
    pub fn to_svg(&self, title: &str) -> String {
        const COLOURS: [&str; 8] = [
            "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
        ];
        let colour = |g: u16| COLOURS[usize::from(g) % COLOURS.len()];
        let (width, bar_y, bar_h) = (960.0_f64, 60.0, 60.0);
        let end = self
            .mappings
            .iter()
            .map(|m| m.va - self.window.base + m.pages * 4096)
            .max()
            .unwrap_or(4096)
            .max(4096) as f64;
        let mut svg = String::new();
        let height = 200.0 + 24.0 * self.guests.len() as f64;
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="10" y="24" font-size="16">{}</text>"#,
            escape(title)
        );
        let _ = writeln!(
            svg,
            r#"<text x="10" y="46">SHM window at {:#x}: used part, {:.1} MiB shown of {} MiB</text>"#,
            self.window.base,
            end / 1048576.0,
            self.window.pages * 4096 / 1048576
        );
        let _ = writeln!(
            svg,
            r##"<rect x="10" y="{bar_y}" width="{}" height="{bar_h}" fill="#eeeeee" stroke="#999"/>"##,
            width - 20.0
        );
        for m in &self.mappings {
            let x = 10.0 + (m.va - self.window.base) as f64 / end * (width - 20.0);
            let w = ((m.pages * 4096) as f64 / end * (width - 20.0)).max(1.0);
            let opacity = if m.idle { 0.55 } else { 1.0 };
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.2}" y="{bar_y}" width="{w:.2}" height="{bar_h}" fill="{}" fill-opacity="{opacity}"><title>guest {} {} {} pages at {:#x}</title></rect>"#,
                colour(m.guest),
                m.guest,
                m.kind,
                m.pages,
                m.va
            );
        }
        let total: u64 = self
            .guests
            .iter()
            .map(|g| g.mapped_pages)
            .sum::<u64>()
            .max(1);
        let mut y = bar_y + bar_h + 40.0;
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{}">share of mapped pages (faded: idle, cached for the next call)</text>"#,
            y - 14.0
        );
        for g in &self.guests {
            let w = g.mapped_pages as f64 / total as f64 * 600.0;
            let _ = writeln!(
                svg,
                r#"<rect x="120" y="{}" width="{w:.2}" height="16" fill="{}"/>"#,
                y - 12.0,
                colour(g.guest)
            );
            let _ = writeln!(
                svg,
                r#"<text x="10" y="{y}">guest {}</text><text x="{:.2}" y="{y}">{} pages, {} buffers</text>"#,
                g.guest,
                130.0 + w,
                g.mapped_pages,
                g.registered_buffers
            );
            y += 24.0;
        }
        let _ = writeln!(svg, "</svg>");
        svg
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
