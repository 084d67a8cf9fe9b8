//! `teeshm bench`: runs the performance suite of `teeshm_bench` and reports it.

use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::process::ExitCode;
use teeshm_bench::plot::{Line, svg};
use teeshm_bench::{Figure, Series};

/// How the figures are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// An aligned table for a terminal.
    Table,
    /// One JSON object keyed by figure id.
    Json,
    /// A Markdown table and the notes under it, as docs/performance.md holds them.
    Markdown,
}

/// Runs the suite; exit 0 whatever the goals say (a missed goal is a finding, not a failure).
pub fn run(quick: bool, only: &[String], output: Output, plots: Option<&Path>) -> ExitCode {
    let json = output != Output::Table;
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    if json {
        spinner.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let (figures, series) =
        teeshm_bench::run(quick, only, &|what| spinner.set_message(what.to_owned()));
    spinner.finish_and_clear();
    if output == Output::Json {
        let map: serde_json::Map<String, serde_json::Value> = figures
            .iter()
            .map(|f| {
                (
                    f.id.clone(),
                    serde_json::json!({
                        "title": f.title, "value": f.value, "unit": f.unit, "peer": f.peer,
                        "peer_name": f.peer_name, "ratio": f.ratio, "ratio_meaning": f.ratio_meaning,
                        "goal": f.goal, "met": f.met, "note": f.note,
                        "kind": f.kind, "spread": f.spread,
                        "peers": (!f.peers.is_empty()).then(|| f.peers.iter()
                            .map(|(name, v)| (name.clone(), serde_json::json!(v)))
                            .collect::<serde_json::Map<_, _>>()),
                        "peers_spread": (!f.peers_spread.is_empty()).then(|| f.peers_spread.iter()
                            .map(|(name, v)| (name.clone(), serde_json::json!(v)))
                            .collect::<serde_json::Map<_, _>>()),
                    }),
                )
            })
            .collect();
        println!("{}", serde_json::Value::Object(map));
    } else if output == Output::Markdown {
        print_markdown(&figures);
    } else {
        print_table(&figures);
    }
    if let Some(dir) = plots {
        if let Err(e) = write_plots(dir, &series) {
            eprintln!("teeshm bench: plots: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn number(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn print_table(figures: &[Figure]) {
    println!(
        "{:<18} {:>12} {:<10} {:>12} {:>9}  {:<22} {:<5} {:<8}",
        "figure", "teeshm", "unit", "peer", "ratio", "goal", "met", "kind"
    );
    for f in figures {
        println!(
            "{:<18} {:>12} {:<10} {:>12} {:>9}  {:<22} {:<5} {:<8}",
            f.id,
            number(f.value),
            f.unit,
            f.peer.map_or("-".into(), number),
            f.ratio.map_or("-".into(), number),
            f.goal,
            match f.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            },
            f.kind
        );
    }
    println!();
    for f in figures {
        println!("{}: {}", f.id, f.title);
        if !f.peer_name.is_empty() {
            println!("    peer: {}; ratio: {}", f.peer_name, f.ratio_meaning);
        }
        if !f.note.is_empty() {
            println!("    {}", f.note);
        }
        if let Some([min, median, max]) = f.spread {
            println!(
                "    spread of the batches (min, median, max): {}, {}, {} {}",
                number(min),
                number(median),
                number(max),
                f.unit
            );
        }
    }
}

/// `median [min–max]` of a measured figure, the value alone otherwise.
fn with_spread(f: &Figure) -> String {
    match f.spread {
        Some([min, median, max]) => {
            format!("{} [{}–{}]", number(median), number(min), number(max))
        }
        None => number(f.value),
    }
}

fn print_markdown(figures: &[Figure]) {
    println!("| figure | teeshm: median [min–max] | unit | peer | ratio | goal | met | kind |");
    println!("|---|---|---|---|---|---|---|---|");
    for f in figures {
        let peer = if f.peers.is_empty() {
            f.peer.map_or("–".into(), number)
        } else {
            f.peers
                .iter()
                .map(|(name, v)| format!("{name} {}", number(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            f.id,
            with_spread(f),
            f.unit,
            peer,
            f.ratio.map_or("–".into(), number),
            f.goal,
            match f.met {
                Some(true) => "**yes**",
                Some(false) => "**no**",
                None => "",
            },
            f.kind
        );
    }
    println!();
    for f in figures {
        let mut line = format!("- **{}**: {}", f.id, f.title);
        if !f.peer_name.is_empty() {
            line += &format!("; peer: {}; ratio: {}", f.peer_name, f.ratio_meaning);
        }
        if !f.note.is_empty() {
            line += &format!(". {}", f.note);
        }
        println!("{line}");
    }
}

fn write_plots(dir: &Path, series: &[Series]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for s in series {
        let ours: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.1)).collect();
        let peer: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.2)).collect();
        let (title, x, y, peer_name) = match s.id.as_str() {
            "P1" => (
                "P1: VA window alloc+free",
                "live ranges",
                "ns per alloc+free",
                "first-fit list (OP-TEE tee_mm)",
            ),
            "P5" => ("P5: phys_to_virt", "mapped pages", "ns per lookup", ""),
            _ => (
                "P6: VM_DESTROYED of a 64k-page guest",
                "guests in the system",
                "ns per destroy",
                "alone (1 guest)",
            ),
        };
        let mut lines = vec![Line {
            name: "teeshm",
            colour: "#4e79a7",
            points: &ours,
        }];
        // A figure without a peer (P5) has none to draw.
        if peer.iter().all(|p| p.1.is_finite()) {
            lines.push(Line {
                name: peer_name,
                colour: "#e15759",
                points: &peer,
            });
        }
        let name = format!("{}.svg", s.id.to_lowercase());
        std::fs::write(dir.join(name), svg(title, x, y, &lines))?;
    }
    Ok(())
}
