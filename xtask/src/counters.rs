//! The firmware's own counters of a run on several CPUs, as its console prints them at the
//! end (the monitor: `monitor: cpu N secure_entries X foreign_interrupts Y`; the core:
//! `tee: smp: cpus_on A max_concurrent_calls B resumed_on_other_cpu C`), turned into a report
//! and a verdict (issue 13: every CPU entered the secure world, interrupts of the normal world
//! were served during secure calls, calls ran in the core at once).

/// One CPU's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuCounters {
    pub cpu: u64,
    /// Calls the monitor forwarded to the core from this CPU.
    pub secure_entries: u64,
    /// Calls the core suspended with `RPC_FOREIGN_INTR` on this CPU.
    pub foreign_interrupts: u64,
}

/// What the firmware counted over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmpCounters {
    pub cpus: Vec<CpuCounters>,
    pub cpus_on: Option<u64>,
    pub max_concurrent_calls: Option<u64>,
    pub resumed_on_other_cpu: Option<u64>,
}

/// `--smp N`: the CPUs of a run, 1 to the firmware's 8.
pub fn parse_smp(value: Option<&String>) -> Result<usize, String> {
    value
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|n| (1..=8).contains(n))
        .ok_or_else(|| "--smp needs a number of CPUs from 1 to 8".to_string())
}

/// The numbers after the words `keys` in `words`, if every one is there.
pub fn fields<const N: usize>(words: &[&str], keys: [&str; N]) -> Option<[u64; N]> {
    let mut out = [0; N];
    for (value, key) in out.iter_mut().zip(keys) {
        let at = words.iter().position(|w| *w == key)?;
        *value = words.get(at + 1)?.parse().ok()?;
    }
    Some(out)
}

impl SmpCounters {
    /// Takes what `line` (a console line, found anywhere in it) reports.
    pub fn note(&mut self, line: &str) {
        if let Some(at) = line.find("monitor: cpu ") {
            let words: Vec<&str> = line[at + "monitor: ".len()..].split_whitespace().collect();
            let keys = ["cpu", "secure_entries", "foreign_interrupts"];
            if let Some([cpu, secure_entries, foreign_interrupts]) = fields(&words, keys) {
                self.cpus.retain(|c| c.cpu != cpu);
                self.cpus.push(CpuCounters {
                    cpu,
                    secure_entries,
                    foreign_interrupts,
                });
            }
        }
        if let Some(at) = line.find("tee: smp: ") {
            let words: Vec<&str> = line[at..].split_whitespace().collect();
            let one = |key| fields(&words, [key]).map(|[v]| v);
            self.cpus_on = one("cpus_on");
            self.max_concurrent_calls = one("max_concurrent_calls");
            self.resumed_on_other_cpu = one("resumed_on_other_cpu");
        }
    }

    /// The report's fields (no braces): `"cpus": [...], "max_concurrent_calls": n, ...`.
    pub fn json_fields(&self, disagreements: Option<u64>) -> String {
        let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        let cpus: Vec<String> = self
            .cpus
            .iter()
            .map(|c| {
                format!(
                    "{{\"cpu\": {}, \"secure_entries\": {}, \"foreign_interrupts\": {}}}",
                    c.cpu, c.secure_entries, c.foreign_interrupts
                )
            })
            .collect();
        format!(
            "\"cpus\": [{}], \"cpus_on\": {}, \"max_concurrent_calls\": {}, \"resumed_on_other_cpu\": {}, \"disagreements\": {}",
            cpus.join(", "),
            opt(self.cpus_on),
            opt(self.max_concurrent_calls),
            opt(self.resumed_on_other_cpu),
            opt(disagreements)
        )
    }

    /// A run's report (`target/linux/report.json`, `target/qemu-report.json`): its CPUs, the
    /// counters, the core's last agreement check and the test's summary line.
    pub fn report(&self, smp: usize, disagreements: Option<u64>, summary: Option<&str>) -> String {
        format!(
            "{{\"smp\": {smp}, {}, \"summary\": {}}}\n",
            self.json_fields(disagreements),
            summary.map_or("null".to_string(), |s| format!("\"{s}\""))
        )
    }

    /// Why a run on `smp` CPUs fails the counters' goals, if it does: every CPU entered the
    /// secure world (or, with `entering` = `Some(n)`, at least n of them: under a hypervisor,
    /// which CPUs call is its scheduler's choice), some call was interrupted by the normal
    /// world (`foreign` wanted), and with several CPUs, two calls at least were in the core at
    /// once.
    pub fn verdict(
        &self,
        smp: usize,
        entering: Option<usize>,
        foreign: bool,
    ) -> Result<(), String> {
        let entered = self.cpus.iter().filter(|c| c.secure_entries > 0).count();
        if let Some(n) = entering {
            if entered < n.min(smp) {
                return Err(format!(
                    "{entered} CPUs entered the secure world, {} wanted: {:?}",
                    n.min(smp),
                    self.cpus
                ));
            }
        } else if let Some(cpu) = (0..smp as u64).find(|&cpu| {
            !self
                .cpus
                .iter()
                .any(|c| c.cpu == cpu && c.secure_entries > 0)
        }) {
            return Err(format!("CPU {cpu} never entered the secure world"));
        }
        let interrupts: u64 = self.cpus.iter().map(|c| c.foreign_interrupts).sum();
        if foreign && interrupts == 0 {
            return Err("no call let a normal-world interrupt through".into());
        }
        if smp > 1 && self.max_concurrent_calls.is_none_or(|n| n < 2) {
            return Err(format!(
                "at most {:?} calls in the core at once on {smp} CPUs",
                self.max_concurrent_calls
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_and_judged() {
        let mut c = SmpCounters::default();
        c.note("[ 1.0] monitor: cpu 0 secure_entries 448 foreign_interrupts 10");
        c.note("xx monitor: cpu 1 secure_entries 0 foreign_interrupts 0");
        c.note("tee: smp: cpus_on 2 max_concurrent_calls 3 resumed_on_other_cpu 1");
        assert_eq!(c.cpus.len(), 2);
        assert_eq!(c.max_concurrent_calls, Some(3));
        assert!(c.verdict(2, None, true).unwrap_err().contains("CPU 1"));
        assert!(c.verdict(2, Some(2), true).is_err());
        assert_eq!(c.verdict(2, Some(1), true), Ok(()));
        c.note("monitor: cpu 1 secure_entries 5 foreign_interrupts 0");
        assert_eq!(c.verdict(2, None, true), Ok(()));
        assert!(c.verdict(3, None, true).is_err());
        assert!(c.json_fields(Some(0)).contains("\"secure_entries\": 5"));
    }
}
