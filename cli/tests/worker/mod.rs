//! For the tests and benchmarks of distributed runs: a `tidemark worker`
//! process, killed when dropped, and the totals of a run's report.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};

/// A `tidemark worker` on a free local port.
pub(crate) struct WorkerProcess {
    child: Child,
    /// The URL it printed, to pass to `run --workers`.
    pub(crate) url: String,
}

impl WorkerProcess {
    /// Starts a worker with `options` (its own object store settings and
    /// secrets, as `-o KEY=VALUE`) and waits for the URL it prints.
    pub(crate) fn start(options: &HashMap<String, String>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        command.args(["worker", "--listen", "127.0.0.1:0"]);
        for (key, value) in options {
            command.args(["-o", &format!("{key}={value}")]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the tidemark binary starts");
        let stdout = child.stdout.take().expect("a piped stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the worker prints its URL");
        let url = line
            .trim()
            .strip_prefix("tidemark worker listening on ")
            .unwrap_or_else(|| panic!("the worker printed `{line}`"))
            .to_string();
        WorkerProcess { child, url }
    }

    /// Kills the worker with SIGKILL and waits for it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The totals row of a distributed run's report (a table with one row).
pub(crate) fn run_totals(report: &str) -> HashMap<String, u64> {
    let rows: Vec<Vec<&str>> = report
        .lines()
        .filter(|line| line.starts_with('|'))
        .map(|line| {
            line.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 2, "one header and one row: {report}");
    rows[0]
        .iter()
        .zip(&rows[1])
        .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
        .collect()
}
