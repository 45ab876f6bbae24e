//! A line diff for `apply --dry-run` (longest common subsequence; resources are small,
//! and the table is bounded so a huge document cannot make it quadratic in memory).

/// Lines of `before` and `after` as `  same`, `- removed`, `+ added`.
pub fn lines(before: &str, after: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    const MAX_CELLS: usize = 4_000_000;
    if (a.len() + 1) * (b.len() + 1) > MAX_CELLS {
        let mut out: String = a.iter().map(|l| format!("- {l}\n")).collect();
        out.extend(b.iter().map(|l| format!("+ {l}\n")));
        return out;
    }
    // lcs[i][j]: length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn marks_changed_lines() {
        let d = super::lines("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(d, "  a\n+ B\n- b\n  c\n+ d\n");
        assert_eq!(super::lines("", "x"), "+ x\n");
    }
}
