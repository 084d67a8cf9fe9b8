//! The figures of `teeshm bench`, each measured beside its peer in the same run.
//!
//! This file holds the figure type, the timing loop and the run; the figures are grouped by
//! what they measure: `mm` the memory manager alone (P1 VA window, P3 map and unmap, P5
//! phys_to_virt), `calls` one guest's calls into the core (P2 registration, P4 cached invoke),
//! `system` many guests at once (P6 VM destroy, P7 the largest system, P8 throughput),
//! `user_ta` a user TA's calls (P9 invoke with a 1 MiB memref vs 4 KiB).

mod calls;
mod mm;
mod system;
mod user_ta;

use serde::Serialize;
use std::time::{Duration, Instant};

use calls::{p2, p4};
use mm::{p1, p3, p5};
use system::{p6, p7, p8};
use user_ta::p9;

/// One figure of the suite.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Id, e.g. `P1.10k`.
    pub id: String,
    /// What is measured.
    pub title: String,
    /// teeshm's value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// The peer's value, measured in the same run.
    pub peer: Option<f64>,
    /// What the peer is.
    pub peer_name: String,
    /// The ratio the goal is stated in (see `ratio_meaning`).
    pub ratio: Option<f64>,
    /// How the ratio is formed.
    pub ratio_meaning: String,
    /// The goal.
    pub goal: String,
    /// Whether the goal is met (`None`: no goal for this line).
    pub met: Option<bool>,
    /// Why, when it is missed, or anything else worth knowing.
    pub note: String,
    /// `measured` (timed by running code) or `computed` (arithmetic).
    pub kind: String,
    /// `[min, median, max]` of the batches `value` is the median of, when measured so.
    pub spread: Option<[f64; 3]>,
    /// Every peer measured in the same run, by name (value in `unit`), for figures with
    /// several peers; `peer` is then the first of them.
    pub peers: Vec<(String, f64)>,
    /// `[min, median, max]` of each peer's batches, by name.
    pub peers_spread: Vec<(String, [f64; 3])>,
}

/// Points of a growth plot: (input size, teeshm, peer).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    /// Id of the plot (`P1`, `P5`, `P6`).
    pub id: String,
    /// (x, teeshm value, peer value).
    pub points: Vec<(f64, f64, f64)>,
}

#[allow(clippy::too_many_arguments)]
fn figure(
    id: &str,
    title: &str,
    value: f64,
    unit: &str,
    peer: Option<(f64, &str)>,
    ratio: Option<(f64, &str)>,
    goal: &str,
    met: Option<bool>,
    note: &str,
) -> Figure {
    Figure {
        id: id.into(),
        title: title.into(),
        value,
        unit: unit.into(),
        peer: peer.map(|p| p.0),
        peer_name: peer.map_or(String::new(), |p| p.1.into()),
        ratio: ratio.map(|r| r.0),
        ratio_meaning: ratio.map_or(String::new(), |r| r.1.into()),
        goal: goal.into(),
        met,
        note: note.into(),
        kind: "measured".into(),
        spread: None,
        peers: Vec::new(),
        peers_spread: Vec::new(),
    }
}

/// How long each measurement runs.
#[derive(Debug, Clone, Copy)]
struct Budget {
    per_figure: Duration,
}

/// Minimum, median and maximum of a measurement's batches (ns per call).
#[derive(Debug, Clone, Copy)]
struct Stats {
    min: f64,
    median: f64,
    max: f64,
}

impl Stats {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self {
            min: v.first().copied().unwrap_or(f64::NAN),
            median: v.get(v.len() / 2).copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn spread(self) -> [f64; 3] {
        [self.min, self.median, self.max]
    }
}

/// Nanoseconds per operation of each of `fs`, measured side by side; `f(n)` performs `n`
/// operations (the loop inside it, so that no indirect call per operation weighs on a fast
/// one). Each gets its own batch size (~1/1000 of the budget: 0.3 ms with `--quick`), then the
/// batches run in turns — one of each, then the next round — so that a change in the
/// machine's load falls on all of them alike: a round is shorter than a scheduler's time slice,
/// so when another process shares the CPU for a while, it slows whole rounds, every allocator
/// of them. At least 5 and at most 1001 rounds, within about `fs.len()` budgets.
fn ns_per_op_side_by_side(budget: Budget, fs: &mut [&mut dyn FnMut(u64)]) -> Vec<Stats> {
    rounds_side_by_side(budget, fs)
        .into_iter()
        .map(Stats::of)
        .collect()
}

/// The per-round samples (ns per operation) of [`ns_per_op_side_by_side`], one vector per
/// function, round `i` of each taken back to back: for a figure that is a ratio of two of them,
/// the ratio of each round is a sample of the ratio.
fn rounds_side_by_side(budget: Budget, fs: &mut [&mut dyn FnMut(u64)]) -> Vec<Vec<f64>> {
    let batches: Vec<u64> = fs
        .iter_mut()
        .map(|f| {
            let mut batch = 1u64;
            loop {
                let t = Instant::now();
                f(batch);
                if t.elapsed() > budget.per_figure / 1000 || batch > 1 << 30 {
                    break batch;
                }
                batch *= 2;
            }
        })
        .collect();
    let mut samples = vec![Vec::new(); fs.len()];
    let end = Instant::now() + budget.per_figure * fs.len() as u32;
    let mut rounds = 0;
    while rounds < 5 || (Instant::now() < end && rounds < 1001) {
        for ((f, &batch), out) in fs.iter_mut().zip(&batches).zip(&mut samples) {
            let t = Instant::now();
            f(batch);
            out.push(t.elapsed().as_nanos() as f64 / batch as f64);
        }
        rounds += 1;
    }
    samples
}

/// `[min, median, max]` of `a[i] / b[i]` over the rounds of two sample vectors.
fn ratio_stats(a: &[f64], b: &[f64]) -> Stats {
    Stats::of(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

/// Runs the suite, or only the groups whose id (`P1`..`P9`) is in `only` when it is not empty.
/// `quick` finishes in under two minutes on a 2-core machine; `progress` is told each group as
/// it starts.
pub fn run(quick: bool, only: &[String], progress: &dyn Fn(&str)) -> (Vec<Figure>, Vec<Series>) {
    let budget = Budget {
        per_figure: if quick {
            Duration::from_millis(300)
        } else {
            Duration::from_millis(1500)
        },
    };
    let mut out = Vec::new();
    let mut series = Vec::new();
    let wanted = |id: &str, what: &str| {
        let yes = only.is_empty() || only.iter().any(|o| o.eq_ignore_ascii_case(id));
        if yes {
            progress(&format!("{id} {what}"));
        }
        yes
    };
    if wanted("P1", "VA window") {
        p1(budget, &mut out, &mut series);
    }
    if wanted("P2", "registration") {
        p2(budget, &mut out);
    }
    if wanted("P3", "map and unmap") {
        p3(budget, &mut out);
    }
    if wanted("P4", "cached invoke") {
        p4(budget, &mut out);
    }
    if wanted("P5", "phys_to_virt") {
        p5(budget, quick, &mut out, &mut series);
    }
    if wanted("P6", "VM destroy") {
        p6(quick, &mut out, &mut series);
    }
    if wanted("P7", "largest system") {
        p7(&mut out);
    }
    if wanted("P8", "throughput") {
        p8(budget, &mut out);
    }
    if wanted("P9", "user-TA invoke") {
        p9(budget, &mut out);
    }
    // A count or an arithmetic figure has one value however often it is run: its spread is
    // that value three times (a timed figure without batches would stay without one and show).
    for f in &mut out {
        if f.spread.is_none() && (f.kind == "computed" || f.unit == "pages") {
            f.spread = Some([f.value; 3]);
        }
    }
    (out, series)
}
