//! Glob patterns for file names: `*` matches any run of characters but `/`,
//! `?` one character but `/`.

/// Whether `pattern` has a glob character.
pub(crate) fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// Whether `name` matches `pattern`.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == n[ni] || (p[pi] == '?' && n[ni] != '/')) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            if n[sn] == '/' {
                return false;
            }
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_match_within_one_segment() {
        assert!(matches("*.parquet", "part-1.parquet"));
        assert!(matches("part-?.parquet", "part-1.parquet"));
        assert!(!matches("part-?.parquet", "part-10.parquet"));
        assert!(!matches("*.parquet", "dir/part-1.parquet"));
        assert!(matches("dir/*", "dir/a"));
        assert!(matches("*", ""));
        assert!(!matches("a*b", "acd"));
    }
}
