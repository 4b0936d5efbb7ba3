//! What the benchmarks share: their command line and the machine they run on.

/// A benchmark's arguments: `--name value` flags, or `--child ...` when the
/// benchmark runs one engine in a child process of its own.
pub(crate) struct BenchArgs(Vec<String>);

impl BenchArgs {
    /// The arguments after the program name.
    pub(crate) fn from_env() -> Self {
        BenchArgs(std::env::args().skip(1).collect())
    }

    /// The arguments after `--child`, when this is a child process.
    #[allow(dead_code)] // the history benchmark runs in one process
    pub(crate) fn child(&self) -> Option<&[String]> {
        match self.0.first().map(String::as_str) {
            Some("--child") => Some(&self.0[1..]),
            _ => None,
        }
    }

    /// The value after `name`, or `default`.
    pub(crate) fn flag(&self, name: &str, default: &str) -> String {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    }
}

/// The cores this process may use.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
